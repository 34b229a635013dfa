"""The join's fast decoders (streams.decoding) accept exactly what ``schemas.decode`` accepts and
raise the same SchemaError (field and reason) for the rest: on the malformed-field table of the
schemas tests, on raw inputs, and on seeded fuzzing of valid records."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from test_schemas_fuzz import _JSON_JUNK, _mutate_bytes, _mutate_structure
from test_schemas_malformed import CASES, RAW_CASES, VALID, base, dumps, mutate

import schemas
from schemas import Click, Dwell, Impression, SchemaError
from schemas.examples import make_impression
from streams import fixtures as fx
from streams.decoding import STATE_FIELDS, _checked, decode_feedback, decode_impression

TYPES: dict[str, type[Any]] = {"impression": Impression, "click": Click, "dwell": Dwell}


def fast(raw: Any, cls: type[Any]) -> Any:
    return decode_impression(raw) if cls is Impression else decode_feedback(raw, cls)


def same_outcome(raw: Any, cls: type[Any]) -> bool:
    """Both decoders accept (with the same values) or both raise the same error; True if valid."""
    try:
        expected = schemas.decode(raw, cls)
    except SchemaError as exc:
        with pytest.raises(SchemaError) as info:
            fast(raw, cls)
        assert (info.value.field, info.value.reason) == (exc.field, exc.reason)
        return False
    got = fast(raw, cls)
    if cls is Impression:
        d = orjson.loads(raw)
        assert (got.request_id, got.user_id, got.ts_ms, got.snapshot_version) == (
            expected.request_id,
            expected.user_id,
            expected.ts_ms,
            expected.snapshot_version,
        )
        assert got.objectives == expected.objectives and got.item_ids == tuple(
            it.item_id for it in expected.items
        )
        assert tuple(map(float, got.weights)) == expected.weights
        assert tuple(map(float, got.noise)) == expected.noise
        assert got.state == orjson.dumps({f: d[f] for f in STATE_FIELDS})
    else:
        assert got == expected and type(got) is cls
    return True


def test_valid_fixtures_decode_alike() -> None:
    for raw, cls in [
        (fx.dumps(fx.impression("r1", "u1", 1_000, n_items=5, n_features=4)), Impression),
        (schemas.encode(make_impression(20, 8, seed=3)), Impression),
        (fx.dumps(fx.click("r1", "u1", 2, 1_100)), Click),
        (fx.dumps(fx.dwell("r1", "u1", 2, 1_200, 3_000)), Dwell),
    ]:
        assert same_outcome(raw, cls)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("log_propensity", ["absent", None, -1.25, 3])
def test_impression_versions_with_and_without_propensity_decode_alike(
    version: int, log_propensity: Any
) -> None:
    """Version-1 impressions (no log_propensity) and version-2 ones (null, a number, or none) are
    accepted by both decoders, on the fast path: the fast checks must not refuse them."""
    d = make_impression(20, 8, seed=5).to_dict()
    d["schema_version"] = version
    if log_propensity == "absent":
        del d["log_propensity"]
    else:
        d["log_propensity"] = log_propensity
    raw = orjson.dumps(d)
    assert same_outcome(raw, Impression)
    assert _checked(orjson.loads(raw))  # the fast path took it (no fallback to schemas.decode)
    expected = None if log_propensity == "absent" else log_propensity
    assert schemas.decode(raw, Impression).log_propensity == expected


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("arm", ["absent", None, "holdout", "personalized", "canary"])
def test_impressions_with_and_without_an_arm_decode_alike_on_the_fast_path(version: int, arm: Any) -> None:
    """Issue 18: the rollout arm is optional; every valid value stays on the fast path, and an
    invalid one is refused there (the schemas decoder then reports it: test_malformed_field_same_error)."""
    d = make_impression(20, 8, seed=6).to_dict()
    d["schema_version"] = version
    if arm == "absent":
        del d["arm"]
    else:
        d["arm"] = arm
    raw = orjson.dumps(d)
    assert same_outcome(raw, Impression)
    assert _checked(orjson.loads(raw))
    assert schemas.decode(raw, Impression).arm == (None if arm == "absent" else arm)
    d["arm"] = "control"
    assert not _checked(d)
    assert not same_outcome(orjson.dumps(d), Impression)


@pytest.mark.parametrize(("record_type", "path", "value", "field"), [c for c in CASES if c[0] in TYPES])
def test_malformed_field_same_error(record_type: str, path: str, value: Any, field: str) -> None:
    d = base(record_type)
    mutate(d, path, value)
    assert not same_outcome(dumps(d), TYPES[record_type])


@pytest.mark.parametrize(("record_type", "path", "value"), [c for c in VALID if c[0] in TYPES])
def test_still_valid_alike(record_type: str, path: str, value: Any) -> None:
    d = base(record_type)
    mutate(d, path, value)
    assert same_outcome(dumps(d), TYPES[record_type])


@pytest.mark.parametrize(("raw", "field"), RAW_CASES)
@pytest.mark.parametrize("cls", [Impression, Click, Dwell])
def test_raw_inputs_same_error(raw: bytes | str, field: str, cls: type[Any]) -> None:
    assert not same_outcome(raw, cls)


@pytest.mark.parametrize("cls", [Impression, Click, Dwell])
def test_other_record_types_same_error(cls: type[Any]) -> None:
    for other in TYPES:
        if TYPES[other] is not cls:
            assert not same_outcome(dumps(base(other)), cls)


@pytest.mark.parametrize("record_type", sorted(TYPES))
def test_fuzz_structure_and_bytes_alike(record_type: str) -> None:
    rng = random.Random(f"streams-decoding-{record_type}")
    cls = TYPES[record_type]
    data = base(record_type)
    accepted = 0
    for _ in range(1_500):
        mutated = _mutate_structure(rng, data, _JSON_JUNK)
        try:
            raw = orjson.dumps(mutated)
        except orjson.JSONEncodeError:  # e.g. ints beyond 64 bits
            continue
        accepted += same_outcome(raw, cls)
        same_outcome(_mutate_bytes(rng, raw), cls)
    assert 0 < accepted < 1_500  # the mutations hit both sides
