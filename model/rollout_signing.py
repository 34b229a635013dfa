"""Rollout decisions on the control topic, signed with the snapshot keys.

The record format, its canonical bytes and the HMAC are in ``schemas.rollout`` (as snapshot
headers' are in ``schemas.snapshot``); this module adds what needs the settings: the keys of
``model.snapshot_keys`` (the controller signs with the learner's signing key, nodes and the
learner accept the same set as for snapshots, so a key rotation covers both), and the Kafka
record (key ``b"rollout"`` on the compacted ``TOPIC_ROLLOUT``: the latest record is the state).

Readers call :func:`decode_decision` on every record and count a :class:`DecisionRejected` by its
``kind`` (a small fixed set, usable as a metric label); a rejected record changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from model.snapshot_keys import SnapshotKeys
from schemas import (
    RolloutDecision,
    SchemaError,
    decode_rollout_decision,
    encode,
    make_decision,
    verify_decision,
)

ROLLOUT_KEY: Final = b"rollout"
"""Kafka key of every record on the control topic (one key: compaction keeps the latest)."""

REJECTION_KINDS: Final = ("empty", "schema", "unknown_key", "signature")
"""Values of :attr:`DecisionRejected.kind`."""


class DecisionRejected(ValueError):
    """A control-topic record that is not a valid, authentic decision; ``kind`` is one of
    :data:`REJECTION_KINDS`, the message names the field."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def sign_decision(keys: SnapshotKeys, **fields: Any) -> RolloutDecision:
    """A decision with ``fields`` (those of ``schemas.make_decision`` but the key), signed with the
    configured signing key. ValueError if no signing key is configured; SchemaError naming the
    field if a field is invalid."""
    key_id, key = keys.signing()
    return make_decision(**fields, key=key, key_id=key_id)


def encode_decision(decision: RolloutDecision) -> tuple[bytes, bytes]:
    """(Kafka key, value) of a decision on the control topic."""
    return ROLLOUT_KEY, encode(decision)


def decode_decision(raw: bytes | None, accepted: Mapping[str, bytes]) -> RolloutDecision:
    """Parse, validate and authenticate one control-topic record value against the ``accepted``
    keys (``SnapshotKeys.accepted``). Raises :class:`DecisionRejected`."""
    if not raw:
        raise DecisionRejected("empty", "empty record (a tombstone is no decision)")
    try:
        decision = decode_rollout_decision(raw)
    except SchemaError as exc:
        raise DecisionRejected("schema", f"bad decision: {exc}") from None
    try:
        verify_decision(decision, accepted)
    except SchemaError as exc:
        kind = "unknown_key" if exc.field == "key_id" else "signature"
        raise DecisionRejected(kind, f"decision {decision.decision_id!r} rejected: {exc}") from None
    return decision


__all__ = [
    "REJECTION_KINDS",
    "ROLLOUT_KEY",
    "DecisionRejected",
    "decode_decision",
    "encode_decision",
    "sign_decision",
]
