"""A table of malformed records, each asserting the exact ``field`` the decoder reports."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import jsonschema
import orjson
import pytest

import schemas
from schemas import SchemaError
from schemas.examples import EXAMPLES, make_impression
from schemas.jsonschema_export import record_schema

_DELETE = object()
_TOKEN = re.compile(r"[^.\[\]]+|\[\d+\]")


def _tokens(path: str) -> list[str | int]:
    return [int(t[1:-1]) if t.startswith("[") else t for t in _TOKEN.findall(path)]


def mutate(d: Any, path: str, value: Any) -> None:
    *head, last = _tokens(path)
    for t in head:
        d = d[t]
    if value is _DELETE:
        del d[last]
    else:
        d[last] = value


def base(record_type: str) -> dict[str, Any]:
    if record_type == "impression":  # 5 items x 3 features, objectives [click, dwell]
        return make_impression(5, 3, seed=7).to_dict()
    return copy.deepcopy(EXAMPLES[record_type].to_dict())


# (record type, path to change, new value or _DELETE, expected SchemaError.field)
CASES: list[tuple[str, str, Any, str]] = [
    # --- envelope
    ("click", "type", _DELETE, "type"),
    ("click", "type", "clack", "type"),
    ("click", "type", 5, "type"),
    ("click", "type", None, "type"),
    ("click", "schema_version", _DELETE, "schema_version"),
    ("click", "schema_version", 3, "schema_version"),
    ("click", "schema_version", 0, "schema_version"),
    ("click", "schema_version", True, "schema_version"),
    ("click", "schema_version", 1.0, "schema_version"),
    ("click", "schema_version", "1", "schema_version"),
    # --- impression scalars
    ("impression", "request_id", _DELETE, "request_id"),
    ("impression", "request_id", "", "request_id"),
    ("impression", "request_id", "r" * 129, "request_id"),
    ("impression", "request_id", 5, "request_id"),
    ("impression", "user_id", None, "user_id"),
    ("impression", "user_id", ["u"], "user_id"),
    ("impression", "ts_ms", -1, "ts_ms"),
    ("impression", "ts_ms", True, "ts_ms"),
    ("impression", "ts_ms", False, "ts_ms"),
    ("impression", "ts_ms", 1.0, "ts_ms"),
    ("impression", "ts_ms", "1", "ts_ms"),
    ("impression", "ts_ms", 2**63, "ts_ms"),
    ("impression", "ts_ms", 2**64 - 1, "ts_ms"),
    ("impression", "snapshot_version", -1, "snapshot_version"),
    ("impression", "snapshot_version", _DELETE, "snapshot_version"),
    # --- objectives, weights, noise
    ("impression", "objectives", [], "objectives"),
    ("impression", "objectives", "click", "objectives"),
    ("impression", "objectives", ["click", "click"], "objectives[1]"),
    ("impression", "objectives", ["click", ""], "objectives[1]"),
    ("impression", "objectives", ["click", 3], "objectives[1]"),
    ("impression", "weights", [1.0], "weights"),
    ("impression", "weights", [0.7, 0.7], "weights"),
    ("impression", "weights", [0.5, 0.4], "weights"),
    ("impression", "weights", [1.2, -0.2], "weights[1]"),
    ("impression", "weights", [0.5, True], "weights[1]"),
    ("impression", "weights", [0.5, "0.5"], "weights[1]"),
    ("impression", "weights", {"click": 1.0}, "weights"),
    ("impression", "weights", _DELETE, "weights"),
    ("impression", "noise", [0.1], "noise"),
    ("impression", "noise", [0.1, None], "noise[1]"),
    ("impression", "noise", [0.1, [0.2]], "noise[1]"),
    ("impression", "log_propensity", "0.5", "log_propensity"),
    ("impression", "log_propensity", True, "log_propensity"),
    ("impression", "log_propensity", [0.5], "log_propensity"),
    ("impression", "log_propensity", 1e300, "log_propensity"),
    ("impression", "log_propensity", -(2**64), "log_propensity"),
    ("list_outcome", "impression.log_propensity", "x", "impression.log_propensity"),
    # --- rollout arm (issue 18)
    ("impression", "arm", "control", "arm"),
    ("impression", "arm", "", "arm"),
    ("impression", "arm", 1, "arm"),
    ("impression", "arm", ["canary"], "arm"),
    ("list_outcome", "impression.arm", "Holdout", "impression.arm"),
    ("transition", "arm", "treatment", "arm"),
    ("transition", "arm", True, "arm"),
    ("transition", "log_propensity", "0.6", "log_propensity"),
    ("transition", "log_propensity", 1e300, "log_propensity"),
    # --- state vectors
    ("impression", "user_features", [0.0] * 1025, "user_features"),
    ("impression", "user_features", [1.0, "a"], "user_features[1]"),
    ("impression", "user_features", [1.0, 2, False], "user_features[2]"),
    ("impression", "user_features", None, "user_features"),
    ("impression", "history", [""], "history[0]"),
    ("impression", "history", ["a", 1], "history[1]"),
    ("impression", "history", ["h" * 129], "history[0]"),
    ("impression", "history", ["a"] * 513, "history"),
    ("impression", "context", [0.5] * 257, "context"),
    ("impression", "context", [0.5, {}], "context[1]"),
    # --- items
    ("impression", "items", [], "items"),
    ("impression", "items", "x", "items"),
    ("impression", "items", None, "items"),
    ("impression", "items[3]", 5, "items[3]"),
    ("impression", "items[3]", [], "items[3]"),
    ("impression", "items[3].features[2]", "x", "items[3].features[2]"),
    ("impression", "items[3].features[2]", True, "items[3].features[2]"),
    ("impression", "items[3].features[2]", None, "items[3].features[2]"),
    ("impression", "items[3].features", [1.0], "items[3].features"),
    ("impression", "items[3].features", "1.0", "items[3].features"),
    ("impression", "items[3].features", _DELETE, "items[3].features"),
    ("impression", "items[3].position", 4, "items[3].position"),
    ("impression", "items[3].position", -1, "items[3].position"),
    ("impression", "items[3].position", True, "items[3].position"),
    ("impression", "items[3].position", 3.0, "items[3].position"),
    ("impression", "items[3].position", _DELETE, "items[3].position"),
    ("impression", "items[3].item_id", "item-7-1", "items[3].item_id"),  # duplicate of items[1]
    ("impression", "items[3].item_id", "", "items[3].item_id"),
    ("impression", "items[3].item_id", _DELETE, "items[3].item_id"),
    ("impression", "items[0].position", 1, "items[0].position"),
    # --- click / dwell
    ("click", "position", -1, "position"),
    ("click", "position", 1000, "position"),
    ("click", "position", True, "position"),
    ("click", "item_id", _DELETE, "item_id"),
    ("click", "ts_ms", 1.5, "ts_ms"),
    ("dwell", "dwell_ms", 86_400_001, "dwell_ms"),
    ("dwell", "dwell_ms", -1, "dwell_ms"),
    ("dwell", "dwell_ms", _DELETE, "dwell_ms"),
    # --- list outcome
    ("list_outcome", "clicks", [0, 2, 0], "clicks[1]"),
    ("list_outcome", "clicks", [0, 1], "clicks"),
    ("list_outcome", "clicks", [0, True, 0], "clicks[1]"),
    ("list_outcome", "dwell_ms", [-1, 0, 0], "dwell_ms[0]"),
    ("list_outcome", "dwell_ms", [0, 0, 0, 0], "dwell_ms"),
    ("list_outcome", "complete", 1, "complete"),
    ("list_outcome", "complete", _DELETE, "complete"),
    ("list_outcome", "closed_at_ms", -5, "closed_at_ms"),
    ("list_outcome", "request_id", "req-other", "request_id"),
    ("list_outcome", "user_id", "user-other", "user_id"),
    ("list_outcome", "ts_ms", 1, "ts_ms"),
    ("list_outcome", "impression", _DELETE, "impression"),
    ("list_outcome", "impression", [], "impression"),
    ("list_outcome", "impression.type", "click", "impression.type"),
    ("list_outcome", "impression.schema_version", 9, "impression.schema_version"),
    ("list_outcome", "impression.items[0].features[0]", "x", "impression.items[0].features[0]"),
    ("list_outcome", "impression.items[2].position", 7, "impression.items[2].position"),
    ("list_outcome", "impression.weights", [0.9, 0.9], "impression.weights"),
    # --- transition
    ("transition", "done", True, "next_state"),
    ("transition", "next_state", None, "next_state"),
    ("transition", "done", "false", "done"),
    ("transition", "state", _DELETE, "state"),
    ("transition", "state", None, "state"),
    ("transition", "state.items[1].position", 0, "state.items[1].position"),
    ("transition", "state.request_id", "", "state.request_id"),
    ("transition", "next_state.items[0].item_id", "", "next_state.items[0].item_id"),
    ("transition", "next_state.user_features", [1e15, "x"], "next_state.user_features[1]"),
    # --- numbers beyond the float32-safe bound (schemas.MAX_ABS_NUMBER = 1e15)
    ("impression", "items[3].features[2]", 1e300, "items[3].features[2]"),
    ("impression", "items[3].features[2]", 2**64, "items[3].features[2]"),
    ("impression", "items[3].features[2]", -1.000001e15, "items[3].features[2]"),
    ("impression", "user_features", [0.5, 1e16], "user_features[1]"),
    ("impression", "context", [-(2**63)], "context[0]"),
    ("impression", "noise", [1e20, 0.0], "noise[0]"),
    ("transition", "reward", [-1.0, 1e300], "reward[1]"),
    ("transition", "state.items[0].features[0]", 3.5e38, "state.items[0].features[0]"),
    ("transition", "next_state.context", [1e300], "next_state.context[0]"),
    ("list_outcome", "impression.items[1].features[0]", -1e300, "impression.items[1].features[0]"),
    ("transition", "labels", "x", "labels"),
    ("transition", "labels.clicks", [0, 1], "labels.clicks"),
    ("transition", "labels.clicks", [0, 1, 3], "labels.clicks[2]"),
    ("transition", "labels.dwell_ms", [0, 1], "labels.dwell_ms"),
    ("transition", "labels.dwell_ms", _DELETE, "labels.dwell_ms"),
    ("transition", "action", [0.5, 0.6], "action"),
    ("transition", "action", [0.5], "action"),
    ("transition", "reward", [1.0], "reward"),
    ("transition", "reward", [1.0, None], "reward[1]"),
    ("transition", "objectives", ["click"], "action"),  # K = 1 now: action has 2 entries
    ("transition", "transition_id", "", "transition_id"),
    ("transition", "snapshot_version", -3, "snapshot_version"),
    # --- snapshot header
    ("snapshot_header", "snapshot_version", 0, "snapshot_version"),
    ("snapshot_header", "payload_sha256", "A" * 64, "payload_sha256"),
    ("snapshot_header", "payload_sha256", "a" * 63, "payload_sha256"),
    ("snapshot_header", "signature", "xyz", "signature"),
    ("snapshot_header", "signature", _DELETE, "signature"),
    ("snapshot_header", "payload_format", "pickle", "payload_format"),
    ("snapshot_header", "model_config", [], "model_config"),
    ("snapshot_header", "model_config", None, "model_config"),
    ("snapshot_header", "chunk_count", 0, "chunk_count"),
    ("snapshot_header", "payload_size", -1, "payload_size"),
    ("snapshot_header", "watermark_ms", True, "watermark_ms"),
    ("snapshot_header", "model_config.hidden_sizes[1]", 2**64 - 1, "model_config.hidden_sizes[1]"),
    ("snapshot_header", "global_weights", [], "global_weights"),
    ("snapshot_header", "global_weights", 0.5, "global_weights"),
    ("snapshot_header", "global_weights", [0.6, 0.6], "global_weights"),
    ("snapshot_header", "global_weights", [1.2, -0.2], "global_weights[1]"),
    ("snapshot_header", "global_weights", [0.5, "0.5"], "global_weights[1]"),
    ("snapshot_header", "global_weights", [1.0 / 65] * 65, "global_weights"),
    # --- rollout decision (issue 18)
    ("rollout_decision", "decision", "retreat", "decision"),
    ("rollout_decision", "decision", _DELETE, "decision"),
    ("rollout_decision", "decision_id", "", "decision_id"),
    ("rollout_decision", "decided_at_ms", -1, "decided_at_ms"),
    ("rollout_decision", "version", 0, "version"),
    ("rollout_decision", "incumbent", _DELETE, "incumbent"),
    ("rollout_decision", "incumbent", 0, "incumbent"),
    ("rollout_decision", "incumbent", 13, "version"),  # a rolled-back version still served
    ("rollout_decision", "candidate", "13", "candidate"),
    ("rollout_decision", "canary_share", 1.5, "canary_share"),
    ("rollout_decision", "canary_share", True, "canary_share"),
    ("rollout_decision", "canary_started_at_ms", "now", "canary_started_at_ms"),
    ("rollout_decision", "reason", None, "reason"),
    ("rollout_decision", "reason", "x" * 2049, "reason"),
    ("rollout_decision", "evidence", [1.0], "evidence"),
    ("rollout_decision", "evidence.canary_lists", "low", "evidence.canary_lists"),
    ("rollout_decision", "evidence.canary_lists", 1e300, "evidence.canary_lists"),
    ("rollout_decision", "rejected", [], "rejected"),  # a rollback lists its version
    ("rollout_decision", "rejected", [13, 0], "rejected[1]"),
    ("rollout_decision", "rejected", list(range(1, 66)), "rejected"),
    ("rollout_decision", "key_id", _DELETE, "key_id"),
    ("rollout_decision", "key_id", "a:b", "key_id"),
    ("rollout_decision", "signature", "0" * 63, "signature"),
    # --- dead letter
    ("dead_letter", "source_partition", -2, "source_partition"),
    ("dead_letter", "source_offset", -2, "source_offset"),
    ("dead_letter", "key", 5, "key"),
    ("dead_letter", "error_field", 5, "error_field"),
    ("dead_letter", "stage", "", "stage"),
    ("dead_letter", "reason", _DELETE, "reason"),
    ("dead_letter", "raw", None, "raw"),
    ("dead_letter", "raw", "x" * (64 * 1024 + 1), "raw"),
    ("dead_letter", "raw", "é" * (32 * 1024 + 1), "raw"),  # 32769 chars, 65538 bytes
    ("dead_letter", "raw_truncated", "no", "raw_truncated"),
    ("dead_letter", "rejected_at_ms", _DELETE, "rejected_at_ms"),
]

# Cases that are valid after all (documenting what is accepted)
VALID: list[tuple[str, str, Any]] = [
    ("impression", "items[3].features[2]", 1e15),  # the bound itself is accepted
    ("impression", "items[3].features[2]", -(10**15)),  # ints within the bound too
    ("impression", "items[3].features[2]", 7),  # ints become floats
    ("impression", "unknown_extra_field", {"x": [1, 2]}),  # forward compatibility
    ("impression", "items[3].extra", True),
    ("impression", "snapshot_version", 0),  # cold start
    ("impression", "history", []),
    ("impression", "weights", [0.5004, 0.5]),  # within 1e-3 of 1
    ("impression", "schema_version", 1),  # version 1 is still read
    ("impression", "log_propensity", _DELETE),  # as version-1 records have it
    ("impression", "log_propensity", None),  # served without noise
    ("impression", "log_propensity", -17),
    ("impression", "log_propensity", 1e15),
    ("dead_letter", "key", None),
    ("dead_letter", "error_field", None),
    ("dead_letter", "raw", "é" * (32 * 1024)),  # exactly 64 KiB in UTF-8
    ("list_outcome", "closed_at_ms", 0),
    ("transition", "reward", [-1.0, 1e15]),
    ("impression", "arm", None),  # served without a guarded rollout
    ("impression", "arm", _DELETE),  # as older records have it
    ("impression", "arm", "holdout"),
    ("impression", "arm", "canary"),
    ("transition", "arm", _DELETE),
    ("transition", "log_propensity", _DELETE),
    ("transition", "log_propensity", None),
    ("snapshot_header", "global_weights", [1]),  # one objective
    ("rollout_decision", "evidence", {}),
    ("rollout_decision", "canary_share", 0),
]


@pytest.mark.parametrize(("record_type", "path", "value", "field"), CASES)
def test_malformed_field_reported(record_type: str, path: str, value: Any, field: str) -> None:
    d = base(record_type)
    mutate(d, path, value)
    raw = dumps(d)
    with pytest.raises(SchemaError) as info:
        schemas.decode(raw)
    assert info.value.field == field, str(info.value)
    assert str(info.value) == f"{field}: {info.value.reason}"
    # from_dict reports the same field
    with pytest.raises(SchemaError) as info2:
        schemas.from_dict(d)
    assert info2.value.field == field


def dumps(d: Any) -> bytes:
    try:
        return orjson.dumps(d)
    except orjson.JSONEncodeError:  # ints beyond 64 bits: the stdlib writes them
        return json.dumps(d, allow_nan=False).encode()


@pytest.mark.parametrize(("record_type", "path", "value"), VALID)
def test_still_valid(record_type: str, path: str, value: Any) -> None:
    d = base(record_type)
    mutate(d, path, value)
    rec = schemas.decode(dumps(d))
    assert schemas.decode(schemas.encode(rec)) == rec


RAW_CASES: list[tuple[bytes | str, str]] = [
    (b"", "$"),
    (b"   ", "$"),
    (b"\xff\xfe", "$"),
    (b'{"type":"click","user_id":"\xff"}', "$"),  # invalid UTF-8 inside a string
    (b"\xef\xbb\xbf{}", "$"),  # BOM
    (b"[]", "$"),
    (b"[1, 2]", "$"),
    (b"null", "$"),
    (b"1", "$"),
    (b"true", "$"),
    (b'"click"', "$"),
    (b"NaN", "$"),
    (b'{"type":"click","position":NaN}', "$"),
    (b'{"type":"click","position":Infinity}', "$"),
    (b'{"type":"click","position":-Infinity}', "$"),
    (b'{"type":"click","ts_ms":1e999}', "$"),
    (b'{"type":"click"', "$"),
    (b"{'type':'click'}", "$"),
    (b"[" * 5000, "$"),
    (b"{}", "type"),
    (b'{"schema_version":1}', "type"),
    (b'{"type":"transition"}', "schema_version"),
    (b'{"type":"click","schema_version":1}', "request_id"),
    (b'{"type":"click","schema_version":99999999999999999999999}', "schema_version"),
    (
        b'{"type":"click","schema_version":1,"request_id":"r","user_id":"u","item_id":"i","position":1,'
        b'"ts_ms":123456789012345678901234567890}',
        "ts_ms",
    ),
    ("\ud800", "$"),  # lone surrogate in a str input
    ('{"type":"click","schema_version":1,"request_id":"\ud800"}', "$"),
]


@pytest.mark.parametrize(("raw", "field"), RAW_CASES)
def test_raw_inputs(raw: bytes | str, field: str) -> None:
    with pytest.raises(SchemaError) as info:
        schemas.decode(raw)
    assert info.value.field == field, str(info.value)


@pytest.mark.parametrize("raw", [None, 5, 1.5, object(), ["{}"], {"type": "click"}])
def test_non_bytes_input_is_a_schema_error(raw: Any) -> None:
    with pytest.raises(SchemaError) as info:
        schemas.decode(raw)
    assert info.value.field == "$"


TYPED: list[tuple[Callable[[Any], Any], str]] = [
    (schemas.decode_click, "impression"),
    (schemas.decode_impression, "click"),
    (schemas.decode_dwell, "click"),
    (schemas.decode_list_outcome, "impression"),
    (schemas.decode_transition, "list_outcome"),
    (schemas.decode_snapshot_header, "dead_letter"),
    (schemas.decode_dead_letter, "snapshot_header"),
    (schemas.decode_rollout_decision, "snapshot_header"),
    (schemas.decode_snapshot_header, "rollout_decision"),
]


@pytest.mark.parametrize(("decoder", "other_type"), TYPED)
def test_typed_decoder_rejects_other_type(decoder: Callable[[Any], Any], other_type: str) -> None:
    with pytest.raises(SchemaError) as info:
        decoder(schemas.encode(EXAMPLES[other_type]))
    assert info.value.field == "type"


def test_from_dict_python_values() -> None:
    """from_dict also receives Python values JSON cannot carry: NaN, inf, huge ints, odd types."""
    cases: list[tuple[str, Any, str]] = [
        ("items[3].features[2]", float("nan"), "items[3].features[2]"),
        ("items[3].features[2]", float("inf"), "items[3].features[2]"),
        ("items[3].features[2]", 10**400, "items[3].features[2]"),
        ("user_features", [float("-inf")], "user_features[0]"),
        ("weights", [float("nan"), 1.0], "weights[0]"),
        ("ts_ms", 10**400, "ts_ms"),
        ("items[3].features", {1.0, 2.0, 3.0}, "items[3].features"),
        ("items", {"a": 1}, "items"),
        ("history", [object()], "history[0]"),
        ("request_id", b"bytes", "request_id"),
    ]
    for path, value, field in cases:
        d = base("impression")
        mutate(d, path, value)
        with pytest.raises(SchemaError) as info:
            schemas.from_dict(d)
        assert info.value.field == field, (path, str(info.value))
    h = base("snapshot_header")
    h["model_config"] = {"x": {"y": [float("nan")]}}
    with pytest.raises(SchemaError, match=r"model_config\.x\.y\[0\]"):
        schemas.from_dict(h)
    h["model_config"] = {1: 2}
    with pytest.raises(SchemaError) as info:
        schemas.from_dict(h)
    assert info.value.field == "model_config"
    deep: dict[str, Any] = {}
    cur = deep
    for _ in range(2000):
        cur["a"] = {}
        cur = cur["a"]
    h["model_config"] = deep
    with pytest.raises(SchemaError) as info:
        schemas.from_dict(h)
    assert info.value.field.startswith("model_config.a.a")


def test_json_schema_agrees_on_malformed_inputs() -> None:
    """Where JSON Schema can express a constraint, it rejects what the decoder rejects."""
    expressible_only_in_code = {
        # (record type, path) whose constraint JSON Schema cannot state
        ("impression", "weights"),
        ("impression", "noise"),
        ("impression", "items[3].features"),
        ("impression", "items[3].position"),
        ("impression", "items[3].item_id"),
        ("impression", "items[0].position"),
        ("impression", "schema_version"),
        ("impression", "ts_ms"),
        ("click", "schema_version"),
        ("click", "ts_ms"),
        ("list_outcome", "clicks"),
        ("list_outcome", "dwell_ms"),
        ("list_outcome", "request_id"),
        ("list_outcome", "user_id"),
        ("list_outcome", "ts_ms"),
        ("list_outcome", "impression.weights"),
        ("list_outcome", "impression.items[2].position"),
        ("transition", "labels.clicks"),
        ("transition", "labels.dwell_ms"),
        ("transition", "action"),
        ("transition", "reward"),
        ("transition", "objectives"),
        ("transition", "state.items[1].position"),
        ("dead_letter", "raw"),
        ("snapshot_header", "model_config.hidden_sizes[1]"),
        ("snapshot_header", "global_weights"),  # the sum
        ("rollout_decision", "incumbent"),  # agreement of decision and state
        ("rollout_decision", "rejected"),
    }
    checked = 0
    for record_type, path, value, _field in CASES:
        d = base(record_type)
        mutate(d, path, value)
        validator = jsonschema.Draft202012Validator(record_schema(record_type))
        if validator.is_valid(d):
            assert (record_type, path) in expressible_only_in_code, (record_type, path, value)
        else:
            checked += 1
    assert checked > 100
