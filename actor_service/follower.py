"""Follow one single-partition topic from its start: what every node does with the compacted
``actor-snapshots`` and ``rollout`` topics.

No consumer group: the partition is assigned manually and read from the beginning on start
(compaction keeps the latest record per key, so the node finds the current state there), then
followed. ``caught_up`` is set once the end offset seen at start has been read, which is what the
node's readiness waits for. A broken connection reconnects with a capped backoff and resumes at
the next offset; :meth:`TopicFollower.rescan` reads the topic again from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)


class TopicFollower:
    """The background task; ``handle`` gets each batch of records, in offset order."""

    def __init__(
        self,
        name: str,
        make_consumer: Callable[[], Any],
        topic: str,
        handle: Callable[[Sequence[Any]], Awaitable[object]],
        max_backoff_s: float = 5.0,
        start_after: asyncio.Event | None = None,
        start_after_timeout_s: float = 30.0,
    ) -> None:
        self.name = name
        self._make_consumer = make_consumer
        self.topic = topic
        self._handle = handle
        self.max_backoff_s = max_backoff_s
        # wait for this (at most start_after_timeout_s) before the first read: see Node.start
        self._start_after = start_after
        self._start_after_timeout_s = start_after_timeout_s
        self.caught_up = asyncio.Event()  # set once the topic was read up to its end at start
        self._next_offset: int | None = None
        self._rescan = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    def rescan(self) -> None:
        """Read the topic again from its start (after the batch being handled)."""
        self._rescan = True

    async def _run(self) -> None:
        if self._start_after is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._start_after.wait(), self._start_after_timeout_s)
        backoff = 0.2
        while True:
            consumer = None
            try:
                consumer = self._make_consumer()
                await consumer.start()
                backoff = 0.2
                await self._follow(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s failed (%r); reconnecting in %.1f s", self.name, exc, backoff)
            finally:
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        await consumer.stop()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    async def _follow(self, consumer: Any) -> None:
        from aiokafka import TopicPartition  # local: keeps this module importable without a broker

        # Assigning a missing topic makes aiokafka spin on metadata errors: check it exists first.
        if self.topic not in await consumer.topics():
            raise LookupError(f"topic {self.topic} does not exist (run `paperec topics create`)")
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        if self._next_offset is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, self._next_offset)
        end = (await consumer.end_offsets([tp]))[tp]
        log.info(
            "following %s from offset %s (end offset at start: %d)", self.topic, self._next_offset or 0, end
        )
        while True:
            if not self.caught_up.is_set() and await consumer.position(tp) >= end:
                self.caught_up.set()
            if self._rescan:
                self._rescan = False
                log.info("reading %s again from its start", self.topic)
                await consumer.seek_to_beginning(tp)
            batch = await consumer.getmany(tp, timeout_ms=1000)
            records = batch.get(tp, [])
            if records:
                await self._handle(records)
                self._next_offset = records[-1].offset + 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
