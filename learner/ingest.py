"""Ingestion: transitions topic -> decode -> featurize -> replay buffer, on a background thread.

The thread polls a chunk of records, decodes them (``schemas.decode_transition``), drops ids the
buffer has seen, featurizes the rest with **one** ``transition_batch`` call and writes them into
the ring in one slice assignment under the buffer's short lock. The training thread only ever
waits for that lock, never for Kafka, decoding or featurizing; and ingestion never waits for
training (the ring overwrites its oldest rows).

Bad records never stop the thread: a SchemaError (undecodable) or FeatureError (widths or
objectives the model does not have) sends the raw record with its reason to the dead-letter
topic and counts it.

Offsets: ``positions`` (the next offset per partition) move only after a chunk's records are in
the buffer (or dead-lettered, or dropped as duplicates), under ``lock`` together with the buffer
write, so a checkpoint that takes ``lock`` sees buffer contents and offsets that match exactly.
Offsets are committed to Kafka only on request, with the offsets of a written checkpoint
(KafkaConsumer is not thread-safe: the commit runs on this thread).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from learner.batch import ListBatch
from learner.featurize import FeatureError, transition_batch
from learner.ranker import RankerConfig
from learner.replay_buffer import ReplayBuffer
from schemas import SchemaError, Transition, decode_transition, encode, make_dead_letter

log = logging.getLogger(__name__)

STAGE = "learner.ingest"


@dataclass(frozen=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class RecordSource(Protocol):
    """Where transitions come from: Kafka in the service, memory in tests and benchmarks."""

    def start_positions(self) -> dict[int, int]:
        """Next offset per partition this source reads from (after any seek)."""
        ...

    def poll(self, timeout_s: float, max_records: int) -> list[RawRecord]: ...

    def lag(self) -> int | None:
        """Records behind the end of the input (None when unknown)."""
        ...

    def seek(self, offsets: dict[int, int]) -> None:
        """Read from ``offsets`` next (after a failed chunk)."""
        ...

    def commit(self, offsets: dict[int, int]) -> None: ...

    def close(self) -> None: ...


class DeadLetterSink(Protocol):
    def send(self, value: bytes, key: bytes | None) -> None: ...

    def flush(self) -> None: ...


@dataclass
class IngestStats:
    records: int = 0  # records read from the source (every offset consumed)
    transitions: int = 0  # decoded transitions written to the buffer
    duplicates: int = 0
    dead_letters: int = 0
    truncated: int = 0
    errors: int = 0  # unexpected failures of the loop (source down, ...)
    max_ts_ms: int = 0  # latest event time ingested


class Ingestor:
    def __init__(
        self,
        source: RecordSource,
        buffer: ReplayBuffer,
        ranker_cfg: RankerConfig,
        dead_letters: DeadLetterSink,
        *,
        chunk_size: int = 256,
        max_rate: float = 0.0,
        nice: int = 0,
        stats: IngestStats | None = None,
    ) -> None:
        self.source = source
        self.buffer = buffer
        self.ranker_cfg = ranker_cfg
        self.dead_letters = dead_letters
        self.chunk_size = chunk_size
        self.max_rate = max_rate
        self.nice = nice
        self.stats = stats or IngestStats()
        self.positions: dict[int, int] = dict(source.start_positions())
        self.lock = threading.Lock()  # buffer write + positions move together (see module doc)
        self.last_lag: int | None = None
        self._stop = threading.Event()
        self._running = threading.Event()  # cleared by pause()
        self._running.set()
        self._idle = threading.Event()  # set by the thread while paused
        self._commit_request: dict[int, int] | None = None
        self._commit_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="learner-ingest", daemon=True)
        self._bucket, self._bucket_t = 0.0, time.monotonic()  # rate limiter (see _throttle)
        self._chunk_dead_letters = 0

    # ------------------------------------------------------------------ control (any thread)
    def start(self) -> None:
        self._bucket_t = time.monotonic()
        self._thread.start()

    def request_commit(self, offsets: dict[int, int]) -> None:
        """Commit ``offsets`` to Kafka from the ingest thread at its next iteration."""
        with self._commit_lock:
            self._commit_request = dict(offsets)

    def pause(self, timeout_s: float = 60.0) -> bool:
        """Stop polling after the current chunk and wait until the thread is idle (True)."""
        self._idle.clear()  # before _running: a stale "idle" from an earlier pause must not count
        self._running.clear()
        return self._idle.wait(timeout_s) if self._thread.is_alive() else True

    def resume(self) -> None:
        self._running.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop polling (the current chunk is finished first). The source stays open."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def close(self, commit: dict[int, int] | None = None) -> None:
        """After :meth:`stop`: commit ``commit`` (or a pending request) and close the source."""
        if commit is not None:
            self.request_commit(commit)
        self._commit_pending()
        self.source.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def checkpoint_state(self, contents: bool = True) -> tuple[dict[str, Any], dict[int, int], IngestStats]:
        """Buffer state, positions and counters that belong together (for a checkpoint).

        Dead letters are flushed first: once the offsets are checkpointed, the bad records
        before them must be on the dead-letter topic.
        """
        with self.lock:  # flushed under the lock: no chunk can move the positions meanwhile
            self.dead_letters.flush()
            return (
                self.buffer.state_dict(contents),
                dict(self.positions),
                dataclasses.replace(self.stats),
            )

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        _lower_priority(self.nice)
        backoff = 0.5
        try:
            while not self._stop.is_set():
                self._commit_pending()
                if not self._running.is_set():
                    self._idle.set()
                    self._running.wait(0.1)
                    continue
                try:
                    records = self.source.poll(0.2, self.chunk_size)
                    if records:
                        self.ingest(records)
                        self._throttle(len(records))
                    self.last_lag = self.source.lag()
                    backoff = 0.5
                except Exception as exc:  # the thread must survive a broker outage or a bug
                    self.stats.errors += 1
                    log.exception("ingest loop error (retrying in %.1f s): %s", backoff, exc)
                    self._rewind()
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
        finally:
            self._commit_pending()

    def _throttle(self, n: int) -> None:
        """Token bucket: at most ``max_rate`` records/s on average, bursts of one second's worth
        (an idle hour must not bank an hour of full-speed ingestion)."""
        if self.max_rate <= 0:
            return
        now = time.monotonic()
        earned = (now - self._bucket_t) * self.max_rate
        self._bucket = min(self.max_rate, self._bucket + earned) - n
        self._bucket_t = now
        if self._bucket < 0:
            self._stop.wait(-self._bucket / self.max_rate)

    def _rewind(self) -> None:
        """Re-read what a failed chunk had polled but not stored (else it would be skipped)."""
        try:
            with self.lock:
                positions = dict(self.positions)
            self.source.seek(positions)
        except Exception as exc:
            log.warning("rewind to %s failed: %s", positions, exc)

    def _commit_pending(self) -> None:
        with self._commit_lock:
            offsets, self._commit_request = self._commit_request, None
        if offsets:
            try:
                self.source.commit(offsets)
            except Exception as exc:  # the checkpoint holds the offsets; a commit can wait
                log.warning("offset commit failed (checkpoint still has them): %s", exc)

    # ------------------------------------------------------------------ one chunk
    def ingest(self, records: Sequence[RawRecord]) -> None:
        """Decode, dedup, featurize and store ``records``, then move the positions past them.

        Counters move with the positions (under ``lock``): a checkpoint never counts a record
        its offsets do not cover, so a restart does not count it twice.
        """
        self._chunk_dead_letters = 0
        good: list[tuple[RawRecord, Transition]] = []
        for r in records:
            try:
                good.append((r, decode_transition(r.value)))
            except SchemaError as exc:
                self._dead_letter(r, exc)
        fresh = self.buffer.unseen(t.transition_id for _, t in good)
        duplicates = len(good) - sum(fresh)
        good = [g for g, new in zip(good, fresh, strict=True) if new]
        batch, good = self._featurize(good)
        with self.lock:
            if batch is not None:
                result = self.buffer.add(
                    batch, [t.transition_id for _, t in good], [t.ts_ms for _, t in good]
                )
                self.stats.transitions += result.added
                self.stats.truncated += result.truncated
                duplicates += result.duplicates
                self.stats.max_ts_ms = max(self.stats.max_ts_ms, *(t.ts_ms for _, t in good))
            self.stats.duplicates += duplicates
            self.stats.dead_letters += self._chunk_dead_letters
            self.stats.records += len(records)
            for r in records:
                self.positions[r.partition] = max(self.positions.get(r.partition, 0), r.offset + 1)

    def _featurize(
        self, good: list[tuple[RawRecord, Transition]]
    ) -> tuple[ListBatch | None, list[tuple[RawRecord, Transition]]]:
        if not good:
            return None, good
        try:
            return transition_batch([t for _, t in good], self.ranker_cfg), good
        except FeatureError:
            pass
        # rare path: find the offending transitions one by one, keep the rest
        kept = []
        for r, t in good:
            try:
                transition_batch([t], self.ranker_cfg)
                kept.append((r, t))
            except (FeatureError, ValueError) as exc:
                self._dead_letter(r, exc)
        if not kept:
            return None, kept
        return transition_batch([t for _, t in kept], self.ranker_cfg), kept

    def _dead_letter(self, r: RawRecord, exc: Exception) -> None:
        error_field = exc.field if isinstance(exc, SchemaError | FeatureError) else None
        reason = exc.reason if isinstance(exc, SchemaError | FeatureError) else f"{type(exc).__name__}: {exc}"
        letter = make_dead_letter(
            r.value,
            source_topic=r.topic,
            source_partition=r.partition,
            source_offset=r.offset,
            key=r.key,
            stage=STAGE,
            reason=reason,
        )
        if error_field is not None:
            letter = dataclasses.replace(letter, error_field=error_field)
        self._chunk_dead_letters += 1
        log.warning("dead letter %s[%d]@%d: %s", r.topic, r.partition, r.offset, str(exc)[:200])
        try:
            self.dead_letters.send(encode(letter), r.key)
        except Exception as exc2:  # counted; losing a dead letter must not stop ingestion
            log.error("dead-letter send failed: %s", exc2)


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's niceness (Linux: a thread is a task with its own nice value).

    Decoding and featurizing are CPU-bound Python; on a machine with few cores they compete with
    the training step's threads for CPU time. A nicer ingestion thread loses only under
    contention: with idle cores (GPU training, big hosts) it still runs at full speed.
    """
    if nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted: equal priority
        log.warning("could not lower the ingestion thread's priority: %s", exc)


# ---------------------------------------------------------------------- Kafka implementations
class KafkaSource:
    """kafka-python consumer assigned to every partition of one topic (one learner per group).

    Start position per partition: the checkpoint's offset when given, else the group's committed
    offset, else the beginning of the topic.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group_id: str,
        start_offsets: dict[int, int] | None = None,
        wait_s: float = 30.0,
    ) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topic = topic
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
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
            raise RuntimeError(f"topic {topic} not found on {bootstrap} (run `paperec topics create`)")
        self.tps = [TopicPartition(topic, p) for p in sorted(partitions)]
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
    """Dead letters to the dead-letter topic (acks=all; ``flush`` before offsets are checkpointed)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.failed = 0
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50)

    def send(self, value: bytes, key: bytes | None) -> None:
        self.producer.send(self.topic, key=key, value=value).add_errback(self._failed)

    def _failed(self, exc: BaseException) -> None:
        self.failed += 1
        log.error("dead letter not delivered to %s: %s", self.topic, exc)

    def flush(self) -> None:
        self.producer.flush(timeout=10)

    def close(self) -> None:
        self.producer.close(timeout=10)
