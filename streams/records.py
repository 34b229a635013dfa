"""Encoding what the stream join emits (list outcomes, transitions, dead letters) and reading
list outcomes back in stage 2.

Outputs are built as plain JSON-shaped dicts from records that were already validated on input
and serialized with orjson in one step; the impression is embedded as the bytes that were
received and validated. Going through the validating schema constructors again would double the
CPU cost of the hot path; tests/unit/test_streams_records.py decodes every output shape with
``schemas.decode`` instead.

Stage 2 reads the internal list-outcomes topic, which only stage 1 writes, from validated
records: ``read_outcome`` checks the fields linking and the transition rely on, not every
feature value again (a full ``schemas.decode`` of each outcome was a third of the worker's CPU).
An ``Outcome`` keeps only those fields and its list state, serialized once, not the parsed
record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson

from schemas import (
    ARMS,
    MAX_ABS_NUMBER,
    MAX_ID_LEN,
    SCHEMA_VERSION,
    SUPPORTED_SCHEMA_VERSIONS,
    SchemaError,
    encode,
    make_dead_letter,
    transition_id,
)
from streams.decoding import STATE_FIELDS
from streams.join import ClosedList
from streams.types import Rejected

# Objective name -> list-level feedback from the per-position labels (clicks 0/1, dwell ms). This
# is the transition's ``reward`` vector (one entry per objective, in the impression's order); the
# PAPEREc reward itself is computed by the learner. Unknown objectives get 0.0 (and are counted).
ListFeedback = Callable[[Sequence[int], Sequence[int]], float]
LIST_FEEDBACK: dict[str, ListFeedback] = {
    "click": lambda clicks, dwell: float(sum(clicks)),
    "dwell": lambda clicks, dwell: sum(dwell) / 1000.0,  # seconds
}


def list_feedback(
    objectives: Sequence[str], clicks: Sequence[int], dwell: Sequence[int]
) -> tuple[list[float], int]:
    """(reward vector, number of objectives without a known feedback function)."""
    out, unknown = [], 0
    for name in objectives:
        fn = LIST_FEEDBACK.get(name)
        if fn is None:
            unknown += 1
            out.append(0.0)
        else:
            out.append(fn(clicks, dwell))
    return out, unknown


def encode_list_outcome(c: ClosedList) -> bytes:
    imp = c.impression
    return orjson.dumps(
        {
            "type": "list_outcome",
            "schema_version": SCHEMA_VERSION,
            "request_id": imp.request_id,
            "user_id": imp.user_id,
            "ts_ms": imp.ts_ms,
            "closed_at_ms": c.closed_at_ms,
            "impression": orjson.Fragment(c.impression_raw),
            "clicks": c.clicks,
            "dwell_ms": c.dwell_ms,
            "complete": c.complete,
        }
    )


class Outcome:
    """A list outcome as stage 2 holds it: the fields linking and the transition use, and the
    bytes it came in (written to the link changelog while the chain still needs it)."""

    __slots__ = (
        "arm",
        "clicks",
        "dwell_ms",
        "log_propensity",
        "logged",
        "objectives",
        "raw",
        "request_id",
        "snapshot_version",
        "state",
        "ts_ms",
        "user_id",
        "weights",
    )

    def __init__(
        self,
        user_id: str,
        request_id: str,
        ts_ms: int,
        snapshot_version: int,
        objectives: Sequence[str],
        weights: Sequence[float],
        clicks: Sequence[int],
        dwell_ms: Sequence[int],
        state: bytes,
        raw: bytes,
        arm: str | None = None,
        log_propensity: float | None = None,
    ) -> None:
        self.user_id = user_id
        self.request_id = request_id
        self.ts_ms = ts_ms
        self.snapshot_version = snapshot_version
        self.objectives = objectives
        self.weights = weights  # as in the impression (the transition's action)
        self.clicks = clicks
        self.dwell_ms = dwell_ms
        self.state = state  # the JSON of the impression's list state (ImpressionView.state)
        self.raw = raw
        # The impression's rollout arm and log-propensity, carried into the transition (None:
        # served without a guarded rollout / without noise, or an older record).
        self.arm = arm
        self.log_propensity = log_propensity
        self.logged = False  # written to the link changelog (stage 2's bookkeeping)


_IMPRESSION_KEYS = frozenset((*STATE_FIELDS, "objectives", "weights", "snapshot_version"))


def read_outcome(raw: bytes) -> Outcome:
    """Parse a list outcome written by stage 1, checking what stage 2 uses; SchemaError if not."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SchemaError("$", f"invalid JSON: {exc}") from None
    if type(d) is not dict:
        raise SchemaError("$", "expected an object")
    get = d.get
    if get("type") != "list_outcome" or get("schema_version") not in SUPPORTED_SCHEMA_VERSIONS:
        raise SchemaError("type", f"not a list_outcome record of a supported version: {get('type')!r}")
    rid, uid, ts = get("request_id"), get("user_id"), get("ts_ms")
    if type(rid) is not str or not 0 < len(rid) <= MAX_ID_LEN:
        raise SchemaError("request_id", "expected a non-empty string id")
    if type(uid) is not str or not 0 < len(uid) <= MAX_ID_LEN:
        raise SchemaError("user_id", "expected a non-empty string id")
    if type(ts) is not int:
        raise SchemaError("ts_ms", "expected an integer")
    imp = get("impression")
    if type(imp) is not dict or not imp.keys() >= _IMPRESSION_KEYS:
        raise SchemaError("impression", "expected an impression object")
    objectives, weights, items = imp["objectives"], imp["weights"], imp["items"]
    if type(objectives) is not list or type(weights) is not list or len(objectives) != len(weights):
        raise SchemaError("impression.weights", "expected one weight per objective")
    n = len(items) if type(items) is list else -1
    clicks, dwell = get("clicks"), get("dwell_ms")
    if type(clicks) is not list or len(clicks) != n:
        raise SchemaError("clicks", "expected one entry per item")
    if type(dwell) is not list or len(dwell) != n:
        raise SchemaError("dwell_ms", "expected one entry per item")
    arm, log_propensity = imp.get("arm"), imp.get("log_propensity")
    if arm is not None and (type(arm) is not str or arm not in _ARMS):
        raise SchemaError("impression.arm", f"expected one of {', '.join(ARMS)} or null")
    if log_propensity is not None and not _finite_number(log_propensity):
        raise SchemaError("impression.log_propensity", "expected a finite number or null")
    # Serialized once, here: the parsed record is not kept (fewer long-lived objects).
    state = orjson.dumps({f: imp[f] for f in STATE_FIELDS})
    return Outcome(
        uid,
        rid,
        ts,
        imp["snapshot_version"],
        tuple(objectives),
        tuple(weights),
        tuple(clicks),
        tuple(dwell),
        state,
        raw,
        arm,
        log_propensity,
    )


_ARMS = frozenset(ARMS)


def _finite_number(x: object) -> bool:
    """A number as ``schemas.v_number`` takes it (JSON has no NaN or infinity)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and -MAX_ABS_NUMBER <= x <= MAX_ABS_NUMBER


def encode_transition(prev: Outcome, nxt: Outcome | None) -> tuple[str, bytes, int]:
    """The transition from list ``prev`` to the user's next list ``nxt`` (None: done).
    Returns (transition_id, encoded record, number of unknown objectives)."""
    tid = transition_id(prev.user_id, prev.request_id, None if nxt is None else nxt.request_id)
    reward, unknown = list_feedback(prev.objectives, prev.clicks, prev.dwell_ms)
    raw = orjson.dumps(
        {
            "type": "transition",
            "schema_version": SCHEMA_VERSION,
            "transition_id": tid,
            "user_id": prev.user_id,
            "ts_ms": prev.ts_ms,
            "snapshot_version": prev.snapshot_version,
            "state": orjson.Fragment(prev.state),
            "action": prev.weights,
            "objectives": prev.objectives,
            "labels": {"clicks": prev.clicks, "dwell_ms": prev.dwell_ms},
            "reward": reward,
            "next_state": None if nxt is None else orjson.Fragment(nxt.state),
            "done": nxt is None,
            # copied from the state's impression: which arm served it, and the density of the
            # action under the policy that served it (off-policy estimates need both)
            "arm": prev.arm,
            "log_propensity": prev.log_propensity,
        }
    )
    return tid, raw, unknown


def encode_dead_letter(r: Rejected, now_ms: int) -> bytes:
    # A SchemaError carries the offending field into the dead letter's error_field.
    error = None if r.error_field is None else SchemaError(r.error_field, r.reason)
    dl = make_dead_letter(
        r.raw,
        source_topic=r.source.topic,
        source_partition=r.source.partition,
        source_offset=r.source.offset,
        key=r.source.key,
        stage=r.stage,
        error=error,
        reason=r.reason,
        rejected_at_ms=now_ms,
    )
    return encode(dl)
