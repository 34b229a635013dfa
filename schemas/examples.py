"""One realistic example object per record type (used by docs/schemas.md and the tests), and a
generator of typical impressions for benchmarks.

``python -m schemas.examples`` prints each example as indented JSON (what docs/schemas.md shows).
"""

from __future__ import annotations

import random
import sys
from typing import Any, Final

import orjson

from schemas.codec import Record, decode
from schemas.dead_letter import make_dead_letter
from schemas.errors import SchemaError
from schemas.events import Click, Dwell, Impression, Item, ListOutcome, ListState
from schemas.rollout import make_decision
from schemas.snapshot import Exploration, make_header
from schemas.transition import Labels, Transition, transition_id

EXAMPLE_HMAC_KEY: Final = b"paperec-dev-key-not-for-production"
"""The dev-stack key (Settings.snapshot_hmac_key's default); never use it in production."""
EXAMPLE_PAYLOAD: Final = b"example safetensors payload"

_T0: Final = 1_732_795_200_000  # 2024-11-28T12:00:00Z

EXPLORATION: Final = Exploration(noise_std=0.1, wide_std=1.0, wide_share=0.25)
"""A wide exploration, recorded in the example header (the learner's default before ``uniform_share``;
kept so the documented test vector and the impression's propensity stay as published)."""


def _items(ids: list[str], rows: list[tuple[float, ...]]) -> tuple[Item, ...]:
    return tuple(
        Item(item_id=i, position=p, features=f) for p, (i, f) in enumerate(zip(ids, rows, strict=True))
    )


IMPRESSION: Final = Impression(
    request_id="req-7f3a9c",
    user_id="user-1842",
    ts_ms=_T0,
    snapshot_version=12,
    objectives=("click", "dwell"),
    weights=(0.62, 0.38),
    noise=(0.04, -0.04),
    user_features=(0.12, -0.5, 0.33, 1.0),
    history=("item-301", "item-77", "item-9120"),
    context=(1.0, 0.0, 0.25),
    items=_items(
        ["item-5521", "item-1208", "item-9954"],
        [(0.8, 0.1, -0.3, 0.05), (0.42, 0.9, 0.0, -0.12), (0.15, -0.7, 0.6, 0.3)],
    ),
    log_propensity=0.6277,  # the noise's density under EXPLORATION (K = 2, temperature 1)
    arm="personalized",
)

NEXT_IMPRESSION: Final = Impression(
    request_id="req-8b1d04",
    user_id="user-1842",
    ts_ms=_T0 + 95_000,
    snapshot_version=12,
    objectives=("click", "dwell"),
    weights=(0.55, 0.45),
    noise=(-0.03, 0.03),
    user_features=(0.14, -0.48, 0.35, 1.0),
    history=("item-77", "item-9120", "item-1208"),
    context=(1.0, 0.0, 0.25),
    items=_items(
        ["item-4410", "item-8873", "item-1650"],
        [(0.3, 0.2, 0.1, 0.0), (-0.2, 0.5, 0.45, 0.9), (0.05, 0.05, -0.4, 0.7)],
    ),
    log_propensity=0.6952,
    arm="personalized",
)

CLICK: Final = Click(
    request_id="req-7f3a9c", user_id="user-1842", item_id="item-1208", position=1, ts_ms=_T0 + 4_200
)

DWELL: Final = Dwell(
    request_id="req-7f3a9c",
    user_id="user-1842",
    item_id="item-1208",
    position=1,
    ts_ms=_T0 + 46_200,
    dwell_ms=42_000,
)

LIST_OUTCOME: Final = ListOutcome(
    request_id=IMPRESSION.request_id,
    user_id=IMPRESSION.user_id,
    ts_ms=IMPRESSION.ts_ms,
    closed_at_ms=_T0 + 600_000,
    impression=IMPRESSION,
    clicks=(0, 1, 0),
    dwell_ms=(0, 42_000, 0),
    complete=True,
)

TRANSITION: Final = Transition(
    transition_id=transition_id(IMPRESSION.user_id, IMPRESSION.request_id, NEXT_IMPRESSION.request_id),
    user_id=IMPRESSION.user_id,
    ts_ms=IMPRESSION.ts_ms,
    snapshot_version=IMPRESSION.snapshot_version,
    state=IMPRESSION.list_state(),
    action=IMPRESSION.weights,
    objectives=IMPRESSION.objectives,
    labels=Labels(clicks=(0, 1, 0), dwell_ms=(0, 42_000, 0)),
    reward=(1.0, 42.0),
    next_state=NEXT_IMPRESSION.list_state(),
    done=False,
    arm=IMPRESSION.arm,
    log_propensity=IMPRESSION.log_propensity,
)

SNAPSHOT_HEADER: Final = make_header(
    snapshot_version=12,
    created_at_ms=_T0 - 30_000,
    training_step=48_000,
    watermark_ms=_T0 - 31_500,
    model_config={"objectives": ["click", "dwell"], "hidden_sizes": [128, 64], "n_item_features": 4},
    payload=EXAMPLE_PAYLOAD,
    key=EXAMPLE_HMAC_KEY,
    exploration=EXPLORATION,
    chunk_count=1,
)

ROLLOUT_DECISION: Final = make_decision(
    decision_id="13-rollback-1732795260000",
    decided_at_ms=_T0 + 60_000,
    decision="rollback",
    version=13,
    incumbent=12,
    candidate=None,
    canary_share=0.2,
    canary_started_at_ms=None,
    reason="dwell per impression: upper bound of the relative change -0.081 < -0.05 after 412 canary lists",
    evidence={
        "click.estimate": -0.021,
        "click.lower": -0.094,
        "click.upper": 0.052,
        "dwell.estimate": -0.142,
        "dwell.lower": -0.203,
        "dwell.upper": -0.081,
        "canary_lists": 412.0,
        "personalized_lists": 1650.0,
    },
    rejected=(13,),
    key=EXAMPLE_HMAC_KEY,
    key_id="default",
)

_BAD_CLICK: Final = (
    b'{"type":"click","schema_version":1,"request_id":"req-7f3a9c","user_id":"user-1842",'
    b'"item_id":"item-1208","position":true,"ts_ms":1732795204200}'
)


def _decode_error(raw: bytes) -> SchemaError:
    try:
        decode(raw)
    except SchemaError as e:
        return e
    raise AssertionError("example dead letter payload must be invalid")


DEAD_LETTER: Final = make_dead_letter(
    _BAD_CLICK,
    source_topic="paperec.clicks",
    source_partition=2,
    source_offset=18_734,
    key=b"req-7f3a9c",
    stage="streams.decode",
    error=_decode_error(_BAD_CLICK),
    rejected_at_ms=_T0 + 4_250,
)

EXAMPLES: Final[dict[str, Record]] = {
    "impression": IMPRESSION,
    "click": CLICK,
    "dwell": DWELL,
    "list_outcome": LIST_OUTCOME,
    "transition": TRANSITION,
    "snapshot_header": SNAPSHOT_HEADER,
    "dead_letter": DEAD_LETTER,
    "rollout_decision": ROLLOUT_DECISION,
}
"""One example per top-level record type, keyed by ``type``."""

LIST_STATE: Final[ListState] = IMPRESSION.list_state()


def make_impression(
    n_items: int = 20,
    n_features: int = 8,
    *,
    seed: int = 0,
    request_id: str | None = None,
    user_id: str = "user-1",
    ts_ms: int = _T0,
) -> Impression:
    """A random but valid impression of ``n_items`` items with ``n_features`` features each
    (the typical production shape is 20 x 8)."""
    rng = random.Random(seed)
    w = rng.random()
    return Impression(
        request_id=request_id or f"req-{seed:08x}",
        user_id=user_id,
        ts_ms=ts_ms,
        snapshot_version=rng.randrange(1, 1000),
        objectives=("click", "dwell"),
        weights=(w, 1.0 - w),
        noise=(rng.gauss(0, 0.05), rng.gauss(0, 0.05)),
        user_features=tuple(rng.gauss(0, 1) for _ in range(16)),
        history=tuple(f"item-{rng.randrange(100_000)}" for _ in range(10)),
        context=tuple(rng.random() for _ in range(4)),
        items=tuple(
            Item(
                item_id=f"item-{seed}-{i}",
                position=i,
                features=tuple(rng.gauss(0, 1) for _ in range(n_features)),
            )
            for i in range(n_items)
        ),
        log_propensity=rng.gauss(0, 1),  # drawn last: the other fields are as before it existed
    )


def pretty_json(value: Any, indent: str = "") -> str:
    """Indented JSON that keeps arrays of scalars on one line (readable docs)."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        body = ",\n".join(
            f"{inner}{orjson.dumps(k).decode()}: {pretty_json(v, inner)}" for k, v in value.items()
        )
        return "{\n" + body + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + pretty_json(v, inner) for v in value) + "\n" + indent + "]"
    if isinstance(value, list):
        return "[" + ", ".join(orjson.dumps(v).decode() for v in value) + "]"
    return orjson.dumps(value).decode()


def example_json(record_type: str) -> str:
    """The example of ``record_type`` as the indented JSON shown in docs/schemas.md."""
    return pretty_json(EXAMPLES[record_type].to_dict())


def main() -> None:
    for name in EXAMPLES:
        sys.stdout.write(f"### {name}\n\n```json\n{example_json(name)}\n```\n\n")


if __name__ == "__main__":
    main()

__all__ = [
    "CLICK",
    "DEAD_LETTER",
    "DWELL",
    "EXAMPLES",
    "EXAMPLE_HMAC_KEY",
    "EXAMPLE_PAYLOAD",
    "EXPLORATION",
    "IMPRESSION",
    "LIST_OUTCOME",
    "LIST_STATE",
    "NEXT_IMPRESSION",
    "ROLLOUT_DECISION",
    "SNAPSHOT_HEADER",
    "TRANSITION",
    "example_json",
    "make_impression",
    "pretty_json",
]
