"""What the stream join writes is valid for the schemas decoder; what stage 2 reads is checked."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from schemas import DeadLetter, ListOutcome, SchemaError, decode
from streams import fixtures as fx
from streams.batching import BatchSink
from streams.decoding import decode_impression
from streams.join import ClosedList
from streams.publisher import partition_for
from streams.records import encode_dead_letter, encode_list_outcome, list_feedback, read_outcome
from streams.types import STAGE_DECODE, Rejected, Source


def closed(rid: str = "r1") -> ClosedList:
    raw = fx.dumps(fx.impression(rid, "u1", 1_000, n_items=3))
    imp = decode_impression(raw)
    return ClosedList(0, imp, raw, (1, 0, 0), (2_500, 0, 0), True, 9_999)


def test_list_outcome_is_a_valid_record_and_readable_by_stage_2() -> None:
    raw = encode_list_outcome(closed())
    o = decode(raw, ListOutcome)
    assert o.request_id == "r1" and o.impression.request_id == "r1" and o.clicks == (1, 0, 0)
    assert o.dwell_ms == (2_500, 0, 0) and o.closed_at_ms == 9_999 and o.complete
    view = read_outcome(raw)
    assert (view.user_id, view.request_id, view.ts_ms) == ("u1", "r1", 1_000)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"type": "impression"}, "type"),
        ({"user_id": 7}, "user_id"),
        ({"ts_ms": "soon"}, "ts_ms"),
        ({"impression": {"request_id": "r1"}}, "impression"),
        ({"clicks": [1]}, "clicks"),
    ],
)
def test_read_outcome_names_the_bad_field(patch: dict, field: str) -> None:
    d = orjson.loads(encode_list_outcome(closed()))
    with pytest.raises(SchemaError) as err:
        read_outcome(orjson.dumps({**d, **patch}))
    assert err.value.field == field


def test_read_outcome_rejects_non_json() -> None:
    with pytest.raises(SchemaError) as err:
        read_outcome(b"\xff not json")
    assert err.value.field == "$"


def test_dead_letter_carries_source_stage_field_and_raw() -> None:
    r = Rejected(
        Source("p.clicks", 2, 17, b"r1"), b'{"position": true}', STAGE_DECODE, "expected integer", "position"
    )
    dl = decode(encode_dead_letter(r, 123), DeadLetter)
    assert (dl.source_topic, dl.source_partition, dl.source_offset, dl.key) == ("p.clicks", 2, 17, "r1")
    assert (dl.stage, dl.error_field, dl.reason, dl.rejected_at_ms) == (
        STAGE_DECODE,
        "position",
        "expected integer",
        123,
    )
    assert dl.raw == '{"position": true}' and not dl.raw_truncated
    binary = Rejected(Source("t", 0, 1, None), b"\xff" * 100_000, STAGE_DECODE, "x")
    dl2 = decode(encode_dead_letter(binary, 1), DeadLetter)
    assert dl2.raw_truncated and dl2.key is None and dl2.error_field is None


def test_list_feedback_follows_the_objectives_and_counts_unknown_ones() -> None:
    assert list_feedback(["click", "dwell"], [1, 0, 1], [1500, 0, 500]) == ([2.0, 2.0], 0)
    assert list_feedback(["dwell", "share", "click"], [1], [0]) == ([0.0, 0.0, 1.0], 1)


def test_partitioner_is_kafkas_murmur2() -> None:
    rng = random.Random(1)
    for _ in range(2_000):
        key = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
        n = rng.randint(1, 64)
        assert partition_for(key, n) == (kafka_python_murmur2(key) & 0x7FFFFFFF) % n
    # Java: Utils.toPositive(Utils.murmur2("21".getBytes())) % 4 == 0 (murmur2 = -973932308)
    assert kafka_python_murmur2(b"21") & 0xFFFFFFFF == (-973932308) & 0xFFFFFFFF


def test_batch_sink_hands_out_bounded_steps_and_applies_back_pressure() -> None:
    async def scenario() -> None:
        sink = BatchSink(max_queued=3)
        assert await sink.get(0.01, 10) == []
        await sink.put([1, 2])  # type: ignore[list-item]
        await sink.put([3, 4, 5])  # type: ignore[list-item]  # accepted: 2 < 3 were queued
        blocked = asyncio.ensure_future(sink.put([6]))  # type: ignore[list-item]
        await asyncio.sleep(0.01)
        assert not blocked.done() and len(sink) == 5
        assert await sink.get(0.01, 4) == [1, 2, 3, 4]  # at most max_records
        await asyncio.wait_for(blocked, 1)  # room again
        assert await sink.get(0.01, 4) == [5, 6]
        await sink.put([7])  # type: ignore[list-item]
        sink.clear()
        assert await sink.get(0.01, 3) == []

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("field", "value"),
    [("arm", "control"), ("arm", 3), ("log_propensity", "0.5"), ("log_propensity", True)],
)
def test_read_outcome_names_a_bad_arm_or_propensity(field: str, value: object) -> None:
    d = orjson.loads(encode_list_outcome(closed()))
    d["impression"][field] = value
    with pytest.raises(SchemaError) as err:
        read_outcome(orjson.dumps(d))
    assert err.value.field == f"impression.{field}"
