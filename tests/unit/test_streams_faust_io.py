"""Contract of streams.faust_io with the installed faust-streaming: every private attribute the
adapter uses exists and behaves as the adapter assumes. Real Faust objects (an app, its
consumer, producer and a table; not started, no broker): a faust-streaming upgrade that changes
one of them fails the test named after it."""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import re
from pathlib import Path
from typing import Any

import aiokafka
import faust
import pytest
from aiokafka.structs import ConsumerRecord
from faust.exceptions import NotReady
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.utils.locks import Event

from streams.batching import BatchSink
from streams.faust_io import (
    FAUST_STREAMING_VERSION,
    BatchingApp,
    BatchingConsumer,
    FaustStageIO,
    PlannedTable,
    crashed,
)

ROOT = Path(__file__).resolve().parents[2]
CLICKS, CHANGELOG = "c.clicks", "c.join-changelog"


def new_app() -> BatchingApp:
    app = BatchingApp("contract", broker="kafka://127.0.0.1:1", store="memory://")
    app.topics.acks_enabled_for = lambda topic: topic == CLICKS  # type: ignore[method-assign]
    return app


def record(topic: str, partition: int, offset: int, value: bytes = b"v") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic, partition, offset, 1_700_000_000_000, 0, b"k", value, None, 1, len(value), ()
    )


def params(f: Any) -> list[str]:
    return list(inspect.signature(f).parameters)


def test_the_installed_faust_streaming_is_the_pinned_version() -> None:
    assert importlib.metadata.version("faust-streaming") == FAUST_STREAMING_VERSION
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf'"faust-streaming=={re.escape(FAUST_STREAMING_VERSION)}"', pyproject)


def test_new_transport_installs_the_batching_consumer() -> None:
    async def scenario() -> None:
        assert params(faust.App._new_transport) == ["self"]
        assert isinstance(new_app().consumer, BatchingConsumer)

    asyncio.run(scenario())


def test_drain_messages_delivers_through_read_offset_to_message_add_gap_and_stopped() -> None:
    # The overridden fetch loop on a real consumer: only the fetch itself (a broker call) and
    # the end offsets are stood in for.
    assert params(FaustConsumer._drain_messages) == ["self", "fetcher"]
    assert params(FaustConsumer._wait_next_records) == ["self", "timeout"]
    assert params(faust_aiokafka.Consumer._to_message) == ["self", "tp", "record"]
    assert params(FaustConsumer._add_gap) == ["self", "tp", "offset_from", "offset_to"]

    async def scenario() -> None:
        app = new_app()
        sink = BatchSink()
        app.register_batch_sink([CLICKS], sink)
        consumer: Any = app.consumer
        clicks, changelog = TP(CLICKS, 0), TP(CHANGELOG, 0)
        consumer._read_offset[clicks] = 2  # after a seek: the offset to read next
        fetches = [
            {clicks: [record(CLICKS, 0, 1), record(CLICKS, 0, 2), record(CLICKS, 0, 5)]},
            {changelog: [record(CHANGELOG, 0, 0)]},
        ]

        async def wait_next_records(timeout: float) -> tuple[dict[TP, list[Any]], set[TP]]:
            if not fetches:
                consumer._stopped.set()
                return {}, set()
            return fetches.pop(0), set()

        singles: list[Any] = []

        async def callback(message: Any) -> None:
            singles.append(message)

        consumer._wait_next_records = wait_next_records
        consumer.highwater = lambda tp: 10
        consumer.callback = callback
        fetcher = type("Fetcher", (), {"_stopped": Event()})()
        await asyncio.wait_for(consumer._drain_messages(fetcher), 5)
        batch: list[Any] = await sink.get(0.1, 10)
        assert [(m.topic, m.offset) for m in batch] == [(CLICKS, 2), (CLICKS, 5)]
        assert batch[0].generation_id == app.consumer_generation_id and batch[0].tp == clicks
        assert [(m.topic, m.offset) for m in singles] == [(CHANGELOG, 0)]
        assert consumer._read_offset[clicks] == 5 and consumer._read_offset[changelog] == 0
        # the gap as Faust records it: offsets 3 up to the record at 5, inclusive (end exclusive)
        assert [(i.begin, i.end) for i in consumer._gap[clicks]] == [(3, 6)]

    asyncio.run(scenario())


def test_ack_keeps_fausts_own_bookkeeping_and_committed_offset() -> None:
    # A step acked at once leaves the consumer as Faust's per-message ack does: the same acked
    # offsets, counter and wake-up, and hence the same offset to commit.
    async def scenario() -> None:
        theirs, ours = new_app(), new_app()
        io = FaustStageIO(ours, table=None)  # type: ignore[arg-type]
        tp = TP(CLICKS, 0)
        for app in (theirs, ours):
            consumer: Any = app.consumer
            consumer._committed_offset[tp] = 3  # below it: already committed, not acked again
            consumer._waiting_for_ack = asyncio.get_running_loop().create_future()
        offsets = [2, 3, 4, 4, 6]
        for m in [theirs.consumer._to_message(tp, record(CLICKS, 0, o)) for o in offsets]:  # type: ignore[attr-defined]
            theirs.consumer.ack(m)
        io.ack([ours.consumer._to_message(tp, record(CLICKS, 0, o)) for o in offsets])  # type: ignore[attr-defined]
        a, b = cast_any(theirs.consumer), cast_any(ours.consumer)
        assert (a._acked, a._acked_index, a._n_acked) == (b._acked, b._acked_index, b._n_acked)
        assert list(b._acked[tp]) == [3, 4, 6] and b._waiting_for_ack.done()
        assert a._new_offset(tp) == b._new_offset(tp) == 5  # contiguous acks: 3, 4
        assert io.committed(tp) == 3 and io.committed(TP(CLICKS, 1)) is None
        # Faust records what it committed in _committed_offset (what io.committed reads)
        assert "self._committed_offset.update(committable_offsets)" in inspect.getsource(
            FaustConsumer._commit_offsets
        )

    asyncio.run(scenario())


def cast_any(x: object) -> Any:
    return x


def test_ensure_producer_is_the_aiokafka_producer_with_the_batch_api() -> None:
    async def scenario() -> None:
        io = FaustStageIO(new_app(), table=None)  # type: ignore[arg-type]
        with pytest.raises(NotReady):  # exists, and refuses before the producer started
            io.producer()

    asyncio.run(scenario())
    assert inspect.signature(faust_aiokafka.Producer._ensure_producer).return_annotation in (
        "aiokafka.AIOKafkaProducer",
        aiokafka.AIOKafkaProducer,
    )
    assert params(aiokafka.AIOKafkaProducer.create_batch) == ["self"]
    send = inspect.signature(aiokafka.AIOKafkaProducer.send_batch).parameters
    assert (
        list(send)[:3] == ["self", "batch", "topic"]
        and send["partition"].kind is inspect.Parameter.KEYWORD_ONLY
    )
    assert params(aiokafka.AIOKafkaProducer.partitions_for) == ["self", "topic"]


def test_last_fetch_ms_is_aiokafkas_last_poll_timestamp_through_the_consumer_thread() -> None:
    # Faust's consumer thread holds the aiokafka consumer; its per-partition fetch state carries
    # the wall time of the last fetch response without error (None before the first one).
    async def scenario() -> None:
        app = new_app()
        io = FaustStageIO(app, table=None)  # type: ignore[arg-type]
        tp = aiokafka.TopicPartition(CLICKS, 0)
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
        try:
            consumer.assign([tp])
            cast_any(app.consumer)._thread._consumer = consumer
            assert io.last_fetch_ms(tp) is None
            state = consumer._subscription.subscription.assignment.state_value(tp)
            state.timestamp = 1_700_000_000_123  # what aiokafka's fetcher sets on a response
            assert io.last_fetch_ms(tp) == consumer.last_poll_timestamp(tp) == 1_700_000_000_123
        finally:
            await consumer.stop()

    asyncio.run(scenario())


def test_changelog_topic_name_gives_the_planned_changelog_topic() -> None:
    async def scenario() -> None:
        app = new_app()
        table = PlannedTable(
            app, name="join", changelog_name="c.streams-join-changelog", key_type=bytes, value_type=bytes
        )
        app.tables.add(table)
        io = FaustStageIO(app, table)
        assert io.changelog_topic == "c.streams-join-changelog"
        io.table[b"k"] = b"v"
        assert table.data[b"k"] == b"v"

    asyncio.run(scenario())


def test_crash_reason_tells_a_crashed_app() -> None:
    async def scenario() -> None:
        app = new_app()
        assert not crashed(app)
        await FaustStageIO(app, table=None).crash(RuntimeError("delivery failed"))  # type: ignore[arg-type]
        assert crashed(app) and isinstance(app.crash_reason, RuntimeError)

    asyncio.run(scenario())
