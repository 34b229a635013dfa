"""streams.batching: how one fetch is split between the stages' batch sinks and Faust's
per-message path (``route_fetch``, pure), and the fetch size per partition. The fetch loop that
calls ``route_fetch`` runs against the real Faust consumer in test_streams_faust_io.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.batching import BatchSink, RoutedFetch, route_fetch

CLICKS, CHANGELOG = "p.clicks", "p.join-changelog"


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class Record:
    offset: int
    value: bytes


def route(
    records: dict[TP, list[Record]], read_offset: dict[Any, int | None], sinks: dict[str, BatchSink]
) -> RoutedFetch[tuple[TP, int]]:
    return route_fetch(
        records,
        read_offset,
        sinks.get,
        acks_enabled_for=lambda topic: True,
        to_message=lambda tp, r: (tp, r.offset),
        offset_of=lambda r: r.offset,
    )


def test_every_record_of_a_fetch_is_delivered_to_its_sink_and_the_read_offset_advances() -> None:
    # Also the records of a partition the join paused while their fetch was in flight: the
    # client has moved its position past them, so they must be delivered now, or they are never
    # fetched again. route_fetch is not even told which partitions are paused.
    sink = BatchSink()
    tp = TP(CLICKS, 0)
    read_offset: dict[Any, int | None] = {}
    fetch = route({tp: [Record(0, b"a"), Record(1, b"b")]}, read_offset, {CLICKS: sink})
    assert fetch.batches == {sink: [(tp, 0), (tp, 1)]} and fetch.singles == [] and fetch.gaps == []
    assert read_offset == {tp: 1}


def test_after_a_seek_the_record_at_the_position_is_delivered_and_older_ones_skipped() -> None:
    # Faust's seek sets read_offset to the position to read next (the committed offset after a
    # restart): the record there is the first not yet processed and must be delivered; records
    # below it (from a fetch issued before the seek) are skipped. A hole after it is a gap.
    sink = BatchSink()
    tp = TP(CLICKS, 1)
    fetch = route({tp: [Record(4, b"d"), Record(5, b"e"), Record(6, b"f")]}, {tp: 5}, {CLICKS: sink})
    assert fetch.batches == {sink: [(tp, 5), (tp, 6)]} and fetch.gaps == []
    fetch = route({tp: [Record(0, b"a"), Record(1, b"b"), Record(4, b"e")]}, {}, {CLICKS: sink})
    assert fetch.batches == {sink: [(tp, 0), (tp, 1), (tp, 4)]}
    assert fetch.gaps == [(tp, 2, 4)]


def test_topics_without_a_sink_take_the_per_message_path_in_order() -> None:
    sink = BatchSink()
    clicks, changelog = TP(CLICKS, 0), TP(CHANGELOG, 0)
    fetch = route(
        {changelog: [Record(7, b"x"), Record(8, b"y")], clicks: [Record(0, b"a")]}, {}, {CLICKS: sink}
    )
    assert fetch.singles == [(changelog, 7), (changelog, 8)]
    assert fetch.batches == {sink: [(clicks, 0)]}


def test_a_gap_is_left_to_faust_only_for_topics_with_acks() -> None:
    tp = TP(CHANGELOG, 0)
    fetch = route_fetch(
        {tp: [Record(9, b"z")]},
        {tp: 3},
        lambda topic: None,
        acks_enabled_for=lambda topic: False,
        to_message=lambda tp, r: (tp, r.offset),
        offset_of=lambda r: r.offset,
    )
    assert fetch.singles == [(tp, 9)] and fetch.gaps == []


def test_the_fetch_size_per_partition_keeps_every_input_partition_within_one_fetch_response() -> None:
    from streams.worker import FETCH_MAX_BYTES, partition_fetch_bytes

    for partitions in (1, 2, 4, 6, 8, 12):
        size = partition_fetch_bytes(partitions)
        assert 1024 * 1024 <= size <= 4 * 1024 * 1024
        assert 3 * partitions * size <= FETCH_MAX_BYTES  # no input partition is starved
    assert partition_fetch_bytes(64) == 1024 * 1024  # at least 1 MiB, however many partitions
