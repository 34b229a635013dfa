"""Rollout decisions: the guarded rollout's serving state, one record per decision, and their
HMAC-SHA256 signature.

The rollout controller (``rollout/``) writes each decision to the compacted control topic
(``TOPIC_ROLLOUT``, key ``b"rollout"``), so the latest record is the whole serving state: which
snapshot is the incumbent, which (if any) is the canary candidate with which share of traffic
since when, and which versions were rejected recently. Serving nodes and the learner follow it.

A decision is signed like a snapshot header (``schemas.snapshot``), with the same keys
(``model.snapshot_keys``): a forged decision could roll any snapshot out to every user.

    signature = hex(HMAC-SHA256(key, canonical_decision_bytes(decision)))
    canonical_decision_bytes = the decision's JSON form without "signature",
                               keys sorted (recursively), no whitespace, UTF-8

``key_id`` is required here (decisions are newer than key rotation). The key-aware helpers (sign
with the configured key, verify against the accepted ones, the Kafka record) are in
``model.rollout_signing``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Final, Literal

import orjson

from schemas._model import SCHEMA_VERSION, Model, child_prefix
from schemas.errors import SchemaError
from schemas.events import ARMS
from schemas.snapshot import v_key_id
from schemas.validate import MISSING, type_error, v_hex64, v_id, v_int, v_number, v_str

DECISIONS: Final = ("canary", "promote", "rollback", "reject_ope", "bootstrap")
"""What a decision did to ``version``: ``canary`` started serving it to a share of traffic;
``promote`` made it the incumbent after its canary; ``rollback`` ended its canary and rejected it;
``reject_ope`` rejected it on its off-policy estimate before any user saw it; ``bootstrap`` made
the first valid snapshot the incumbent (there was none)."""

MAX_DECISION_REASON_LEN: Final = 2048
MAX_EVIDENCE: Final = 256
"""Most entries of ``evidence`` (per-objective estimates and bounds, e.g. ``dwell.upper``)."""
MAX_REJECTED: Final = 64
"""Most versions ``rejected`` lists: the most recent ones (a bound on the record's size; older
versions are never candidates again anyway, a candidate being newer than the incumbent)."""

_PLACEHOLDER_SIGNATURE: Final = "0" * 64


def _opt_version(value: Any, path: str) -> int | None:
    return None if value is None else v_int(value, path, 1)


def _evidence(value: Any, path: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise type_error(value, path, "an object of numbers")
    if len(value) > MAX_EVIDENCE:
        raise SchemaError(path, f"too long: {len(value)} entries, at most {MAX_EVIDENCE} allowed")
    out: dict[str, float] = {}
    for k, v in value.items():
        if type(k) is not str or not k or len(k) > 128:
            raise SchemaError(path, f"keys must be strings of 1..128 chars, got {str(k)[:64]!r}")
        out[k] = v_number(v, f"{path}.{k}")
    return out


def _rejected(value: Any, path: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise type_error(value, path, "an array of integers")
    if len(value) > MAX_REJECTED:
        raise SchemaError(path, f"too long: {len(value)} entries, at most {MAX_REJECTED} allowed")
    return tuple(v_int(x, f"{path}[{i}]", 1) for i, x in enumerate(value))


@dataclass(frozen=True, slots=True)
class RolloutDecision(Model):
    """One decision of the rollout controller and the serving state after it (see module doc).

    Checked on construction, besides each field: ``canary`` has ``candidate == version``;
    ``promote`` and ``bootstrap`` have ``incumbent == version``; ``rollback`` and ``reject_ope``
    list ``version`` in ``rejected`` and serve it in neither role; a ``candidate`` has a
    ``canary_started_at_ms`` and is not the incumbent.
    """

    TYPE: ClassVar[str | None] = "rollout_decision"
    type: Literal["rollout_decision"] = field(default="rollout_decision", init=False, repr=False)
    schema_version: int = field(default=SCHEMA_VERSION, init=False, repr=False)
    decision_id: str
    """unique id of this decision (e.g. ``<version>-<decision>-<decided_at_ms>``)"""
    decided_at_ms: int
    """when the controller decided (wall time, ms)"""
    decision: str
    """one of :data:`DECISIONS`"""
    version: int
    """the snapshot version the decision is about"""
    incumbent: int | None
    """after the decision: the snapshot personalized and holdout users are served (None: none yet)"""
    candidate: int | None
    """after the decision: the snapshot canary users are served (None: no canary)"""
    canary_share: float
    """share of non-holdout users in the canary arm while a candidate is set, in [0, 1]"""
    canary_started_at_ms: int | None
    """when the open canary started (None: no canary); the controller re-reads outcomes from here"""
    reason: str
    """why, in words (shown on the dashboard)"""
    evidence: dict[str, float]
    """per-objective estimates and bounds behind the decision, e.g. ``{"dwell.lower": -0.02}``"""
    rejected: tuple[int, ...]
    """recently rejected versions, at most MAX_REJECTED, that nodes must never serve"""
    key_id: str
    """id of the key that signed the decision"""
    signature: str
    """hex HMAC-SHA256 of :func:`canonical_decision_bytes`"""

    @staticmethod
    def _check(src: Mapping[str, Any], path: str) -> dict[str, Any]:
        p = child_prefix(path)
        g = src.get
        decision = v_str(g("decision", MISSING), p + "decision", 32)
        if decision not in DECISIONS:
            raise SchemaError(p + "decision", f"must be one of {', '.join(DECISIONS)}, got {decision!r}")
        share = v_number(g("canary_share", MISSING), p + "canary_share")
        if not 0.0 <= share <= 1.0:
            raise SchemaError(p + "canary_share", f"must be in [0, 1], got {share!r}")
        started = g("canary_started_at_ms")
        out: dict[str, Any] = {
            "decision_id": v_id(g("decision_id", MISSING), p + "decision_id"),
            "decided_at_ms": v_int(g("decided_at_ms", MISSING), p + "decided_at_ms"),
            "decision": decision,
            "version": v_int(g("version", MISSING), p + "version", 1),
            "incumbent": _opt_version(g("incumbent", MISSING), p + "incumbent"),
            "candidate": _opt_version(g("candidate", MISSING), p + "candidate"),
            "canary_share": share,
            "canary_started_at_ms": None if started is None else v_int(started, p + "canary_started_at_ms"),
            "reason": v_str(g("reason", MISSING), p + "reason", MAX_DECISION_REASON_LEN),
            "evidence": _evidence(g("evidence", MISSING), p + "evidence"),
            "rejected": _rejected(g("rejected", MISSING), p + "rejected"),
            "key_id": v_key_id(g("key_id", MISSING), p + "key_id"),
            "signature": v_hex64(g("signature", MISSING), p + "signature"),
        }
        _check_state(out, p)
        # Decoding: keep the version the decision was signed with (it is part of the signed
        # bytes), as snapshot headers do; construction in Python writes the current version.
        version = g("schema_version")
        if version is not None:
            out["schema_version"] = version
        return out


def _check_state(d: dict[str, Any], p: str) -> None:
    """The decision agrees with the serving state it records (see RolloutDecision)."""
    decision, version, incumbent, candidate = d["decision"], d["version"], d["incumbent"], d["candidate"]
    if decision == "canary" and candidate != version:
        raise SchemaError(
            p + "candidate", f"a canary decision sets candidate = version ({version}), got {candidate}"
        )
    if decision in ("promote", "bootstrap") and incumbent != version:
        raise SchemaError(
            p + "incumbent", f"a {decision} decision sets incumbent = version ({version}), got {incumbent}"
        )
    if decision in ("rollback", "reject_ope"):
        if version not in d["rejected"]:
            raise SchemaError(p + "rejected", f"a {decision} decision lists its version {version}")
        if version in (incumbent, candidate):
            raise SchemaError(p + "version", f"rejected version {version} is still served after {decision}")
    if candidate is not None:
        if d["canary_started_at_ms"] is None:
            raise SchemaError(p + "canary_started_at_ms", "required while a candidate is set")
        if candidate == incumbent:
            raise SchemaError(p + "candidate", f"must differ from the incumbent ({incumbent})")


def canonical_decision_bytes(decision: RolloutDecision) -> bytes:
    """The bytes the signature covers: the decision's JSON form without ``signature``, keys
    sorted recursively, compact, UTF-8."""
    d = decision.to_dict()
    del d["signature"]
    return orjson.dumps(d, option=orjson.OPT_SORT_KEYS)


def sign_decision(decision: RolloutDecision, key: bytes) -> str:
    """Hex HMAC-SHA256 of :func:`canonical_decision_bytes` (any existing signature is ignored)."""
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ValueError("key must be non-empty bytes")
    return hmac.new(bytes(key), canonical_decision_bytes(decision), hashlib.sha256).hexdigest()


def verify_decision(decision: RolloutDecision, keys: Mapping[str, bytes]) -> None:
    """Check the signature with the key of ``decision.key_id`` among the accepted ``keys``.

    Raises SchemaError with field ``key_id`` (id not accepted) or ``signature`` (mismatch: wrong
    key or tampered record). The digest comparison is constant-time."""
    if decision.key_id not in keys:
        accepted = ", ".join(sorted(keys)) or "none"
        raise SchemaError("key_id", f"unknown key id {decision.key_id!r} (accepted: {accepted})")
    if not hmac.compare_digest(sign_decision(decision, keys[decision.key_id]), decision.signature):
        raise SchemaError("signature", "HMAC-SHA256 signature mismatch (wrong key or tampered decision)")


def make_decision(
    *,
    decision_id: str,
    decided_at_ms: int,
    decision: str,
    version: int,
    incumbent: int | None,
    candidate: int | None,
    canary_share: float,
    canary_started_at_ms: int | None,
    reason: str,
    evidence: Mapping[str, float],
    rejected: tuple[int, ...] | list[int],
    key: bytes,
    key_id: str,
) -> RolloutDecision:
    """Build a validated decision signed with ``key`` (whose id ``key_id`` it records)."""
    unsigned = RolloutDecision(
        decision_id=decision_id,
        decided_at_ms=decided_at_ms,
        decision=decision,
        version=version,
        incumbent=incumbent,
        candidate=candidate,
        canary_share=canary_share,
        canary_started_at_ms=canary_started_at_ms,
        reason=reason,
        evidence=dict(evidence),
        rejected=tuple(rejected),
        key_id=key_id,
        signature=_PLACEHOLDER_SIGNATURE,
    )
    return replace(unsigned, signature=sign_decision(unsigned, key))


__all__ = [
    "ARMS",
    "DECISIONS",
    "MAX_DECISION_REASON_LEN",
    "MAX_EVIDENCE",
    "MAX_REJECTED",
    "RolloutDecision",
    "canonical_decision_bytes",
    "make_decision",
    "sign_decision",
    "verify_decision",
]
