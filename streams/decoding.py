"""Decoding the join's inputs: the same acceptance and errors as ``schemas.decode``, faster.

Why: ``schemas.decode`` builds a fully validated model (an ``Impression`` with one ``Item`` and
one tuple per item, ...): ~39 us per impression and ~4 us per click here, a quarter of the
worker's CPU, and the model objects live as long as the window is open (garbage-collector work).
The join needs a few fields of each record; stage 2 needs the impression's list state as JSON.

Contract, for every input: ``decode_impression(raw)`` and ``decode_feedback(raw, cls)`` accept
exactly what ``schemas.decode(raw, cls)`` accepts and raise the same ``SchemaError`` (field and
reason) for the rest. The checks here accept only the plainly valid common shape (floats where
floats are due, no out-of-range value, ...); anything else is handed to ``schemas.decode``,
which reports the exact problem or accepts what these checks conservatively refused (the view is
then built from the parsed record all the same). tests/unit/test_streams_decoding.py compares
both on valid, malformed and fuzzed records.
"""

from __future__ import annotations

from math import fsum, isfinite
from operator import itemgetter
from typing import Any

import orjson

from schemas import (
    ARMS,
    MAX_ABS_NUMBER,
    MAX_CONTEXT,
    MAX_DWELL_MS,
    MAX_HISTORY,
    MAX_ID_LEN,
    MAX_ITEM_FEATURES,
    MAX_ITEMS,
    MAX_OBJECTIVES,
    MAX_USER_FEATURES,
    SCHEMA_VERSION,
    SIMPLEX_TOLERANCE,
    SUPPORTED_SCHEMA_VERSIONS,
    Click,
    Dwell,
    Impression,
    decode,
)
from schemas.validate import INT64_MAX

STATE_FIELDS = ("request_id", "ts_ms", "user_features", "history", "context", "items")
"""The fields of an impression that make a transition's list state (``schemas.ListState``)."""

_loads = orjson.loads
_dumps = orjson.dumps
_JSONDecodeError = orjson.JSONDecodeError
_STR = frozenset({str})
_INT = frozenset({int})
_LIST = frozenset({list})
_item_id, _position, _features = itemgetter("item_id"), itemgetter("position"), itemgetter("features")
_DICT = frozenset({dict})


class ImpressionView:
    """What the join and stage 2 use of a validated impression. Values are as received (an
    integer weight stays an integer, as in the raw impression that the list outcome embeds);
    ``state`` is the JSON of its list state, serialized once: each list is the ``state`` of one
    transition and the ``next_state`` of another."""

    __slots__ = (
        "arm",
        "item_ids",
        "log_propensity",
        "noise",
        "objectives",
        "request_id",
        "snapshot_version",
        "state",
        "ts_ms",
        "user_id",
        "weights",
    )

    def __init__(self, d: dict[str, Any]) -> None:
        self.request_id: str = d["request_id"]
        self.user_id: str = d["user_id"]
        self.ts_ms: int = d["ts_ms"]
        self.snapshot_version: int = d["snapshot_version"]
        self.objectives: tuple[str, ...] = tuple(d["objectives"])
        self.weights: tuple[float, ...] = tuple(d["weights"])
        self.noise: tuple[float, ...] = tuple(d["noise"])
        self.item_ids: tuple[str, ...] = tuple([it["item_id"] for it in d["items"]])
        self.state: bytes = _dumps({f: d[f] for f in STATE_FIELDS})
        # the rollout arm and log-propensity (None: absent or null), for the list_outcomes row
        self.arm: str | None = d.get("arm")
        self.log_propensity: float | None = d.get("log_propensity")

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def decode_impression(raw: bytes) -> ImpressionView:
    """Parse and validate an impression (``SchemaError`` exactly as ``schemas.decode``)."""
    try:
        d = _loads(raw)
    except _JSONDecodeError:
        d = None
    if d is None or not _impression_ok(d, raw):
        decode(raw, Impression)  # raises the exact error, or accepts what the checks refused
    return ImpressionView(d)


def decode_feedback(raw: bytes, cls: type[Click] | type[Dwell]) -> Click | Dwell:
    """Parse and validate a click or a dwell (``SchemaError`` exactly as ``schemas.decode``)."""
    try:
        d = _loads(raw)
    except _JSONDecodeError:
        return decode(raw, cls)  # raises the exact error
    if type(d) is dict:
        g = d.get
        rid, uid, iid, pos, ts = g("request_id"), g("user_id"), g("item_id"), g("position"), g("ts_ms")
        sv = g("schema_version")
        if (
            g("type") == cls.TYPE
            and type(sv) is int
            and sv in SUPPORTED_SCHEMA_VERSIONS
            and type(rid) is str
            and 0 < len(rid) <= MAX_ID_LEN
            and type(uid) is str
            and 0 < len(uid) <= MAX_ID_LEN
            and type(iid) is str
            and 0 < len(iid) <= MAX_ID_LEN
            and type(pos) is int
            and 0 <= pos < MAX_ITEMS
            and type(ts) is int
            and 0 <= ts <= INT64_MAX
        ):
            if cls is Click:
                c = _new(Click)
                _click_fields(c, rid, uid, iid, pos, ts)
                return c
            ms = g("dwell_ms")
            if type(ms) is int and 0 <= ms <= MAX_DWELL_MS:
                w = _new(Dwell)
                _click_fields(w, rid, uid, iid, pos, ts)
                _set_dwell_ms(w, ms)
                return w
    return decode(raw, cls)


# Building the frozen schemas dataclasses from values checked above, without validating them a
# second time: the slots' setters, as schemas does for its own trusted construction.
_new = object.__new__


def _click_fields(obj: Click | Dwell, rid: str, uid: str, iid: str, pos: int, ts: int) -> None:
    cls = type(obj)
    setters = _SETTERS[cls]
    setters[0](obj, cls.TYPE)
    setters[1](obj, SCHEMA_VERSION)
    setters[2](obj, rid)
    setters[3](obj, uid)
    setters[4](obj, iid)
    setters[5](obj, pos)
    setters[6](obj, ts)


_SETTERS = {cls: [cls.__dict__[name].__set__ for name in cls._field_names()[0]] for cls in (Click, Dwell)}
_set_dwell_ms = Dwell.__dict__["dwell_ms"].__set__


def _id_ok(x: Any) -> bool:
    return type(x) is str and 0 < len(x) <= MAX_ID_LEN


def _int_ok(x: Any) -> bool:
    return type(x) is int and 0 <= x <= INT64_MAX


def _numbers_ok(x: Any, max_len: int) -> bool:
    """A list of at most ``max_len`` finite numbers within +-MAX_ABS_NUMBER, given that the
    record holds no boolean: ``sum`` raises TypeError on anything but numbers, a finite sum proves
    every term finite (an int beyond float range raises OverflowError), min/max bound them."""
    return (
        type(x) is list
        and len(x) <= max_len
        and isfinite(sum(x))
        and (not x or (min(x) >= -MAX_ABS_NUMBER and max(x) <= MAX_ABS_NUMBER))
    )


def _ids_ok(x: Any, max_len: int) -> bool:
    return (
        type(x) is list
        and len(x) <= max_len
        and (not x or (set(map(type, x)) == _STR and all(x) and max(map(len, x)) <= MAX_ID_LEN))
    )


def _impression_ok(d: Any, raw: bytes) -> bool:
    # Booleans are the one non-number ``sum`` takes; a record without a boolean anywhere (the
    # common case: impressions have no boolean field) lets the number lists be checked by sum.
    if type(d) is not dict or b"true" in raw or b"false" in raw:
        return False
    try:
        return _checked(d)
    except (TypeError, OverflowError, KeyError):  # sum over a non-number, an int beyond float
        return False  # range, an item without one of its fields


def _log_propensity_ok(x: Any) -> bool:
    """Absent or null (version 1, or served without noise), or a number as ``schemas.v_number``
    takes it (no boolean: see _impression_ok); an int beyond float range raises OverflowError."""
    return x is None or (
        (type(x) is float or type(x) is int) and isfinite(x) and -MAX_ABS_NUMBER <= x <= MAX_ABS_NUMBER
    )


_ARMS = frozenset(ARMS)


def _arm_ok(x: Any) -> bool:
    """Absent or null (served without a guarded rollout, older records), or one of the arms."""
    return x is None or (type(x) is str and x in _ARMS)


def _checked(d: dict[str, Any]) -> bool:
    g = d.get
    sv = g("schema_version")
    objectives: Any = g("objectives")
    weights: Any = g("weights")
    noise: Any = g("noise")
    if not (
        g("type") == "impression"
        and type(sv) is int
        and sv in SUPPORTED_SCHEMA_VERSIONS
        and _id_ok(g("request_id"))
        and _id_ok(g("user_id"))
        and _int_ok(g("ts_ms"))
        and _int_ok(g("snapshot_version"))
        and _ids_ok(objectives, MAX_OBJECTIVES)
        and objectives
        and len(set(objectives)) == len(objectives)
        and _numbers_ok(weights, MAX_OBJECTIVES)
        and len(weights) == len(objectives)
        and min(weights) >= 0.0
        and abs(fsum(weights) - 1.0) <= SIMPLEX_TOLERANCE
        and _numbers_ok(noise, MAX_OBJECTIVES)
        and len(noise) == len(objectives)
        and _numbers_ok(g("user_features"), MAX_USER_FEATURES)
        and _ids_ok(g("history"), MAX_HISTORY)
        and _numbers_ok(g("context"), MAX_CONTEXT)
        and _log_propensity_ok(g("log_propensity"))
        and _arm_ok(g("arm"))
    ):
        return False
    items = g("items")
    if type(items) is not list or not 0 < len(items) <= MAX_ITEMS or set(map(type, items)) != _DICT:
        return False
    n = len(items)
    ids = list(map(_item_id, items))  # KeyError if one is missing
    positions = list(map(_position, items))
    feats = list(map(_features, items))
    if set(map(type, ids)) != _STR or not all(ids) or max(map(len, ids)) > MAX_ID_LEN or len(set(ids)) != n:
        return False
    if set(map(type, positions)) != _INT or positions != list(range(n)):
        return False
    if set(map(type, feats)) != _LIST:
        return False
    lengths = set(map(len, feats))
    if len(lengths) != 1 or lengths.pop() > MAX_ITEM_FEATURES:
        return False
    return not feats[0] or (
        isfinite(sum(map(sum, feats)))
        and min(map(min, feats)) >= -MAX_ABS_NUMBER
        and max(map(max, feats)) <= MAX_ABS_NUMBER
    )
