"""streams.batching: the fetch loop's delivery to batch sinks, with an in-memory stand-in for
Faust's consumer (its ``_drain_messages`` reads only the attributes given here)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from streams.batching import BatchingConsumer, BatchSink

CLICKS = "p.clicks"


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class Record:
    offset: int
    value: bytes


class Flag:
    def __init__(self) -> None:
        self.value = False

    def is_set(self) -> bool:
        return self.value

    async def wait(self) -> None:
        await asyncio.Event().wait()  # never: flow is not suspended in these tests


class FakeConsumer:
    """What ``BatchingConsumer._drain_messages`` uses of Faust's consumer. ``fetches`` are
    (records, active partitions) as ``_wait_next_records`` returns them; the loop stops after
    the last one."""

    consumer_stopped_errors: tuple[type[BaseException], ...] = ()

    def __init__(
        self, sinks: dict[str, BatchSink], fetches: list[tuple[dict[TP, list[Record]], set[TP]]]
    ) -> None:
        self._fetches = fetches
        self._stopped = Flag()
        self._read_offset: dict[TP, int] = {}
        self._buffered_partitions: set[TP] = set()
        self.gaps: list[tuple[TP, int, int]] = []
        self.flow_active = True
        self.should_stop = False
        self.suspend_flow = Flag()
        self.callback: Any = None
        topics = type("Topics", (), {"acks_enabled_for": staticmethod(lambda topic: True)})()
        monitor = type("Monitor", (), {"track_tp_end_offset": staticmethod(lambda tp, offset: None)})()
        self.app = type("App", (), {"batch_sinks": sinks, "topics": topics, "monitor": monitor})()

    async def sleep(self, s: float) -> None:
        await asyncio.sleep(0)

    async def _wait_next_records(self, timeout: float) -> tuple[dict[TP, list[Record]], set[TP]]:
        if not self._fetches:
            self._stopped.value = True
            return {}, set()
        return self._fetches.pop(0)

    def highwater(self, tp: TP) -> int:
        return 0

    def _to_message(self, tp: TP, record: Record) -> tuple[TP, int]:
        return (tp, record.offset)

    async def _add_gap(self, tp: TP, start: int, end: int) -> None:
        self.gaps.append((tp, start, end))

    async def wait_first(self, *coros: Any) -> None:
        await coros[0]
        for c in coros[1:]:
            c.close()


def delivered(consumer: FakeConsumer, sink: BatchSink) -> list[Any]:
    """Run the fetch loop over the consumer's fetches; what reached the sink."""

    async def run() -> list[Any]:
        fetcher = type("Fetcher", (), {"_stopped": Flag()})()
        await BatchingConsumer._drain_messages(consumer, fetcher)  # type: ignore[arg-type]
        return await sink.get(0.1, 100)

    return asyncio.run(run())


def test_records_of_a_partition_paused_during_their_fetch_are_still_delivered() -> None:
    # The join paused clicks-0 while the fetch that returned these records was in flight: Faust's
    # live set of active partitions no longer holds it. aiokafka has moved its position past the
    # records, so they must be delivered now, or they are never fetched again.
    sink = BatchSink()
    tp = TP(CLICKS, 0)
    consumer = FakeConsumer({CLICKS: sink}, [({tp: [Record(0, b"a"), Record(1, b"b")]}, set())])
    assert delivered(consumer, sink) == [(tp, 0), (tp, 1)]
    assert consumer.gaps == []


def test_after_a_seek_the_record_at_the_position_is_delivered_and_older_ones_skipped() -> None:
    # Faust's seek sets read_offset to the position to read next (the committed offset after a
    # restart): the record there is the first not yet processed and must be delivered; records
    # below it (from a fetch issued before the seek) are skipped. A hole after it is a gap.
    sink = BatchSink()
    tp = TP(CLICKS, 1)
    consumer = FakeConsumer(
        {CLICKS: sink}, [({tp: [Record(4, b"d"), Record(5, b"e"), Record(6, b"f")]}, {tp})]
    )
    consumer._read_offset[tp] = 5
    assert delivered(consumer, sink) == [(tp, 5), (tp, 6)]
    consumer = FakeConsumer(
        {CLICKS: sink}, [({tp: [Record(0, b"a"), Record(1, b"b"), Record(4, b"e")]}, {tp})]
    )
    assert delivered(consumer, sink) == [(tp, 0), (tp, 1), (tp, 4)]
    assert consumer.gaps == [(tp, 2, 4)]


def test_the_fetch_size_per_partition_keeps_every_input_partition_within_one_fetch_response() -> None:
    from streams.worker import FETCH_MAX_BYTES, partition_fetch_bytes

    for partitions in (1, 2, 4, 6, 8, 12):
        size = partition_fetch_bytes(partitions)
        assert 1024 * 1024 <= size <= 4 * 1024 * 1024
        assert 3 * partitions * size <= FETCH_MAX_BYTES  # no input partition is starved
    assert partition_fetch_bytes(64) == 1024 * 1024  # at least 1 MiB, however many partitions
