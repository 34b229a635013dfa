"""Issue 18's records: RolloutDecision (canonical bytes, HMAC sign/verify, state checks), the
snapshot header's signed ``global_weights``, the optional ``arm`` / ``log_propensity`` of
impressions and transitions (older records still read), and model.rollout_signing."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from pathlib import Path
from typing import Any

import orjson
import pytest

import schemas
from model.rollout_signing import (
    ROLLOUT_KEY,
    DecisionRejected,
    decode_decision,
    encode_decision,
    sign_decision,
)
from model.snapshot_keys import SnapshotKeys
from schemas import RolloutDecision, SchemaError, canonical_decision_bytes, verify_decision
from schemas.examples import EXAMPLE_HMAC_KEY, EXAMPLE_PAYLOAD, ROLLOUT_DECISION, TRANSITION

ROOT = Path(__file__).resolve().parents[2]
KEY = b"rollout-test-key"


def fields_of(d: RolloutDecision, **changes: Any) -> dict[str, Any]:
    out = {f.name: getattr(d, f.name) for f in dataclasses.fields(d) if f.init and f.name != "signature"}
    return {**out, **changes}


def test_decision_round_trip_and_signature() -> None:
    d = ROLLOUT_DECISION
    back = schemas.decode(schemas.encode(d))
    assert back == d and type(back) is RolloutDecision
    verify_decision(back, {"default": EXAMPLE_HMAC_KEY, "other": KEY})
    canon = canonical_decision_bytes(d)
    assert b'"signature"' not in canon and canon == orjson.dumps(
        orjson.loads(canon), option=orjson.OPT_SORT_KEYS
    )
    assert d.signature == hmac.new(EXAMPLE_HMAC_KEY, canon, hashlib.sha256).hexdigest()
    # the documented example and its canonical bytes are the ones in docs/schemas.md
    text = (ROOT / "docs" / "schemas.md").read_text()
    assert canon.decode() in text and d.signature in text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"reason": "nothing to see"}, "signature"),
        ({"rejected": [13, 12]}, "signature"),
        ({"evidence": {"dwell.upper": 0.5}}, "signature"),
        ({"schema_version": 1}, "signature"),  # the version is signed, and kept when decoded
        ({"key_id": "rotated"}, "key_id"),  # an id the verifier does not accept
    ],
)
def test_a_tampered_decision_does_not_verify(change: dict[str, Any], field: str) -> None:
    d = ROLLOUT_DECISION.to_dict() | change
    back = schemas.decode_rollout_decision(orjson.dumps(d))
    with pytest.raises(SchemaError) as info:
        verify_decision(back, {"default": EXAMPLE_HMAC_KEY})
    assert info.value.field == field


def test_a_decision_signed_with_another_key_does_not_verify() -> None:
    forged = schemas.make_decision(**fields_of(ROLLOUT_DECISION), key=b"attacker")
    with pytest.raises(SchemaError) as info:
        verify_decision(forged, {"default": EXAMPLE_HMAC_KEY})
    assert info.value.field == "signature"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"decision": "canary", "candidate": 12, "canary_started_at_ms": 1}, "candidate"),
        ({"decision": "promote", "rejected": ()}, "incumbent"),
        ({"decision": "bootstrap", "incumbent": None, "rejected": ()}, "incumbent"),
        ({"decision": "rollback", "rejected": (12,)}, "rejected"),
        ({"decision": "reject_ope", "incumbent": 13}, "version"),
        ({"candidate": 14}, "canary_started_at_ms"),
        ({"decision": "canary", "version": 12, "candidate": 12, "canary_started_at_ms": 1}, "candidate"),
    ],
)
def test_a_decision_must_agree_with_the_state_it_records(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(SchemaError) as info:
        schemas.make_decision(**fields_of(ROLLOUT_DECISION, **changes), key=KEY)
    assert info.value.field == field


def test_each_decision_kind_with_its_state_is_valid() -> None:
    for changes in (
        {"decision": "canary", "version": 14, "candidate": 14, "canary_started_at_ms": 5},
        {"decision": "promote", "version": 14, "incumbent": 14, "rejected": ()},
        {"decision": "bootstrap", "version": 1, "incumbent": 1, "rejected": ()},
        {"decision": "reject_ope", "version": 15, "rejected": (13, 15)},
    ):
        d = schemas.make_decision(**fields_of(ROLLOUT_DECISION, **changes), key=KEY)
        verify_decision(schemas.decode_rollout_decision(schemas.encode(d)), {"default": KEY})


def test_global_weights_are_signed_and_absent_ones_leave_old_headers_alone() -> None:
    base: dict[str, Any] = {
        "snapshot_version": 3,
        "created_at_ms": 1,
        "training_step": 2,
        "watermark_ms": 0,
        "model_config": {},
        "payload": EXAMPLE_PAYLOAD,
        "key": KEY,
        "key_id": "k",
    }
    without = schemas.make_header(**base)
    assert "global_weights" not in without.to_dict()
    assert b"global_weights" not in schemas.canonical_header_bytes(without)
    header = schemas.make_header(**base, global_weights=(0.25, 0.75))
    back = schemas.decode_snapshot_header(schemas.encode(header))
    assert back.global_weights == (0.25, 0.75)
    schemas.verify_snapshot(back, EXAMPLE_PAYLOAD, {"k": KEY})
    tampered = header.to_dict() | {"global_weights": [0.75, 0.25]}
    with pytest.raises(SchemaError) as info:
        schemas.verify_snapshot(
            schemas.decode_snapshot_header(orjson.dumps(tampered)), EXAMPLE_PAYLOAD, {"k": KEY}
        )
    assert info.value.field == "signature"
    # an integer weight is a float after decoding, and the canonical bytes are the same
    as_ints = schemas.decode_snapshot_header(orjson.dumps(header.to_dict() | {"global_weights": [0, 1]}))
    assert as_ints.global_weights == (0.0, 1.0)


def test_version_1_impressions_and_transitions_read_without_arm_or_propensity() -> None:
    t = TRANSITION.to_dict()
    assert (t["arm"], t["log_propensity"]) == ("personalized", 0.6277)  # carried by the example
    for name in ("arm", "log_propensity"):
        del t[name]
    t["schema_version"] = 1
    old = schemas.decode_transition(orjson.dumps(t))
    assert (old.arm, old.log_propensity, old.schema_version) == (None, None, 2)
    imp = schemas.examples.IMPRESSION.to_dict()
    del imp["arm"], imp["log_propensity"]
    imp["schema_version"] = 1
    assert schemas.decode_impression(orjson.dumps(imp)).arm is None


def test_model_rollout_signing_signs_with_the_settings_keys_and_names_each_refusal() -> None:
    keys = SnapshotKeys({"k1": KEY, "k2": b"next-key"}, "k1")
    unsigned = {k: v for k, v in fields_of(ROLLOUT_DECISION).items() if k != "key_id"}
    d = sign_decision(keys, **unsigned)
    assert d.key_id == "k1"
    key, value = encode_decision(d)
    assert key == ROLLOUT_KEY == b"rollout"
    assert decode_decision(value, keys.accepted) == d
    cases: list[tuple[bytes | None, str]] = [
        (None, "empty"),
        (b"", "empty"),
        (b"{", "schema"),
        (schemas.encode(schemas.examples.CLICK), "schema"),  # another record type
        (value, "unknown_key"),  # with only k2 accepted below
        (value.replace(b'"reason":"', b'"reason":"x'), "signature"),
    ]
    for raw, kind in cases:
        accepted = {"k2": b"next-key"} if kind == "unknown_key" else keys.accepted
        with pytest.raises(DecisionRejected) as info:
            decode_decision(raw, accepted)
        assert info.value.kind == kind, raw
    with pytest.raises(ValueError, match="snapshot_hmac_key_id"):
        sign_decision(SnapshotKeys({"k2": KEY}, "k1"), **unsigned)
