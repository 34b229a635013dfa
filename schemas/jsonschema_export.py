"""Export JSON Schema (draft 2020-12) files describing the records, one per top-level type.

    python -m schemas.jsonschema_export            # (re)write schemas/jsonschema/<type>.schema.json
    python -m schemas.jsonschema_export --check    # exit 1 if the checked-in files are stale

The files describe the same constraints as the Python validators as far as JSON Schema can. Not
expressible, and checked only by the decoder (each noted in the files' ``$comment``): positions
exactly 0..L-1 in order, unique item ids, equal feature-vector lengths, weights/action summing to 1,
equal lengths of per-objective and per-position arrays, equality of ListOutcome's ids with its
impression's, the UTF-8 byte limit of DeadLetter.raw. Also, JSON Schema counts ``1.0`` as an
integer; the decoder does not. Unknown extra properties are allowed (forward compatibility).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final

from schemas._model import SUPPORTED_SCHEMA_VERSIONS
from schemas.codec import RECORD_TYPES
from schemas.dead_letter import (
    MAX_ERROR_FIELD_LEN,
    MAX_KEY_LEN,
    MAX_RAW_BYTES,
    MAX_REASON_LEN,
    MAX_STAGE_LEN,
    MAX_TOPIC_LEN,
)
from schemas.events import (
    ARMS,
    MAX_CONTEXT,
    MAX_DWELL_MS,
    MAX_HISTORY,
    MAX_ITEM_FEATURES,
    MAX_ITEMS,
    MAX_OBJECTIVES,
    MAX_USER_FEATURES,
)
from schemas.rollout import DECISIONS, MAX_DECISION_REASON_LEN, MAX_EVIDENCE, MAX_REJECTED
from schemas.snapshot import KEY_ID_PATTERN, PAYLOAD_FORMAT
from schemas.validate import INT64_MAX, MAX_ABS_NUMBER, MAX_ID_LEN, MAX_JSON_DEPTH, SIMPLEX_TOLERANCE

DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"
OUT_DIR: Final = Path(__file__).resolve().parent / "jsonschema"

JSON = dict[str, Any]


# ------------------------------------------------------------------------------------ primitives
def _id(description: str) -> JSON:
    return {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN, "description": description}


def _str(description: str, max_length: int, min_length: int = 0) -> JSON:
    out: JSON = {"type": "string", "maxLength": max_length, "description": description}
    if min_length:
        out["minLength"] = min_length
    return out


def _int(description: str, minimum: int = 0, maximum: int = INT64_MAX) -> JSON:
    return {"type": "integer", "minimum": minimum, "maximum": maximum, "description": description}


def _ms(description: str) -> JSON:
    return _int(f"{description} (epoch milliseconds)")


def _numbers(description: str, max_items: int | None = None, minimum: float | None = None) -> JSON:
    # every number field is bounded by MAX_ABS_NUMBER (float32-safe, see schemas.validate)
    items: JSON = {
        "type": "number",
        "minimum": -MAX_ABS_NUMBER if minimum is None else minimum,
        "maximum": MAX_ABS_NUMBER,
    }
    out: JSON = {"type": "array", "items": items, "description": description}
    if max_items is not None:
        out["maxItems"] = max_items
    return out


def _ints(description: str, minimum: int, maximum: int) -> JSON:
    return {
        "type": "array",
        "items": {"type": "integer", "minimum": minimum, "maximum": maximum},
        "maxItems": MAX_ITEMS,
        "description": description,
    }


def _ref(name: str, description: str) -> JSON:
    return {"$ref": f"#/$defs/{name}", "description": description}


def _object(properties: JSON, description: str, **extra: Any) -> JSON:
    return {
        "type": "object",
        "description": description,
        "required": list(properties),
        "properties": properties,
        "additionalProperties": True,
        **extra,
    }


def _record(record_type: str, properties: JSON, description: str, **extra: Any) -> JSON:
    envelope: JSON = {
        "type": {"const": record_type, "description": "record type discriminator"},
        "schema_version": {
            "type": "integer",
            "enum": sorted(SUPPORTED_SCHEMA_VERSIONS),
            "description": "schema version of this record",
        },
    }
    return _object({**envelope, **properties}, description, **extra)


def _optional(schema: JSON, *names: str) -> JSON:
    """``schema`` with the properties ``names`` no longer required (optional fields)."""
    return {**schema, "required": [r for r in schema["required"] if r not in names]}


# -------------------------------------------------------------------------------------- records
_OBJECTIVES: Final = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN},
    "minItems": 1,
    "maxItems": MAX_OBJECTIVES,
    "uniqueItems": True,
    "description": 'objective names, e.g. ["click", "dwell"]; K = their number',
}

_ITEM: Final = _object(
    {
        "item_id": _id("item id, unique within the list"),
        "position": _int("0-based position; must equal the item's index in the list", 0, MAX_ITEMS - 1),
        "features": _numbers("item feature vector (same length for all items of a list)", MAX_ITEM_FEATURES),
    },
    "one ranked item",
)


def _state_properties() -> JSON:
    return {
        "user_features": _numbers("user feature vector", MAX_USER_FEATURES),
        "history": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN},
            "maxItems": MAX_HISTORY,
            "description": "ids of items the user interacted with, most recent last",
        },
        "context": _numbers("request context features", MAX_CONTEXT),
        "items": {
            "type": "array",
            "items": {"$ref": "#/$defs/item"},
            "minItems": 1,
            "maxItems": MAX_ITEMS,
            "description": "the ranked list; positions exactly 0..L-1 in order, item ids unique",
        },
    }


_LIST_STATE: Final = _object(
    {
        "request_id": _id("id of the impression this state was ranked for"),
        "ts_ms": _ms("impression time"),
        **_state_properties(),
    },
    "what the actor saw when it ranked one list",
)

_ARM: Final = {
    "enum": [*ARMS, None],
    "description": "rollout arm that served the list (guarded rollout); null or absent without one",
}

_LIST_COMMENT: Final = (
    "Also checked by the decoder: items[i].position == i, unique items[].item_id, all items[].features"
    " of the same length."
)
_K_COMMENT: Final = (
    f"weights sum to 1 (within {SIMPLEX_TOLERANCE}); weights and noise have one entry per objective."
)

_IMPRESSION: Final = _optional(
    _record(
        "impression",
        {
            "request_id": _id("unique id of this ranked list (Kafka key of impressions, clicks, dwells)"),
            "user_id": _id("user id"),
            "ts_ms": _ms("time the list was served"),
            "snapshot_version": _int("actor snapshot that ranked the list; 0 = none (cold start)"),
            "objectives": _OBJECTIVES,
            "weights": _numbers(
                "objective weights actually used (after exploration); on the simplex", None, 0
            ),
            "noise": _numbers("exploration noise that was applied, one per objective"),
            **_state_properties(),
            "log_propensity": {
                "type": ["number", "null"],
                "minimum": -MAX_ABS_NUMBER,
                "maximum": MAX_ABS_NUMBER,
                "description": "log density of the served weights given the state (additive-log-ratio"
                " coordinates); null when served deterministically; absent in version-1 records",
            },
            "arm": _ARM,
        },
        "one ranked list shown to a user",
        **{"$comment": f"{_LIST_COMMENT} {_K_COMMENT}"},
    ),
    "log_propensity",
    "arm",
)

_LABELS: Final = _object(
    {
        "clicks": _ints("per position of state.items: 1 if clicked, else 0", 0, 1),
        "dwell_ms": _ints("per position of state.items: dwell time in ms", 0, MAX_DWELL_MS),
    },
    "per-position feedback of the state's list",
)


def _non_negative(description: str, maximum: float = MAX_ABS_NUMBER) -> JSON:
    return {"type": "number", "minimum": 0, "maximum": maximum, "description": description}


_EXPLORATION: Final = _optional(
    _object(
        {
            "noise_std": _non_negative(
                "std of the Gaussian noise on the weight generator's logits (0 = exploit only)"
            ),
            "wide_std": _non_negative(
                "std of the logit noise on widely explored lists; written only when non-zero (absent = 0)"
            ),
            "wide_share": _non_negative(
                "share of lists explored with wide_std instead of noise_std; written only when non-zero", 1
            ),
            "uniform_share": _non_negative(
                "share of lists served weights uniform on the simplex, at most 1 - wide_share; written "
                "only when non-zero",
                1,
            ),
        },
        "the learner's exploration settings, which serving applies to this snapshot",
    ),
    "wide_std",
    "wide_share",
    "uniform_share",
)

_SNAPSHOT_HEADER: Final = _optional(
    _record(
        "snapshot_header",
        {
            "snapshot_version": _int("snapshot version, increasing", 1),
            "created_at_ms": _ms("creation time"),
            "training_step": _int("learner step the snapshot was taken at"),
            "watermark_ms": _ms("latest event time trained on"),
            "model_config": {
                "type": "object",
                "description": f"model configuration (free JSON object, nesting <= {MAX_JSON_DEPTH})",
            },
            "payload_format": {"const": PAYLOAD_FORMAT, "description": "payload encoding"},
            "payload_size": _int("payload size in bytes"),
            "payload_sha256": {
                "type": "string",
                "pattern": "^[0-9a-f]{64}$",
                "description": "hex SHA-256 of the payload",
            },
            "chunk_count": _int("number of chunks the payload is sent in", 1),
            "signature": {
                "type": "string",
                "pattern": "^[0-9a-f]{64}$",
                "description": "hex HMAC-SHA256 of the canonical header (see docs/schemas.md)",
            },
            "key_id": {
                "type": "string",
                "pattern": KEY_ID_PATTERN,
                "description": "id of the key that signed the header (signed; absent in old headers)",
            },
            "exploration": _ref(
                "exploration",
                "how serving explores around the snapshot's weights (signed; absent in old headers)",
            ),
            "global_weights": {
                **_numbers(
                    "the learner's moving average of its generator's mean weights, one per objective, on"
                    " the simplex: the holdout arm's weights (signed; absent in old headers)",
                    MAX_OBJECTIVES,
                    0,
                ),
                "minItems": 1,
            },
        },
        "header of one actor snapshot",
    ),
    "key_id",
    "exploration",
    "global_weights",
)


def _opt_version(description: str) -> JSON:
    return {"type": ["integer", "null"], "minimum": 1, "maximum": INT64_MAX, "description": description}


_ROLLOUT_DECISION: Final = _record(
    "rollout_decision",
    {
        "decision_id": _id("unique id of this decision"),
        "decided_at_ms": _ms("when the controller decided"),
        "decision": {"enum": list(DECISIONS), "description": "what the decision did to version"},
        "version": _int("the snapshot version the decision is about", 1),
        "incumbent": _opt_version("after the decision: the snapshot holdout and personalized users get"),
        "candidate": _opt_version("after the decision: the snapshot canary users get; null = no canary"),
        "canary_share": _non_negative("share of non-holdout users in the canary arm", 1),
        "canary_started_at_ms": {
            "type": ["integer", "null"],
            "minimum": 0,
            "maximum": INT64_MAX,
            "description": "start of the open canary; null = no canary",
        },
        "reason": _str("why, in words", MAX_DECISION_REASON_LEN),
        "evidence": {
            "type": "object",
            "maxProperties": MAX_EVIDENCE,
            "propertyNames": {"minLength": 1, "maxLength": 128},
            "additionalProperties": {"type": "number", "minimum": -MAX_ABS_NUMBER, "maximum": MAX_ABS_NUMBER},
            "description": "per-objective estimates and bounds behind the decision",
        },
        "rejected": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": INT64_MAX},
            "maxItems": MAX_REJECTED,
            "description": "recently rejected versions, never to be served",
        },
        "key_id": {"type": "string", "pattern": KEY_ID_PATTERN, "description": "id of the signing key"},
        "signature": {
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "hex HMAC-SHA256 of the canonical decision (see docs/schemas.md)",
        },
    },
    "one decision of the rollout controller and the serving state after it",
    **{
        "$comment": "Also checked by the decoder: canary has candidate == version; promote and bootstrap"
        " have incumbent == version; rollback and reject_ope list version in rejected and serve it in"
        " neither role; a candidate has canary_started_at_ms and differs from the incumbent."
    },
)

RECORD_SCHEMAS: Final[dict[str, tuple[JSON, dict[str, JSON]]]] = {
    # type: (root schema, $defs it needs)
    "impression": (_IMPRESSION, {"item": _ITEM}),
    "click": (
        _record(
            "click",
            {
                "request_id": _id("impression the click belongs to (Kafka key)"),
                "user_id": _id("user id"),
                "item_id": _id("clicked item"),
                "position": _int("0-based position of the clicked item", 0, MAX_ITEMS - 1),
                "ts_ms": _ms("click time"),
            },
            "a click on one item of an impression",
        ),
        {},
    ),
    "dwell": (
        _record(
            "dwell",
            {
                "request_id": _id("impression the dwell belongs to (Kafka key)"),
                "user_id": _id("user id"),
                "item_id": _id("item the user dwelt on"),
                "position": _int("0-based position of the item", 0, MAX_ITEMS - 1),
                "ts_ms": _ms("time the dwell ended"),
                "dwell_ms": _int("time spent on the item, ms", 0, MAX_DWELL_MS),
            },
            "time spent on one item of an impression",
        ),
        {},
    ),
    "list_outcome": (
        _record(
            "list_outcome",
            {
                "request_id": _id("impression.request_id"),
                "user_id": _id("impression.user_id"),
                "ts_ms": _ms("impression time (impression.ts_ms)"),
                "closed_at_ms": _ms("time the join window of the impression closed"),
                "impression": _ref("impression", "the full impression record"),
                "clicks": _ints("per position: 1 if clicked, else 0", 0, 1),
                "dwell_ms": _ints("per position: total dwell time in ms", 0, MAX_DWELL_MS),
                "complete": {
                    "type": "boolean",
                    "description": "false if the window closed before all expected feedback arrived",
                },
            },
            "an impression joined with its feedback",
            **{
                "$comment": "Also checked by the decoder: request_id, user_id and ts_ms equal the"
                " impression's; clicks and dwell_ms have one entry per impression item."
            },
        ),
        {"impression": _IMPRESSION, "item": _ITEM},
    ),
    "transition": (
        _optional(
            _record(
                "transition",
                {
                    "transition_id": _id(
                        "deterministic id: schemas.transition_id(user, request, next request)"
                    ),
                    "user_id": _id("user id (Kafka key of transitions)"),
                    "ts_ms": _ms("event time of the transition (normally state.ts_ms)"),
                    "snapshot_version": _int("actor snapshot that ranked the state's list; 0 = none"),
                    "state": _ref("list_state", "the list the action was taken on"),
                    "action": _numbers(
                        "logged objective weights (the impression's weights); on the simplex", None, 0
                    ),
                    "objectives": _OBJECTIVES,
                    "labels": _ref("labels", "per-position feedback"),
                    "reward": _numbers("list-level feedback per objective, e.g. [clicks, dwell seconds]"),
                    "next_state": {
                        "anyOf": [{"type": "null"}, {"$ref": "#/$defs/list_state"}],
                        "description": "the user's next list; null iff done",
                    },
                    "done": {"type": "boolean", "description": "no next state (episode end)"},
                    "arm": _ARM,
                    "log_propensity": {
                        "type": ["number", "null"],
                        "minimum": -MAX_ABS_NUMBER,
                        "maximum": MAX_ABS_NUMBER,
                        "description": "the state impression's log_propensity (copied by the"
                        " streams); null or absent where it had none",
                    },
                },
                "one RL transition of one user",
                **{
                    "if": {"properties": {"done": {"const": True}}, "required": ["done"]},
                    "then": {"properties": {"next_state": {"type": "null"}}},
                    "else": {"properties": {"next_state": {"$ref": "#/$defs/list_state"}}},
                    "$comment": "Also checked by the decoder: action sums to 1 (within"
                    f" {SIMPLEX_TOLERANCE}); action and reward have one entry per objective; labels.clicks"
                    f" and labels.dwell_ms have one entry per state.items. {_LIST_COMMENT}",
                },
            ),
            "arm",
            "log_propensity",
        ),
        {"list_state": _LIST_STATE, "labels": _LABELS, "item": _ITEM},
    ),
    "snapshot_header": (_SNAPSHOT_HEADER, {"exploration": _EXPLORATION}),
    "rollout_decision": (_ROLLOUT_DECISION, {}),
    "dead_letter": (
        _record(
            "dead_letter",
            {
                "source_topic": _str("topic the record was read from", MAX_TOPIC_LEN),
                "source_partition": _int("partition, -1 if unknown", -1, 2**31 - 1),
                "source_offset": _int("offset, -1 if unknown", -1),
                "key": {
                    "type": ["string", "null"],
                    "maxLength": MAX_KEY_LEN,
                    "description": "Kafka key (UTF-8 with replacement), null if none",
                },
                "stage": _str("component that rejected it, e.g. streams.decode", MAX_STAGE_LEN, 1),
                "error_field": {
                    "type": ["string", "null"],
                    "maxLength": MAX_ERROR_FIELD_LEN,
                    "description": "SchemaError.field, null if not a schema error",
                },
                "reason": _str("why it was rejected", MAX_REASON_LEN),
                "raw": _str("rejected payload as UTF-8 with replacement, cut to 64 KiB", MAX_RAW_BYTES),
                "raw_truncated": {"type": "boolean", "description": "true if raw was cut"},
                "rejected_at_ms": _ms("rejection time"),
            },
            "a record some stage could not process",
            **{"$comment": f"Also checked by the decoder: raw is at most {MAX_RAW_BYTES} bytes in UTF-8."},
        ),
        {},
    ),
}


def record_schema(record_type: str) -> JSON:
    """The complete JSON Schema document of one top-level record type."""
    root, defs = RECORD_SCHEMAS[record_type]
    doc: JSON = {"$schema": DRAFT, "$id": f"urn:paperec:schema:{record_type}", "title": record_type}
    doc.update(root)
    if defs:
        doc["$defs"] = defs
    return doc


def render(record_type: str) -> str:
    return json.dumps(record_schema(record_type), indent=2, ensure_ascii=False) + "\n"


def export(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for record_type in RECORD_TYPES:
        path = out_dir / f"{record_type}.schema.json"
        path.write_text(render(record_type), encoding="utf-8")
        written.append(path)
    return written


def stale(out_dir: Path = OUT_DIR) -> list[Path]:
    """Files under ``out_dir`` that differ from what :func:`export` would write now."""
    out = []
    for record_type in RECORD_TYPES:
        path = out_dir / f"{record_type}.schema.json"
        if not path.exists() or path.read_text(encoding="utf-8") != render(record_type):
            out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m schemas.jsonschema_export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale(args.out)
        for path in bad:
            print(f"stale: {path}", file=sys.stderr)
        return 1 if bad else 0
    for path in export(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
