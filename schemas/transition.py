"""Transitions: (state, action, labels, reward, next state) tuples the learner trains on."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from schemas._model import SCHEMA_VERSION, Model, child_prefix
from schemas.errors import SchemaError
from schemas.events import MAX_DWELL_MS, MAX_ITEMS, ListState, v_arm, v_objectives
from schemas.validate import (
    MISSING,
    check_length,
    v_bool,
    v_floats,
    v_id,
    v_int,
    v_ints,
    v_number,
    v_simplex,
)


@dataclass(frozen=True, slots=True)
class Labels(Model):
    """Per-position feedback of the state's list: clicks (0/1) and dwell time (ms). Both have one
    entry per item of ``Transition.state.items`` (checked by Transition)."""

    clicks: tuple[int, ...]
    dwell_ms: tuple[int, ...]

    @staticmethod
    def _check(src: Mapping[str, Any], path: str) -> dict[str, Any]:
        p = child_prefix(path)
        g = src.get
        return {
            "clicks": v_ints(g("clicks", MISSING), p + "clicks", lo=0, hi=1, max_len=MAX_ITEMS),
            "dwell_ms": v_ints(
                g("dwell_ms", MISSING), p + "dwell_ms", lo=0, hi=MAX_DWELL_MS, max_len=MAX_ITEMS
            ),
        }


@dataclass(frozen=True, slots=True)
class Transition(Model):
    """One RL transition of one user: the list state, the logged action (objective weights),
    per-position labels, list-level per-objective feedback and the user's next list state.

    ``arm`` and ``log_propensity`` (schema version 2, optional) are copied by the streams from
    the impression of ``state``: the rollout arm that served the list and the log density of the
    logged action under the policy that served it (off-policy estimates need both). None in
    older records and where the impression had none.
    """

    TYPE: ClassVar[str | None] = "transition"
    type: Literal["transition"] = field(default="transition", init=False, repr=False)
    schema_version: int = field(default=SCHEMA_VERSION, init=False, repr=False)
    transition_id: str
    user_id: str
    ts_ms: int
    snapshot_version: int
    state: ListState
    action: tuple[float, ...]
    objectives: tuple[str, ...]
    labels: Labels
    reward: tuple[float, ...]
    next_state: ListState | None
    done: bool
    arm: str | None = None  # absent in records written before the guarded rollout
    log_propensity: float | None = None  # absent in records written before the guarded rollout

    _NESTED: ClassVar[tuple[str, ...]] = ("state", "labels", "next_state")

    @staticmethod
    def _check(src: Mapping[str, Any], path: str) -> dict[str, Any]:
        p = child_prefix(path)
        g = src.get
        state = ListState.nested(g("state", MISSING), p + "state")
        objectives = v_objectives(g("objectives", MISSING), p + "objectives")
        k = len(objectives)
        labels = Labels.nested(g("labels", MISSING), p + "labels")
        n = len(state.items)
        check_length(len(labels.clicks), n, p + "labels.clicks", "one per item of state.items")
        check_length(len(labels.dwell_ms), n, p + "labels.dwell_ms", "one per item of state.items")
        raw_next = g("next_state", MISSING)
        next_state = None if raw_next is None else ListState.nested(raw_next, p + "next_state")
        done = v_bool(g("done", MISSING), p + "done")
        arm, log_propensity = g("arm"), g("log_propensity")
        if done and next_state is not None:
            raise SchemaError(p + "next_state", "must be null when done is true")
        if not done and next_state is None:
            raise SchemaError(p + "next_state", "must not be null when done is false")
        return {
            "transition_id": v_id(g("transition_id", MISSING), p + "transition_id"),
            "user_id": v_id(g("user_id", MISSING), p + "user_id"),
            "ts_ms": v_int(g("ts_ms", MISSING), p + "ts_ms"),
            "snapshot_version": v_int(g("snapshot_version", MISSING), p + "snapshot_version"),
            "state": state,
            "action": v_simplex(g("action", MISSING), p + "action", k, "one per objective"),
            "objectives": objectives,
            "labels": labels,
            "reward": v_floats(g("reward", MISSING), p + "reward", length=k, what="one per objective"),
            "next_state": next_state,
            "done": done,
            "arm": None if arm is None else v_arm(arm, p + "arm"),
            "log_propensity": None
            if log_propensity is None
            else v_number(log_propensity, p + "log_propensity"),
        }


def transition_id(user_id: str, request_id: str, next_request_id: str | None) -> str:
    """Deterministic id of the transition from list ``request_id`` to ``next_request_id``.

    ``sha256(netstring(user_id) + netstring(request_id) + (netstring(next_request_id) or "~"))``,
    hex, first 32 chars, where ``netstring(s) = f"{len(utf8(s))}:" + utf8(s) + ","``. Replaying the
    same events gives the same id, so consumers can deduplicate.
    """

    def netstring(s: str) -> bytes:
        b = s.encode("utf-8", "surrogatepass")
        return b"%d:%s," % (len(b), b)

    data = netstring(user_id) + netstring(request_id)
    data += b"~" if next_request_id is None else netstring(next_request_id)
    return hashlib.sha256(data).hexdigest()[:32]


__all__ = ["Labels", "Transition", "transition_id"]
