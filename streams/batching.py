"""Batch delivery of fetched records to the stages: the sink a stage reads its steps from, and
how one fetch is split between the sinks and Faust's per-message path.

Why: Faust hands every record to an agent one by one through a chain of coroutines (the
fetcher's ``wait_first`` per message, the conductor, a channel queue, the stream iterator), which
costs ~100-150 us per record here: a plain ``async for`` agent tops out at 5-10 k records/s on
this machine, ``stream.take()`` included, while the join must sustain 20 k/s. So for the topics
of a stage the consumer's fetch loop (``streams.faust_io.BatchingConsumer``) hands over each
fetched batch as a list instead, routed by ``route_fetch``.

Everything else stays Faust's: group membership and partition assignment (the agents are
declared on these topics, so Faust subscribes to them and assigns the table changelog partitions
with them), table recovery from changelogs, offset bookkeeping (records are acked after their
effects are durable, and Faust commits only acked offsets, after flushing the producer),
rebalancing and shutdown. Topics without a sink (table changelogs during recovery, any other
agent) still go through Faust's per-message path unchanged.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from streams.stage_io import InputRecord

R = TypeVar("R")  # a record as the Kafka client returns it
M = TypeVar("M")  # the message made of it


class BatchSink:
    """Fetched records waiting for one agent, bounded by a record count (back-pressure on the
    fetcher, which also keeps a paused input from having run far ahead in the queue).

    The fetcher puts whole fetches (every partition's records, so no input starves); the agent
    takes them in steps of at most ``max_records``, so each step stays short and offset commits
    and heartbeats run between steps."""

    def __init__(self, max_queued: int = 10_000) -> None:
        self.max_queued = max_queued
        self._records: deque[InputRecord] = deque()
        self._changed = asyncio.Condition()

    async def put(self, batch: Iterable[InputRecord]) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._records) < self.max_queued)
            self._records.extend(batch)
            self._changed.notify_all()

    async def get(self, timeout_s: float, max_records: int) -> list[InputRecord]:
        """The next records (at least one, waiting up to ``timeout_s``), at most ``max_records``;
        empty on timeout."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: bool(self._records)), timeout_s)
            except TimeoutError:
                return []
            records, pop = self._records, self._records.popleft
            batch = [pop() for _ in range(min(max_records, len(records)))]
            self._changed.notify_all()
            return batch

    def __len__(self) -> int:
        return len(self._records)

    def clear(self) -> None:
        self._records.clear()


@dataclass
class RoutedFetch(Generic[M]):
    """One fetch, split: records for each sink, records for Faust's per-message path (in fetch
    order), and holes in the offsets that the commit may skip."""

    batches: dict[BatchSink, list[M]] = field(default_factory=dict)
    singles: list[M] = field(default_factory=list)
    gaps: list[tuple[Any, int, int]] = field(default_factory=list)


def route_fetch(
    records: Mapping[Any, Iterable[R]],
    read_offset: MutableMapping[Any, int | None],
    sink_for: Callable[[str], BatchSink | None],
    acks_enabled_for: Callable[[str], bool],
    to_message: Callable[[Any, R], M],
    offset_of: Callable[[R], int],
) -> RoutedFetch[M]:
    """Split one fetch (records per topic partition) and advance ``read_offset`` (per partition,
    the offset of the last record delivered; after a seek, the offset to read next).

    Every record returned is delivered, also of a partition paused while the fetch was waiting:
    the client has moved its position past them, so a dropped record would never be fetched
    again, and the gap logic would even let the commit skip it. Records below the read offset
    were delivered already (a fetch issued before a seek). A hole after the read offset
    (compaction, transaction markers) is a gap the commit may skip."""
    out: RoutedFetch[M] = RoutedFetch()
    for tp, recs in records.items():
        sink = sink_for(tp.topic)
        acks_enabled = acks_enabled_for(tp.topic)
        for record in recs:
            offset = offset_of(record)
            r_offset = read_offset.get(tp)
            if r_offset is not None and offset < r_offset:
                continue
            if r_offset and offset - r_offset > 1 and acks_enabled:
                out.gaps.append((tp, r_offset + 1, offset))
            message = to_message(tp, record)
            read_offset[tp] = offset
            if sink is not None:
                out.batches.setdefault(sink, []).append(message)
            else:
                out.singles.append(message)
    return out
