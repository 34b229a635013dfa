"""Kafka implementations of the ingestion's source and dead-letter sink."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from base import kafka as kafka_clients
from base.settings import Settings
from learner.ingest import RawRecord

log = logging.getLogger(__name__)


class KafkaSource:
    """kafka-python consumer assigned to every partition of one topic (one learner per group).

    Data-parallel learner (``world_size`` > 1): rank ``rank`` is assigned the partitions p with
    p % world_size == rank (manual assignment, no rebalancing); offsets are committed per
    partition, so a job of another world size re-splits the partitions and reads on from them.

    Start position per partition: the checkpoint's offset when given, else the group's committed
    offset, else the beginning of the topic.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        group_id: str,
        start_offsets: dict[int, int] | None = None,
        wait_s: float = 30.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        from kafka import TopicPartition

        self.topic = topic
        self.consumer = kafka_clients.consumer(
            settings,
            group_id=group_id,
            client_id=f"paperec-learner-{group_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        deadline = time.monotonic() + wait_s
        partitions = self.consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.5)
            partitions = self.consumer.partitions_for_topic(topic)
        if not partitions:
            self.consumer.close()
            raise RuntimeError(
                f"topic {topic} not found on {settings.kafka_bootstrap} (run `paperec topics create`)"
            )
        mine = [p for p in sorted(partitions) if p % world_size == rank]
        if not mine:
            self.consumer.close()
            raise RuntimeError(
                f"rank {rank} of {world_size}: {topic} has only {len(partitions)} partitions "
                "(a data-parallel learner needs at least one per rank)"
            )
        self.tps = [TopicPartition(topic, p) for p in mine]
        self.consumer.assign(self.tps)
        start_offsets = start_offsets or {}
        for tp in self.tps:
            if tp.partition in start_offsets:
                self.consumer.seek(tp, start_offsets[tp.partition])
            else:
                committed = self.consumer.committed(tp)
                if committed is not None:
                    self.consumer.seek(tp, committed)
                else:
                    self.consumer.seek_to_beginning(tp)
        # position() resolves seeks (and resets an offset that retention deleted to the earliest)
        self._start = {tp.partition: int(self.consumer.position(tp)) for tp in self.tps}
        self._last_lag_check = 0.0
        self._lag: int | None = None

    def start_positions(self) -> dict[int, int]:
        return dict(self._start)

    def poll(self, timeout_s: float, max_records: int) -> list[RawRecord]:
        polled = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out = [
            RawRecord(m.topic, m.partition, m.offset, m.key, m.value)
            for msgs in polled.values()
            for m in msgs
        ]
        return out

    def lag(self) -> int | None:
        # end offsets are a broker round trip: refresh every few seconds, not every poll
        now = time.monotonic()
        if now - self._last_lag_check >= 2.0:
            self._last_lag_check = now
            try:
                ends = self.consumer.end_offsets(self.tps)
                self._lag = sum(max(0, ends[tp] - self.consumer.position(tp)) for tp in self.tps)
            except Exception as exc:
                log.debug("lag unavailable: %s", exc)
        return self._lag

    def seek(self, offsets: dict[int, int]) -> None:
        for tp in self.tps:
            if tp.partition in offsets:
                self.consumer.seek(tp, offsets[tp.partition])

    def commit(self, offsets: dict[int, int]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        self.consumer.commit(
            {TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
        )

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class KafkaDeadLetters:
    """Dead letters to the dead-letter topic (acks=all; ``flush`` before offsets are committed).

    Never raises and never waits long for the broker: ``send`` gives up after ``max_block_s``
    when the producer's buffer is full or the topic's metadata is missing, and ``flush`` after
    ``flush_timeout_s``, returning False (``flushed`` stays False until a flush succeeds). The
    checkpoint holds the offsets anyway; only their commit waits for a successful flush
    (docs/learner_service.md, "Broker outages").
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        flush_timeout_s: float = 2.0,
        max_block_s: float = 5.0,
        producer: Any = None,
    ) -> None:
        self.topic = topic
        self.failed = 0
        self.flush_failures = 0
        self.flushed = True  # everything sent so far is acknowledged
        self.flush_timeout_s = flush_timeout_s
        if producer is None:
            producer = kafka_clients.producer(
                settings, acks="all", linger_ms=50, max_block_ms=int(max_block_s * 1000)
            )
        self.producer = producer

    def send(self, value: bytes, key: bytes | None) -> None:
        self.flushed = False
        try:
            self.producer.send(self.topic, key=key, value=value).add_errback(self._failed)
        except Exception as exc:  # buffer full or no metadata within max_block_s: the broker is away
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.failed += 1
        log.error("dead letter not delivered to %s: %s", self.topic, exc)

    def flush(self) -> None:
        """Wait up to ``flush_timeout_s`` for every dead letter sent so far; ``flushed`` says
        whether they all were acknowledged (or given up on)."""
        try:
            self.producer.flush(timeout=self.flush_timeout_s)
        except Exception as exc:  # KafkaTimeoutError while the broker is down: try again later
            self.flush_failures += 1
            log.warning("dead letters not flushed within %.1f s: %s", self.flush_timeout_s, exc)
            return
        self.flushed = True

    def close(self) -> None:
        try:
            self.producer.close(timeout=10)
        except Exception as exc:
            log.warning("dead-letter producer did not close cleanly: %s", exc)


class FlushableDeadLetters(Protocol):
    flushed: bool

    def flush(self) -> None: ...


class CommitAfterFlush:
    """The offsets of the newest checkpoint, committed once the dead letters before them are
    acknowledged: while the broker is away the commit waits (the checkpoint file holds the
    offsets, so nothing is lost meanwhile) and is retried every ``retry_s`` from the training
    loop's ``poll``, with the newest checkpoint's offsets."""

    def __init__(
        self,
        dead_letters: FlushableDeadLetters,
        commit: Callable[[dict[int, int]], None],
        retry_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dead_letters = dead_letters
        self.commit = commit
        self.retry_s = retry_s
        self.clock = clock
        self.pending: dict[int, int] | None = None
        self.deferred = 0  # commits put off because the dead letters were not out
        self._last_try = 0.0

    def offer(self, positions: dict[int, int]) -> None:
        """After a checkpoint was written (its ``checkpoint_state`` flushed the dead letters)."""
        self.pending = dict(positions)
        self._try(flush=False)

    def poll(self) -> None:
        """Retry a deferred commit when due (cheap when there is none)."""
        if self.pending is not None and self.clock() - self._last_try >= self.retry_s:
            self._try(flush=True)

    def _try(self, flush: bool) -> None:
        self._last_try = self.clock()
        if flush and not self.dead_letters.flushed:
            self.dead_letters.flush()
        if self.dead_letters.flushed and self.pending is not None:
            self.commit(self.pending)
            self.pending = None
        else:
            self.deferred += 1
            log.warning("offset commit deferred: dead letters not acknowledged (broker down?)")
