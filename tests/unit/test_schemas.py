"""schemas: round trips, construction-time validation, immutability, JSON Schema files, docs."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

import schemas
from schemas import (
    Click,
    DeadLetter,
    Dwell,
    Impression,
    Item,
    Labels,
    ListOutcome,
    ListState,
    SchemaError,
    SnapshotHeader,
    Transition,
)
from schemas.examples import EXAMPLES, IMPRESSION, TRANSITION, example_json, make_impression
from schemas.jsonschema_export import OUT_DIR, render, stale

ROOT = Path(__file__).resolve().parents[2]
TYPES = list(schemas.RECORD_TYPES)


# ----------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("record_type", TYPES)
def test_round_trip(record_type: str) -> None:
    rec = EXAMPLES[record_type]
    raw = schemas.encode(rec)
    assert isinstance(raw, bytes)
    back = schemas.decode(raw)
    assert back == rec
    assert type(back) is type(rec)
    assert schemas.encode(back) == raw  # stable bytes
    assert schemas.decode(raw.decode()) == rec  # str input
    assert schemas.decode(bytearray(raw)) == rec
    assert schemas.decode(memoryview(raw)) == rec
    assert schemas.decode(raw, type(rec)) == rec
    d = schemas.to_dict(rec)
    assert d == rec.to_dict() == orjson.loads(raw)
    assert schemas.from_dict(d) == rec
    assert type(rec).from_dict(d) == rec
    assert d["type"] == record_type == rec.TYPE
    assert d["schema_version"] == schemas.SCHEMA_VERSION
    assert list(d)[:2] == ["type", "schema_version"]  # discriminator first
    assert raw == orjson.dumps(orjson.loads(raw))  # compact


def test_typed_decoders() -> None:
    pairs = [
        (schemas.decode_impression, "impression"),
        (schemas.decode_click, "click"),
        (schemas.decode_dwell, "dwell"),
        (schemas.decode_list_outcome, "list_outcome"),
        (schemas.decode_transition, "transition"),
        (schemas.decode_snapshot_header, "snapshot_header"),
        (schemas.decode_dead_letter, "dead_letter"),
    ]
    for decoder, record_type in pairs:
        assert decoder(schemas.encode(EXAMPLES[record_type])) == EXAMPLES[record_type]


@pytest.mark.parametrize("n_items,n_features", [(1, 0), (20, 8), (1000, 4), (3, 1024)])
def test_round_trip_shapes(n_items: int, n_features: int) -> None:
    imp = make_impression(n_items, n_features, seed=n_items)
    assert schemas.decode(schemas.encode(imp)) == imp


def test_nested_types_round_trip() -> None:
    state = IMPRESSION.list_state()
    assert isinstance(state, ListState)
    assert ListState.from_dict(state.to_dict()) == state
    assert Item.from_dict(IMPRESSION.items[1].to_dict()) == IMPRESSION.items[1]
    assert Labels.from_dict(TRANSITION.labels.to_dict()) == TRANSITION.labels
    assert "type" not in state.to_dict()


def test_done_transition_round_trip() -> None:
    t = dataclasses.replace(TRANSITION, next_state=None, done=True)
    raw = schemas.encode(t)
    assert orjson.loads(raw)["next_state"] is None
    assert schemas.decode(raw) == t


# ----------------------------------------------------------------------------------- normalization
def test_ints_in_float_fields_become_floats() -> None:
    d = IMPRESSION.to_dict()
    d["items"][0]["features"] = [1, 0, -2, 3]
    d["weights"] = [1, 0]
    d["user_features"] = [0, 1.5, 2, 3]
    imp = schemas.decode(orjson.dumps(d), Impression)
    assert imp.items[0].features == (1.0, 0.0, -2.0, 3.0)
    assert all(type(x) is float for x in imp.items[0].features + imp.weights + imp.user_features)
    assert schemas.decode(schemas.encode(imp)) == imp


def test_version_1_impression_reads_as_version_2_without_propensity() -> None:
    d = IMPRESSION.to_dict()
    del d["log_propensity"]
    d["schema_version"] = 1
    old = schemas.decode(orjson.dumps(d), Impression)
    assert old.log_propensity is None and old.schema_version == 2
    assert old == dataclasses.replace(IMPRESSION, log_propensity=None)
    assert orjson.loads(schemas.encode(old))["log_propensity"] is None  # re-encoded as version 2
    # nested in a list outcome too
    outcome = schemas.examples.LIST_OUTCOME.to_dict()
    outcome["impression"] = d
    assert schemas.decode_list_outcome(orjson.dumps(outcome)).impression == old
    # the field is validated on construction as on decoding, naming it
    assert IMPRESSION.log_propensity == 0.6277
    with pytest.raises(SchemaError) as info:
        dataclasses.replace(IMPRESSION, log_propensity=float("nan"))
    assert info.value.field == "log_propensity"


def test_python_construction_validates_and_normalizes() -> None:
    c = Click(request_id="r", user_id="u", item_id="i", position=2, ts_ms=5)
    assert c.type == "click" and c.schema_version == schemas.SCHEMA_VERSION == 2
    it = Item(item_id="a", position=0, features=[1, 2.5])  # type: ignore[arg-type]
    assert it.features == (1.0, 2.5)
    with pytest.raises(SchemaError) as info:
        Click(request_id="r", user_id="u", item_id="i", position=True, ts_ms=5)
    assert info.value.field == "position"
    with pytest.raises(SchemaError) as info:
        Item(item_id="a", position=0, features=(1.0, float("nan")))
    assert info.value.field == "features[1]"
    items = (Item("a", 0, (1.0,)), Item("b", 2, (1.0,)))
    with pytest.raises(SchemaError) as info:
        ListState(request_id="r", ts_ms=0, user_features=(), history=(), context=(), items=items)
    assert info.value.field == "items[1].position"
    # items may also be given as JSON dicts
    s = ListState(
        request_id="r",
        ts_ms=0,
        user_features=(),
        history=(),
        context=(),
        items=({"item_id": "a", "position": 0, "features": [1]},),  # type: ignore[arg-type]
    )
    assert s.items == (Item("a", 0, (1.0,)),)
    with pytest.raises(SchemaError) as info:
        dataclasses.replace(TRANSITION, done=True)
    assert info.value.field == "next_state"
    with pytest.raises(SchemaError) as info:
        dataclasses.replace(IMPRESSION, weights=(0.5, 0.6))
    assert info.value.field == "weights"


def test_frozen_slotted() -> None:
    for rec in EXAMPLES.values():
        assert dataclasses.is_dataclass(rec)
        assert not hasattr(rec, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            rec.type = "x"  # type: ignore[misc,assignment]
    with pytest.raises(dataclasses.FrozenInstanceError):
        IMPRESSION.items[0].position = 3  # type: ignore[misc]
    assert isinstance(IMPRESSION.items, tuple) and isinstance(IMPRESSION.weights, tuple)
    assert hash(schemas.examples.CLICK) == hash(schemas.decode(schemas.encode(schemas.examples.CLICK)))
    for rec in EXAMPLES.values():
        assert pickle.loads(pickle.dumps(rec)) == rec
        assert copy.deepcopy(rec) == rec


def test_from_dict_accepts_any_mapping() -> None:
    from collections import OrderedDict
    from types import MappingProxyType

    d = schemas.examples.CLICK.to_dict()
    assert schemas.from_dict(OrderedDict(d)) == schemas.examples.CLICK
    assert Click.from_dict(MappingProxyType(d)) == schemas.examples.CLICK


def test_decode_does_not_mutate_or_alias_inputs() -> None:
    for rec in EXAMPLES.values():
        d = rec.to_dict()
        before = copy.deepcopy(d)
        out = schemas.from_dict(d)
        assert d == before
        raw = bytearray(schemas.encode(rec))
        raw_before = bytes(raw)
        schemas.decode(raw)
        assert bytes(raw) == raw_before
        # changing the input afterwards does not change the decoded object
        _scribble(d)
        assert out == rec
    h = EXAMPLES["snapshot_header"].to_dict()
    header = schemas.from_dict(h, SnapshotHeader)
    h["model_config"]["hidden_sizes"].append(1)
    assert header.model_config == EXAMPLES["snapshot_header"].model_config  # type: ignore[union-attr]


def _scribble(value: Any) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _scribble(v)
        value["scribbled"] = True
    elif isinstance(value, list):
        for v in value:
            _scribble(v)
        value.append("scribbled")


def test_unknown_fields_are_ignored() -> None:
    d = TRANSITION.to_dict()
    d["future_field"] = {"nested": [1, 2, 3]}
    d["state"]["items"][0]["popularity"] = 0.3
    d["labels"]["purchases"] = [0, 0, 1]
    assert schemas.from_dict(d) == TRANSITION
    assert b"future_field" not in schemas.encode(schemas.from_dict(d))


def test_encode_rejects_non_records() -> None:
    with pytest.raises(TypeError):
        schemas.encode(IMPRESSION.list_state())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        schemas.encode({"type": "click"})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        schemas.decode(b"{}", ListState)


def test_schema_error() -> None:
    e = SchemaError("items[3].features[2]", "must be finite")
    assert isinstance(e, ValueError)
    assert (e.field, e.reason) == ("items[3].features[2]", "must be finite")
    assert str(e) == "items[3].features[2]: must be finite"
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.field, e2.reason, str(e2)) == (e.field, e.reason, str(e))


# ------------------------------------------------------------------------------------- transition_id
def test_transition_id_deterministic() -> None:
    a = schemas.transition_id("user-1", "req-1", "req-2")
    assert a == schemas.transition_id("user-1", "req-1", "req-2")
    assert len(a) == 32 and all(c in "0123456789abcdef" for c in a)
    others = {
        schemas.transition_id("user-1", "req-1", None),
        schemas.transition_id("user-1", "req-1", ""),
        schemas.transition_id("user-1", "req-2", "req-1"),
        schemas.transition_id("user-2", "req-1", "req-2"),
        schemas.transition_id("user-1r", "eq-1", "req-2"),  # no concatenation ambiguity
        schemas.transition_id("user-1", "req-1", "req-2x"),
    }
    assert a not in others and len(others) == 6
    # the documented construction (netstrings over UTF-8), so other languages can reproduce it
    import hashlib

    expected = hashlib.sha256(b"6:user-1,5:req-1,5:req-2,").hexdigest()[:32]
    assert a == expected
    assert schemas.transition_id("ü", "r", None) == hashlib.sha256(b"2:\xc3\xbc,1:r,~").hexdigest()[:32]
    assert TRANSITION.transition_id == schemas.transition_id("user-1842", "req-7f3a9c", "req-8b1d04")


# ------------------------------------------------------------------------------------- dead letters
def test_make_dead_letter() -> None:
    err = SchemaError("position", "expected integer, got boolean")
    dl = schemas.make_dead_letter(
        b'{"bad": \xff}', source_topic="paperec.clicks", stage="streams.decode", error=err, key=b"k\xff"
    )
    assert dl.raw == '{"bad": \ufffd}' and not dl.raw_truncated
    assert dl.key == "k\ufffd"
    assert (dl.error_field, dl.reason) == ("position", "expected integer, got boolean")
    assert dl.source_partition == -1 and dl.source_offset == -1
    assert abs(dl.rejected_at_ms - time.time() * 1000) < 60_000
    assert schemas.decode(schemas.encode(dl)) == dl

    big = "é".encode() * 40_000  # 80,000 bytes
    dl = schemas.make_dead_letter(big, source_topic="t", stage="s", error=KeyError("x"))
    assert dl.raw_truncated
    assert len(dl.raw.encode()) == 64 * 1024 and dl.raw == "é" * (32 * 1024)
    assert dl.error_field is None and dl.reason == "KeyError: 'x'"
    assert schemas.decode(schemas.encode(dl)) == dl

    for n in (0, 1, 65535, 65536, 65537, 65539, 65540, 300_000):
        data = b"a" * n
        dl = schemas.make_dead_letter(data, source_topic="t", stage="s", reason="r")
        assert dl.raw_truncated == (n > 65536)
        assert dl.raw == "a" * min(n, 65536)
    dl = schemas.make_dead_letter(
        None, source_topic="t" * 300, stage="s", reason="r" * 10_000, key="k" * 5000
    )
    assert dl.raw == "" and len(dl.source_topic) == 255 and len(dl.reason) == 4096
    assert dl.key is not None and len(dl.key) == 1024
    # multi-byte character straddling the cut is dropped, not mangled
    dl = schemas.make_dead_letter(b"a" * 65535 + "é".encode(), source_topic="t", stage="s")
    assert dl.raw == "a" * 65535 and dl.raw_truncated


# ---------------------------------------------------------------------------------- JSON Schema
@pytest.mark.parametrize("record_type", TYPES)
def test_examples_validate_against_json_schema(record_type: str) -> None:
    schema = json.loads((OUT_DIR / f"{record_type}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(EXAMPLES[record_type].to_dict())
    # other record types do not validate against this one
    for other in TYPES:
        if other != record_type:
            assert not validator.is_valid(EXAMPLES[other].to_dict())


def test_json_schema_files_are_up_to_date() -> None:
    assert sorted(p.name for p in OUT_DIR.glob("*.schema.json")) == sorted(f"{t}.schema.json" for t in TYPES)
    assert stale() == [], "run: python -m schemas.jsonschema_export"
    for t in TYPES:
        assert (OUT_DIR / f"{t}.schema.json").read_text() == render(t)


# -------------------------------------------------------------------------------------------- docs
def test_docs_show_the_examples() -> None:
    text = (ROOT / "docs" / "schemas.md").read_text()
    for record_type in TYPES:
        assert example_json(record_type) in text, f"docs/schemas.md: stale {record_type} example"
    header = EXAMPLES["snapshot_header"]
    assert header.signature in text  # type: ignore[union-attr]
    assert schemas.canonical_header_bytes(header).decode() in text  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ dependencies
def test_schemas_imports_no_other_project_package() -> None:
    code = (
        "import sys, schemas, schemas.examples, schemas.jsonschema_export\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('streams', 'learner', 'actor_service', 'paperec', 'jsonschema', 'numpy', 'torch'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""


def test_decode_speed_smoke() -> None:
    """Loose bound only (CI machines vary); see schemas/bench.py for real numbers."""
    raw = schemas.encode(make_impression(20, 8))
    t = time.perf_counter()
    for _ in range(500):
        schemas.decode(raw)
    assert 500 / (time.perf_counter() - t) > 1000


@pytest.mark.parametrize(
    "cls", [Impression, Click, Dwell, ListOutcome, Transition, SnapshotHeader, DeadLetter]
)
def test_record_types_registry(cls: type) -> None:
    assert schemas.RECORD_TYPES[cls.TYPE] is cls  # type: ignore[attr-defined]
