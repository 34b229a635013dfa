"""Impression logging: every ranked list goes to the ``impressions`` topic, never blocking a response.

``submit`` (called by the request handler on the event loop) only appends to a bounded buffer.
A background task hands records to the Kafka producer, keyed by ``request_id`` with the default
murmur2 partitioner, so an impression lands in the same partition number as its clicks and
dwells (the topics are co-partitioned).

When Kafka is slow or unreachable, serving goes on: the buffer holds at most ``max_records``
records and ``max_bytes`` bytes; beyond that the OLDEST impression is dropped and counted. The
oldest goes first because its feedback window in the stream join is the most likely to have
closed already, so it is the least useful one to deliver late. A delivery that fails with a
retriable error goes back to the head of the buffer (at-least-once), space permitting.

``impression_producer_connected`` tells whether the broker answers now, not whether the producer
once started: every ``probe_interval_s`` a metadata request (bounded by ``probe_timeout_s``)
sets it to 1 or 0, and each delivery outcome sets it too (1 on success, 0 on a retriable failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from actor_service.instruments import Instruments

log = logging.getLogger(__name__)

Record = tuple[bytes, bytes]  # (key, value)


class Producer(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def send(self, topic: str, value: bytes | None = ..., key: bytes | None = ...) -> Awaitable[Any]: ...


def retriable(exc: BaseException) -> bool:
    if isinstance(exc, KafkaTimeoutError | KafkaConnectionError | asyncio.TimeoutError):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


class ImpressionLogger:
    def __init__(
        self,
        make_producer: Callable[[], Producer],
        topic: str,
        instruments: Instruments,
        *,
        max_records: int,
        max_bytes: int,
        max_message_bytes: int,
        max_backoff_s: float = 5.0,
        probe_interval_s: float = 2.0,
        probe_timeout_s: float = 2.0,
    ) -> None:
        self._make_producer = make_producer
        self.topic = topic
        self.m = instruments
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_message_bytes = max_message_bytes
        self.max_backoff_s = max_backoff_s
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self._buffer: deque[Record] = deque()
        self._bytes = 0
        self._inflight = 0
        self._wake = asyncio.Event()
        self._producer: Producer | None = None
        self._task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._last_warning = 0.0
        self.m.producer_connected.set(0)

    # ------------------------------------------------------------------ request path
    def submit(self, key: bytes, value: bytes) -> None:
        """Queue one impression. O(1), never blocks, never raises."""
        if len(value) > self.max_message_bytes:
            self.m.impressions.labels("dropped_too_large").inc()
            log.warning(
                "impression %r is %d bytes, over the %d-byte message limit: dropped",
                key,
                len(value),
                self.max_message_bytes,
            )
            return
        self._buffer.append((key, value))
        self._bytes += len(value)
        self._trim()
        self._wake.set()

    def _trim(self) -> None:
        while len(self._buffer) > self.max_records or self._bytes > self.max_bytes:
            _, value = self._buffer.popleft()
            self._bytes -= len(value)
            self.m.impressions.labels("dropped_buffer_full").inc()
        self._gauges()

    def _gauges(self) -> None:
        self.m.impressions_buffered.set(len(self._buffer))
        self.m.impressions_buffered_bytes.set(self._bytes)

    @property
    def pending(self) -> int:
        """Records not yet acknowledged by Kafka (buffered or in flight)."""
        return len(self._buffer) + self._inflight

    # ------------------------------------------------------------------ background task
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="impression-logger")
        self._probe_task = asyncio.create_task(self._probe(), name="impression-producer-probe")

    async def _probe(self) -> None:
        """Keep the connected gauge true while no delivery tells: a metadata round trip."""
        while True:
            await asyncio.sleep(self.probe_interval_s)
            producer = self._producer
            client = getattr(producer, "client", None)
            if client is None:
                continue  # not started (the gauge is 0) or a producer without a client
            try:
                await asyncio.wait_for(client.fetch_all_metadata(), self.probe_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # KafkaError, timeout: the broker does not answer
                if self.m.value("paperec_serving_impression_producer_connected"):
                    log.warning("impression producer lost the broker (%r); buffering", exc)
                self.m.producer_connected.set(0)
            else:
                if producer is self._producer:
                    self.m.producer_connected.set(1)

    async def _connect(self) -> Producer | None:
        producer = self._make_producer()
        try:
            await producer.start()
        except BaseException as exc:
            # Stop what start() left half-open, also when the node shuts down meanwhile.
            with contextlib.suppress(Exception):
                await producer.stop()
            if not isinstance(exc, Exception):
                raise
            self._warn(f"impression producer cannot start ({exc!r}); serving continues, buffering")
            return None
        log.info("impression producer connected, topic %s", self.topic)
        self.m.producer_connected.set(1)
        return producer

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10.0:  # an outage must not flood the log
            self._last_warning = now
            log.warning(message)

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            if self._producer is None:
                self._producer = await self._connect()
                if self._producer is None:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
                    continue
            if not self._buffer:
                self._wake.clear()
                await self._wake.wait()
                continue
            record = self._buffer.popleft()
            self._bytes -= len(record[1])
            self._gauges()
            try:
                # Returns once the record is in the producer's bounded accumulator; waits (here,
                # not in a request) when the accumulator is full or metadata is missing.
                delivery = await self._producer.send(self.topic, value=record[1], key=record[0])
            except Exception as exc:
                self._failed(record, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            backoff = 0.2
            self._inflight += 1
            fut = asyncio.ensure_future(delivery)
            fut.add_done_callback(lambda f, r=record: self._delivered(r, f))

    def _delivered(self, record: Record, fut: asyncio.Future[Any]) -> None:
        self._inflight -= 1
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled():
            exc = asyncio.CancelledError()
        if exc is None:
            self.m.impressions.labels("sent").inc()
            self.m.producer_connected.set(1)
        else:
            self._failed(record, exc)

    def _failed(self, record: Record, exc: BaseException) -> None:
        if retriable(exc):
            self.m.producer_connected.set(0)
        if retriable(exc) and len(self._buffer) < self.max_records:
            self._buffer.appendleft(record)
            self._bytes += len(record[1])
            self.m.impressions.labels("retried").inc()
            self._trim()
            self._wake.set()
            self._warn(f"impression delivery failed ({exc!r}); retrying")
        else:
            self.m.impressions.labels("dropped_failed").inc()
            log.warning("impression %r dropped: %r", record[0], exc)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout_s``, then stop the producer."""
        deadline = time.monotonic() + timeout_s
        while self.pending and self._producer is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in (self._task, self._probe_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.pending:
            log.warning("closing with %d impressions undelivered", self.pending)
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._producer.stop(), max(0.1, deadline - time.monotonic()))
            except Exception as exc:
                log.warning("impression producer did not stop cleanly: %r", exc)
        self.m.producer_connected.set(0)
