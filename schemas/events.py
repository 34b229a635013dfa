"""Event records: impressions, clicks, dwells, joined list outcomes, and the nested list state."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain, repeat
from math import isfinite
from typing import Any, ClassVar, Final, Literal

from schemas._model import SCHEMA_VERSION, Model, child_prefix
from schemas.errors import SchemaError
from schemas.validate import (
    MAX_ABS_NUMBER,
    MAX_ID_LEN,
    MISSING,
    type_error,
    v_bool,
    v_floats,
    v_id,
    v_ids,
    v_int,
    v_ints,
    v_number,
    v_simplex,
)

MAX_ITEMS: Final = 1000
MAX_ITEM_FEATURES: Final = 1024
MAX_USER_FEATURES: Final = 1024
MAX_HISTORY: Final = 512
MAX_CONTEXT: Final = 256
MAX_OBJECTIVES: Final = 64
MAX_DWELL_MS: Final = 86_400_000
"""One day: the largest dwell time a single event (or a per-position sum) may report."""

_new = object.__new__
_set = object.__setattr__


# ------------------------------------------------------------------------------------------ items
@dataclass(frozen=True, slots=True)
class Item(Model):
    """One recommended item of a list: its id, its position (0-based) and its feature vector."""

    item_id: str
    position: int
    features: tuple[float, ...]

    def _json(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "position": self.position, "features": self.features}

    @staticmethod
    def _check(src: Mapping[str, Any], path: str) -> dict[str, Any]:
        p = child_prefix(path)
        g = src.get
        return {
            "item_id": v_id(g("item_id", MISSING), p + "item_id"),
            "position": v_int(g("position", MISSING), p + "position", 0, MAX_ITEMS - 1),
            "features": v_floats(g("features", MISSING), p + "features", max_len=MAX_ITEM_FEATURES),
        }


def v_items(value: Any, path: str) -> tuple[Item, ...]:
    """The ``items`` of a list: 1..MAX_ITEMS items, positions exactly 0..L-1 in order, unique
    item ids, all feature vectors of the same length."""
    if (type(value) is list or type(value) is tuple) and 0 < len(value) <= MAX_ITEMS:
        fast = _items_fast(value)
        if fast is not None:
            return fast
    return _items_slow(value, path)


_STR: Final = frozenset({str})
_INT: Final = frozenset({int})
_LIST: Final = frozenset({list})
_FLOAT: Final = frozenset({float})
_FLOAT_INT: Final = frozenset({float, int})


def _items_fast(seq: list[Any] | tuple[Any, ...]) -> tuple[Item, ...] | None:
    """Bulk-validate well-formed JSON items; None means 'take the slow path' (which finds and
    reports the exact problem, or accepts what this path conservatively refused)."""
    n = len(seq)
    if set(map(type, seq)) != {dict}:
        return None
    try:
        ids = [d["item_id"] for d in seq]
        positions = [d["position"] for d in seq]
        feats = [d["features"] for d in seq]
    except KeyError:
        return None
    if set(map(type, ids)) != _STR or not all(ids) or max(map(len, ids)) > MAX_ID_LEN or len(set(ids)) != n:
        return None
    if set(map(type, positions)) != _INT or positions != list(range(n)):
        return None
    if set(map(type, feats)) != _LIST:
        return None
    lengths = set(map(len, feats))
    width = lengths.pop() if len(lengths) == 1 else -1
    if not 0 <= width <= MAX_ITEM_FEATURES:
        return None
    types = set(map(type, chain.from_iterable(feats)))
    tfeats: list[tuple[float, ...]]
    if types <= _FLOAT:
        tfeats = list(map(tuple, feats))
    elif types <= _FLOAT_INT:
        try:
            tfeats = [tuple(map(float, f)) for f in feats]
        except OverflowError:
            return None
    else:
        return None
    # A finite sum proves every term finite (inf/nan propagate; bounded terms cannot overflow
    # it); min/max bound them. Anything else goes to the slow path, which names the index.
    if width and not (
        isfinite(sum(map(sum, tfeats)))
        and min(map(min, tfeats)) >= -MAX_ABS_NUMBER
        and max(map(max, tfeats)) <= MAX_ABS_NUMBER
    ):
        return None
    # Build the items without re-validating them: C-level maps over the slots' setters.
    out = tuple(map(_new, repeat(Item, n)))
    _drain(map(_set_item_id, out, ids))
    _drain(map(_set_position, out, positions))
    _drain(map(_set_features, out, tfeats))
    return out


# Slot descriptors' setters: the fastest way to fill a frozen slotted instance.
_set_item_id = Item.__dict__["item_id"].__set__
_set_position = Item.__dict__["position"].__set__
_set_features = Item.__dict__["features"].__set__
_drain: Callable[[Iterable[Any]], None] = deque(maxlen=0).extend


def _items_slow(value: Any, path: str) -> tuple[Item, ...]:
    if not isinstance(value, (list, tuple)):
        raise type_error(value, path, "an array of items")
    n = len(value)
    if n == 0:
        raise SchemaError(path, "must not be empty")
    if n > MAX_ITEMS:
        raise SchemaError(path, f"too long: {n} entries, at most {MAX_ITEMS} allowed")
    items = tuple(Item.nested(x, f"{path}[{i}]") for i, x in enumerate(value))
    seen: dict[str, int] = {}
    n_features = len(items[0].features)
    for i, it in enumerate(items):
        if it.position != i:
            raise SchemaError(
                f"{path}[{i}].position", f"must equal the item's index {i} (positions are 0..L-1 in order)"
            )
        if it.item_id in seen:
            raise SchemaError(
                f"{path}[{i}].item_id", f"duplicate item_id {it.item_id!r} (also {path}[{seen[it.item_id]}])"
            )
        seen[it.item_id] = i
        if len(it.features) != n_features:
            raise SchemaError(
                f"{path}[{i}].features",
                f"has {len(it.features)} features, {path}[0].features has {n_features}"
                " (all items must have the same number)",
            )
    return items


# ------------------------------------------------------------------------------------- list state
def _state_fields(src: Mapping[str, Any], p: str) -> dict[str, Any]:
    """Fields shared by ListState and Impression (``p`` is the field prefix)."""
    g = src.get
    return {
        "user_features": v_floats(
            g("user_features", MISSING), p + "user_features", max_len=MAX_USER_FEATURES
        ),
        "history": v_ids(g("history", MISSING), p + "history", max_len=MAX_HISTORY),
        "context": v_floats(g("context", MISSING), p + "context", max_len=MAX_CONTEXT),
        "items": v_items(g("items", MISSING), p + "items"),
    }


@dataclass(frozen=True, slots=True)
class ListState(Model):
    """What the actor saw when it ranked one list (the RL state); nested in transitions."""

    request_id: str
    ts_ms: int
    user_features: tuple[float, ...]
    history: tuple[str, ...]
    context: tuple[float, ...]
    items: tuple[Item, ...]

    _NESTED: ClassVar[tuple[str, ...]] = ("items",)

    @staticmethod
    def _check(src: Mapping[str, Any], path: str) -> dict[str, Any]:
        p = child_prefix(path)
        g = src.get
        out = {
            "request_id": v_id(g("request_id", MISSING), p + "request_id"),
            "ts_ms": v_int(g("ts_ms", MISSING), p + "ts_ms"),
        }
        out.update(_state_fields(src, p))
        return out


# ------------------------------------------------------------------------------------ impressions
ARMS: Final = ("holdout", "personalized", "canary")
"""Arms of the guarded rollout (``actor_service.arms``): ``holdout`` users are ranked by the
incumbent snapshot's ranker with fixed global weights, ``personalized`` ones by the incumbent with
its weight generator, ``canary`` ones by the candidate snapshot."""


def v_arm(value: Any, path: str) -> str:
    """One of :data:`ARMS`."""
    if type(value) is not str:
        raise type_error(value, path, "string")
    if value not in ARMS:
        raise SchemaError(path, f"must be one of {', '.join(ARMS)}, got {value[:64]!r}")
    return value


def v_objectives(value: Any, path: str) -> tuple[str, ...]:
    return v_ids(value, path, max_len=MAX_OBJECTIVES, min_len=1, unique=True)


@dataclass(frozen=True, slots=True)
class Impression(Model):
    """One ranked list shown to a user, with the objective weights that ranked it.

    ``log_propensity`` (schema version 2): the log density of the served weights given the state
    under the policy that served them (``model.policy.log_propensity``: additive-log-ratio
    coordinates); None when the weights were served deterministically (no noise) or by a
    producer that does not log it (version-1 records).

    ``arm`` (schema version 2, guarded rollout): which arm of the rollout served the list, one of
    :data:`ARMS` (``actor_service.arms``); None when the node serves without a guarded rollout
    (``rollout=direct``) and in older records.
    """

    TYPE: ClassVar[str | None] = "impression"
    type: Literal["impression"] = field(default="impression", init=False, repr=False)
    schema_version: int = field(default=SCHEMA_VERSION, init=False, repr=False)
    request_id: str
    user_id: str
    ts_ms: int
    snapshot_version: int
    objectives: tuple[str, ...]
    weights: tuple[float, ...]
    noise: tuple[float, ...]
    user_features: tuple[float, ...]
    history: tuple[str, ...]
    context: tuple[float, ...]
    items: tuple[Item, ...]
    log_propensity: float | None = None  # absent in version-1 records
    arm: str | None = None  # absent in records written before the guarded rollout

    _NESTED: ClassVar[tuple[str, ...]] = ("items",)

    @staticmethod
    def _check(src: Mapping[str, Any], path: str) -> dict[str, Any]:
        p = child_prefix(path)
        g = src.get
        objectives = v_objectives(g("objectives", MISSING), p + "objectives")
        log_propensity = g("log_propensity")
        arm = g("arm")
        k = len(objectives)
        out = {
            "request_id": v_id(g("request_id", MISSING), p + "request_id"),
            "user_id": v_id(g("user_id", MISSING), p + "user_id"),
            "ts_ms": v_int(g("ts_ms", MISSING), p + "ts_ms"),
            "snapshot_version": v_int(g("snapshot_version", MISSING), p + "snapshot_version"),
            "objectives": objectives,
            "weights": v_simplex(g("weights", MISSING), p + "weights", k, "one per objective"),
            "noise": v_floats(g("noise", MISSING), p + "noise", length=k, what="one per objective"),
        }
        out.update(_state_fields(src, p))
        out["log_propensity"] = (
            None if log_propensity is None else v_number(log_propensity, p + "log_propensity")
        )
        out["arm"] = None if arm is None else v_arm(arm, p + "arm")
        return out

    def list_state(self) -> ListState:
        """The RL state of this impression (no re-validation needed)."""
        s = _new(ListState)
        for name in ("request_id", "ts_ms", "user_features", "history", "context", "items"):
            _set(s, name, getattr(self, name))
        return s


# ------------------------------------------------------------------------------ clicks and dwells
@dataclass(frozen=True, slots=True)
class Click(Model):
    """A click on the item at ``position`` of the list of impression ``request_id``."""

    TYPE: ClassVar[str | None] = "click"
    type: Literal["click"] = field(default="click", init=False, repr=False)
    schema_version: int = field(default=SCHEMA_VERSION, init=False, repr=False)
    request_id: str
    user_id: str
    item_id: str
    position: int
    ts_ms: int

    @staticmethod
    def _check(src: Mapping[str, Any], path: str) -> dict[str, Any]:
        p = child_prefix(path)
        g = src.get
        return {
            "request_id": v_id(g("request_id", MISSING), p + "request_id"),
            "user_id": v_id(g("user_id", MISSING), p + "user_id"),
            "item_id": v_id(g("item_id", MISSING), p + "item_id"),
            "position": v_int(g("position", MISSING), p + "position", 0, MAX_ITEMS - 1),
            "ts_ms": v_int(g("ts_ms", MISSING), p + "ts_ms"),
        }


@dataclass(frozen=True, slots=True)
class Dwell(Model):
    """Time spent (``dwell_ms``) on the item at ``position`` of impression ``request_id``."""

    TYPE: ClassVar[str | None] = "dwell"
    type: Literal["dwell"] = field(default="dwell", init=False, repr=False)
    schema_version: int = field(default=SCHEMA_VERSION, init=False, repr=False)
    request_id: str
    user_id: str
    item_id: str
    position: int
    ts_ms: int
    dwell_ms: int

    @staticmethod
    def _check(src: Mapping[str, Any], path: str) -> dict[str, Any]:
        out = Click._check(src, path)
        dwell = src.get("dwell_ms", MISSING)
        out["dwell_ms"] = v_int(dwell, child_prefix(path) + "dwell_ms", 0, MAX_DWELL_MS)
        return out


# ---------------------------------------------------------------------------------- list outcome
@dataclass(frozen=True, slots=True)
class ListOutcome(Model):
    """An impression joined with the feedback received for it before its window closed."""

    TYPE: ClassVar[str | None] = "list_outcome"
    type: Literal["list_outcome"] = field(default="list_outcome", init=False, repr=False)
    schema_version: int = field(default=SCHEMA_VERSION, init=False, repr=False)
    request_id: str
    user_id: str
    ts_ms: int
    closed_at_ms: int
    impression: Impression
    clicks: tuple[int, ...]
    dwell_ms: tuple[int, ...]
    complete: bool

    _NESTED: ClassVar[tuple[str, ...]] = ("impression",)

    @staticmethod
    def _check(src: Mapping[str, Any], path: str) -> dict[str, Any]:
        p = child_prefix(path)
        g = src.get
        request_id = v_id(g("request_id", MISSING), p + "request_id")
        user_id = v_id(g("user_id", MISSING), p + "user_id")
        ts_ms = v_int(g("ts_ms", MISSING), p + "ts_ms")
        closed_at_ms = v_int(g("closed_at_ms", MISSING), p + "closed_at_ms")
        imp = Impression.nested(g("impression", MISSING), p + "impression")
        for name, value in (("request_id", request_id), ("user_id", user_id), ("ts_ms", ts_ms)):
            if getattr(imp, name) != value:
                raise SchemaError(p + name, f"must equal impression.{name} ({getattr(imp, name)!r})")
        n = len(imp.items)
        return {
            "request_id": request_id,
            "user_id": user_id,
            "ts_ms": ts_ms,
            "closed_at_ms": closed_at_ms,
            "impression": imp,
            "clicks": v_ints(g("clicks", MISSING), p + "clicks", length=n, lo=0, hi=1, what="one per item"),
            "dwell_ms": v_ints(
                g("dwell_ms", MISSING), p + "dwell_ms", length=n, lo=0, hi=MAX_DWELL_MS, what="one per item"
            ),
            "complete": v_bool(g("complete", MISSING), p + "complete"),
        }


__all__ = [
    "ARMS",
    "MAX_CONTEXT",
    "MAX_DWELL_MS",
    "MAX_HISTORY",
    "MAX_ITEMS",
    "MAX_ITEM_FEATURES",
    "MAX_OBJECTIVES",
    "MAX_USER_FEATURES",
    "Click",
    "Dwell",
    "Impression",
    "Item",
    "ListOutcome",
    "ListState",
    "v_arm",
    "v_items",
    "v_objectives",
]
