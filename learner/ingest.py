"""Ingestion: transitions topic -> decode -> featurize -> replay buffer, on a background thread.

The thread polls a chunk of records, decodes them (``schemas.decode_transition``), drops ids the
buffer has seen, featurizes the rest with **one** ``transition_batch`` call (:func:`prepare`) and
writes them into the ring in one slice assignment under the buffer's short lock
(:meth:`Ingestor.store`). The training thread only ever waits for that lock, never for Kafka,
decoding or featurizing; and ingestion never waits for training (the ring overwrites its oldest
rows).

The thread reads a :class:`ChunkSource`: chunks already decoded and featurized. Decoding and
featurizing are CPU-bound Python: in the training process they hold the GIL the training loop
needs between torch ops. The service therefore polls and prepares in a worker process
(:class:`learner.ingest_process.ProcessSource`), and this thread only stores chunks;
:class:`PreparingSource` prepares on this thread instead (``--no-ingest-process``, tests).
Either reads raw records from a :class:`RecordSource` (Kafka, or memory).

Bad records never stop the thread: a SchemaError (undecodable, or a number beyond the schemas'
float32-safe bound) or FeatureError (widths or objectives the model does not have, a non-finite
featurized value) sends the raw record with its reason and field to the dead-letter topic and
counts it: no non-finite row enters the buffer.

Offsets: ``positions`` (the next offset per partition) move only after a chunk's records are in
the buffer (or dead-lettered, or dropped as duplicates), under ``lock`` together with the buffer
write, so a checkpoint that takes ``lock`` sees buffer contents and offsets that match exactly.
Offsets are committed to Kafka only on request, with the offsets of a written checkpoint
(KafkaConsumer is not thread-safe: the commit runs on this thread, or in the worker process).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from learner.numeric import nonfinite_fields, nonfinite_rows
from learner.replay_buffer import ReplayBuffer
from model.batch import ListBatch
from model.featurize import FeatureError, transition_batch
from model.ranker import RankerConfig
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
    """Where raw records come from: Kafka in the service, memory in tests and benchmarks."""

    def start_positions(self) -> dict[int, int]:
        """Next offset per partition this source reads from (after any seek)."""
        ...

    def poll(self, timeout_s: float, max_records: int) -> Sequence[RawRecord]:
        """Up to ``max_records`` records (none after ``timeout_s``)."""
        ...

    def lag(self) -> int | None:
        """Records behind the end of the input (None when unknown)."""
        ...

    def seek(self, offsets: dict[int, int]) -> None:
        """Read from ``offsets`` next (after a failed chunk)."""
        ...

    def commit(self, offsets: dict[int, int]) -> None: ...

    def close(self) -> None: ...


class ChunkSource(Protocol):
    """What the :class:`Ingestor` reads: a :class:`RecordSource`'s records decoded and featurized
    (by a worker process: ``ProcessSource``; on the ingest thread: :class:`PreparingSource`)."""

    def start_positions(self) -> dict[int, int]: ...

    def poll(self, timeout_s: float, max_records: int) -> PreparedChunk | None:
        """The next chunk of up to ``max_records`` records; None when none came in ``timeout_s``."""
        ...

    def lag(self) -> int | None: ...

    def seek(self, offsets: dict[int, int]) -> None: ...

    def commit(self, offsets: dict[int, int]) -> None: ...

    def close(self) -> None: ...


class PreparingSource:
    """A :class:`ChunkSource` that prepares a :class:`RecordSource`'s records on the polling
    thread; ``unseen`` (the buffer's) drops seen ids before featurizing them."""

    def __init__(
        self,
        records: RecordSource,
        ranker_cfg: RankerConfig,
        unseen: Callable[[Iterable[str]], list[bool]] | None = None,
    ) -> None:
        self.records, self.ranker_cfg, self.unseen = records, ranker_cfg, unseen

    def start_positions(self) -> dict[int, int]:
        return self.records.start_positions()

    def poll(self, timeout_s: float, max_records: int) -> PreparedChunk | None:
        records = self.records.poll(timeout_s, max_records)
        return prepare(records, self.ranker_cfg, self.unseen) if records else None

    def lag(self) -> int | None:
        return self.records.lag()

    def seek(self, offsets: dict[int, int]) -> None:
        self.records.seek(offsets)

    def commit(self, offsets: dict[int, int]) -> None:
        self.records.commit(offsets)

    def close(self) -> None:
        self.records.close()


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
        source: ChunkSource,
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
        lower_priority(self.nice)
        backoff = 0.5
        try:
            while not self._stop.is_set():
                self._commit_pending()
                if not self._running.is_set():
                    self._idle.set()
                    self._running.wait(0.1)
                    continue
                try:
                    chunk = self.source.poll(0.2, self.chunk_size)
                    if chunk is not None:
                        self.store(chunk)
                        self._throttle(len(chunk))
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
        """Prepare ``records`` here (dropping ids the buffer has seen first) and store them."""
        self.store(prepare(records, self.ranker_cfg, self.buffer.unseen))

    def store(self, chunk: PreparedChunk) -> None:
        """Write a prepared chunk into the buffer and move the positions past its records.

        Counters move with the positions (under ``lock``): a checkpoint never counts a record
        its offsets do not cover, so a restart does not count it twice.
        """
        for value, key in chunk.dead_letters:
            try:
                self.dead_letters.send(value, key)
            except Exception as exc:  # counted; losing a dead letter must not stop ingestion
                log.error("dead-letter send failed: %s", exc)
        duplicates = chunk.duplicates
        with self.lock:
            if chunk.batch is not None:
                result = self.buffer.add(chunk.batch, chunk.ids, chunk.ts_ms)
                self.stats.transitions += result.added
                self.stats.truncated += result.truncated
                duplicates += result.duplicates
                self.stats.max_ts_ms = max(self.stats.max_ts_ms, *chunk.ts_ms)
            self.stats.duplicates += duplicates
            self.stats.dead_letters += len(chunk.dead_letters)
            self.stats.records += chunk.records
            for partition, end in chunk.positions.items():
                self.positions[partition] = max(self.positions.get(partition, 0), end)


# ---------------------------------------------------------------------- preparing a chunk
@dataclass
class PreparedChunk:
    """A chunk of records decoded and featurized, ready for one ring write (picklable: a worker
    process sends it to the training process)."""

    records: int  # records consumed (good, bad and duplicate)
    positions: dict[int, int]  # per partition: the offset after the chunk's last record
    batch: ListBatch | None  # the new transitions' rows (None: nothing to store)
    ids: list[str]
    ts_ms: list[int]
    duplicates: int  # dropped before featurizing (ids already seen)
    dead_letters: list[tuple[bytes, bytes | None]]  # encoded dead letters and their keys

    def __len__(self) -> int:
        return self.records


def prepare(
    records: Sequence[RawRecord],
    ranker_cfg: RankerConfig,
    unseen: Callable[[Iterable[str]], list[bool]] | None = None,
) -> PreparedChunk:
    """Decode, drop seen ids (when ``unseen`` is given), featurize: pure apart from logging.

    A SchemaError (undecodable) or FeatureError (widths or objectives the model does not have)
    turns a record into a dead letter with its reason; the other records are kept.
    """
    letters: list[tuple[bytes, bytes | None]] = []
    good: list[tuple[RawRecord, Transition]] = []
    for r in records:
        try:
            good.append((r, decode_transition(r.value)))
        except SchemaError as exc:
            letters.append(_dead_letter(r, exc))
    duplicates = 0
    if unseen is not None:
        fresh = unseen(t.transition_id for _, t in good)
        duplicates = len(good) - sum(fresh)
        good = [g for g, new in zip(good, fresh, strict=True) if new]
    batch, good = _featurize(good, ranker_cfg, letters)
    positions: dict[int, int] = {}
    for r in records:
        positions[r.partition] = max(positions.get(r.partition, 0), r.offset + 1)
    return PreparedChunk(
        records=len(records),
        positions=positions,
        batch=batch,
        ids=[t.transition_id for _, t in good],
        ts_ms=[t.ts_ms for _, t in good],
        duplicates=duplicates,
        dead_letters=letters,
    )


def _featurize(
    good: list[tuple[RawRecord, Transition]],
    ranker_cfg: RankerConfig,
    letters: list[tuple[bytes, bytes | None]],
) -> tuple[ListBatch | None, list[tuple[RawRecord, Transition]]]:
    batch, good = _featurize_valid(good, ranker_cfg, letters)
    if batch is None:
        return batch, good
    # Defence in depth: the schemas bound every number (schemas.MAX_ABS_NUMBER), so featurized
    # rows are finite; a row that is not anyway never enters the buffer.
    bad = nonfinite_rows(batch)
    if not bool(bad.any()):
        return batch, good
    for row in bad.nonzero().flatten().tolist():
        fields = ", ".join(nonfinite_fields(batch, row))
        letters.append(_dead_letter(good[row][0], FeatureError(fields, "non-finite value after featurizing")))
    keep = (~bad).nonzero().flatten()
    if len(keep) == 0:
        return None, []
    return batch.select(keep), [good[i] for i in keep.tolist()]


def _featurize_valid(
    good: list[tuple[RawRecord, Transition]],
    ranker_cfg: RankerConfig,
    letters: list[tuple[bytes, bytes | None]],
) -> tuple[ListBatch | None, list[tuple[RawRecord, Transition]]]:
    """One transition_batch call; on a FeatureError, dead-letter the offending transitions."""
    if not good:
        return None, good
    try:
        return transition_batch([t for _, t in good], ranker_cfg), good
    except FeatureError:
        pass
    # rare path: find the offending transitions one by one, keep the rest
    kept = []
    for r, t in good:
        try:
            transition_batch([t], ranker_cfg)
            kept.append((r, t))
        except (FeatureError, ValueError) as exc:
            letters.append(_dead_letter(r, exc))
    if not kept:
        return None, kept
    return transition_batch([t for _, t in kept], ranker_cfg), kept


def _dead_letter(r: RawRecord, exc: Exception) -> tuple[bytes, bytes | None]:
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
    log.warning("dead letter %s[%d]@%d: %s", r.topic, r.partition, r.offset, str(exc)[:200])
    return encode(letter), r.key


def lower_priority(nice: int) -> None:
    """Raise the calling thread's niceness (Linux: a thread is a task with its own nice value;
    threads it starts afterwards inherit it, so called first in the ingest worker process it
    covers the whole worker).

    Decoding and featurizing are CPU-bound Python; on a machine with few cores they compete with
    the training step's threads for CPU time. A nicer ingestion loses only under contention:
    with idle cores (GPU training, big hosts) it still runs at full speed.
    """
    if nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted: equal priority
        log.warning("could not lower the ingestion's priority: %s", exc)
