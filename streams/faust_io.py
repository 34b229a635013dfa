"""The one module that uses Faust's (and aiokafka's, through Faust) private attributes: the
adapter between the stages (``streams.stage_io.StageIO``) and faust-streaming.

It is written against exactly ``FAUST_STREAMING_VERSION`` (pinned in pyproject.toml);
``tests/unit/test_streams_faust_io.py`` exercises every private used here against the installed
version, so an upgrade that changes one fails that test by name. What it uses, and why:

* ``Consumer._drain_messages`` (overridden: the fetch loop), with ``_wait_next_records``,
  ``_read_offset``, ``_to_message``, ``_add_gap`` and ``_stopped``: the batch path for the
  stage topics (streams.batching explains why per-message delivery is too slow).
* ``App._new_transport``: to install that consumer (Faust has no setting for a consumer class).
* ``Consumer._committed_offset``: the committed offset Faust knows, without a broker round trip.
* ``Consumer._thread._ensure_consumer()``: the aiokafka consumer, for its public
  ``last_poll_timestamp`` (when the broker last answered a fetch; the watermarks' idle rule).
* ``Consumer._acked``, ``_acked_index``, ``_n_acked``, ``_waiting_for_ack``: Faust's ack
  bookkeeping, done here for a whole step at once (``consumer.ack`` per record costs a lock
  and a wake-up each, ~1 us per record).
* ``Producer._ensure_producer``: the started aiokafka producer, for its public batch API
  (``create_batch``/``send_batch``; Faust's ``send`` costs ~15 us per record).
* ``Table._changelog_topic_name``: a changelog topic name that does not derive from the app id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping, Sequence
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import Message
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from streams.batching import BatchSink, route_fetch
from streams.stage_io import BatchProducer, InputRecord

log = logging.getLogger(__name__)

FAUST_STREAMING_VERSION = "0.15.3"
"""The faust-streaming release this adapter is written and tested against (pinned exactly)."""


class BatchingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose fetch loop delivers the records of topics with a sink in
    ``app.batch_sinks`` as lists, and everything else per message as before."""

    async def _drain_messages(self, fetcher: Any) -> None:  # replaces Consumer._drain_messages
        sinks: dict[str, BatchSink] = getattr(self.app, "batch_sinks", {})
        callback = self.callback
        acks_enabled_for = self.app.topics.acks_enabled_for
        consumer_stopped = cast(Any, self)._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                await self.sleep(0)
                if self.should_stop:
                    break
                records, _ = await self._wait_next_records(1.0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    # Mid-rebalance: drop the fetch; Faust seeks back to committed offsets.
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        log.warning("seek while flow inactive failed: %r", exc)
                    continue
                for tp in records:
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                fetch = route_fetch(
                    records,
                    self._read_offset,
                    sinks.get,
                    acks_enabled_for,
                    self._to_message,
                    offset_of=lambda record: record.offset,
                )
                for tp, start, end in fetch.gaps:
                    await self._add_gap(tp, start, end)
                for message in fetch.singles:
                    await self.wait_first(callback(message), self.suspend_flow.wait())
                for sink, batch in fetch.batches.items():
                    await self.wait_first(sink.put(batch), self.suspend_flow.wait())
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise


class BatchingTransport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer


class BatchingApp(faust.App):
    """A Faust app whose consumer supports batch sinks (``register_batch_sink``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_sinks: dict[str, BatchSink] = {}

    def _new_transport(self) -> Any:
        return BatchingTransport(self.conf.broker_consumer, self)

    def register_batch_sink(self, topics: list[str], sink: BatchSink) -> None:
        for t in topics:
            self.batch_sinks[t] = sink


class PlannedTable(faust.Table):
    """A Faust table whose changelog topic has the planned name (base.topics), whatever the
    app id: the link stage's app has an id (consumer group) of its own."""

    def __init__(self, *args: Any, changelog_name: str, **kwargs: Any) -> None:
        self._planned_changelog = changelog_name
        super().__init__(*args, **kwargs)

    def _changelog_topic_name(self) -> str:
        return self._planned_changelog


class FaustStageIO:
    """``StageIO`` of one stage over a Faust app and the stage's table."""

    def __init__(self, app: faust.App, table: faust.Table) -> None:
        self.app = app
        self._table = table

    def assignment(self) -> set[Any]:
        return set(self.app.consumer.assignment())

    def highwater(self, tp: Any) -> int | None:
        return self.app.consumer.highwater(tp)

    def last_fetch_ms(self, tp: Any) -> int | None:
        # aiokafka's public AIOKafkaConsumer.last_poll_timestamp: set (time.time, ms) on every
        # fetch response without error for tp, empty or not; untouched while fetches fail or
        # hang. Faust has no public way to its aiokafka consumer, hence the private hop.
        aiokafka_consumer = cast(Any, self.app.consumer)._thread._ensure_consumer()
        stamp: int | None = aiokafka_consumer.last_poll_timestamp(tp)
        return stamp

    def committed(self, tp: Any) -> int | None:
        committed: int | None = cast(Any, self.app.consumer)._committed_offset[tp]
        return committed

    def pause(self, tps: Sequence[Any]) -> None:
        self.app.consumer.pause_partitions(tps)

    def resume(self, tps: Sequence[Any]) -> None:
        self.app.consumer.resume_partitions(tps)

    def is_current(self, record: InputRecord) -> bool:
        return bool(cast(Message, record).generation_id == self.app.consumer_generation_id)

    def ack(self, records: Sequence[InputRecord]) -> None:
        """``consumer.ack`` for a whole step at once: the same bookkeeping (offsets Faust may
        commit, contiguously), one lock and one wake-up for all."""
        consumer: Any = self.app.consumer
        committed, acked, acked_index = consumer._committed_offset, consumer._acked, consumer._acked_index
        enabled = self.app.topics.acks_enabled_for
        n = 0
        with ack_lock:
            for r in records:
                m = cast(Message, r)
                if m.acked:
                    continue
                m.acked = True
                tp, offset = m.tp, m.offset
                if enabled(m.topic):
                    low = committed[tp]
                    if low is None or offset >= low:
                        index = acked_index[tp]
                        if offset not in index:
                            index.add(offset)
                            acked[tp].append(offset)
                            n += 1
            consumer._n_acked += n
            notify(consumer._waiting_for_ack)

    def producer(self) -> BatchProducer:
        return cast(BatchProducer, cast(Any, self.app.producer)._ensure_producer())

    @property
    def table(self) -> MutableMapping[bytes, bytes]:
        return cast(MutableMapping[bytes, bytes], self._table.data)

    @property
    def changelog_topic(self) -> str:
        return self._table.changelog_topic.get_topic_name()

    async def crash(self, exc: BaseException) -> None:
        await self.app.crash(exc)


def crashed(app: faust.App) -> bool:
    """Whether the app stopped because it crashed (an agent raised, or a stage called crash)."""
    return app.crash_reason is not None
