"""Batched, bounded, non-blocking writes of metric rows to ClickHouse.

Producers (the stream join, the training loop, request handlers) call ``add`` which only appends
to a bounded in-memory buffer: it never blocks and never raises. A background thread flushes
batches every ``flush_interval_s``; when ClickHouse is down it keeps the rows and retries with
backoff, and when the buffer is full the *oldest* rows are dropped and counted, so memory stays
bounded during an outage and the hot path never waits on ClickHouse.

Inserts are therefore at-least-once: an insert that timed out may have landed and is sent again.
So every row gets a ``row_id`` column when it is added (``row_id(row)`` when the caller knows a
natural key, else this writer's random run id and the row's number), the same on every retry;
the tables deduplicate on it (base.metrics_store).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

log = logging.getLogger(__name__)


class InsertClient(Protocol):
    def execute(self, query: str, params: Any = ...) -> Any: ...


@dataclass
class WriterStats:
    added: int = 0
    written: int = 0
    dropped: int = 0
    failed_flushes: int = 0


class MetricsWriter:
    def __init__(
        self,
        connect: Callable[[], InsertClient],
        table: str,
        columns: Sequence[str],
        max_buffer: int = 100_000,
        batch_size: int = 5_000,
        flush_interval_s: float = 1.0,
        max_backoff_s: float = 10.0,
        row_id: Callable[[tuple[Any, ...]], str] | None = None,
    ) -> None:
        self._connect = connect
        self._insert_sql = f"INSERT INTO {table} ({', '.join([*columns, 'row_id'])}) VALUES"
        self._row_id = row_id
        self._run_id = uuid.uuid4().hex[:16]  # rows of another writer (or run) never share an id
        self._buffer: deque[tuple[Any, ...]] = deque()
        self._head_seq = 0  # sequence number of self._buffer[0]; rows are numbered as added
        self._max_buffer = max_buffer
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._max_backoff_s = max_backoff_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._client: InsertClient | None = None
        self.stats = WriterStats()
        self._thread = threading.Thread(target=self._run, name=f"metrics-writer[{table}]", daemon=True)
        self._thread.start()

    def add(self, row: tuple[Any, ...]) -> None:
        """Queue one row (its row id appended); never blocks on ClickHouse. Drops the oldest row
        when full."""
        with self._lock:
            rid = self._row_id(row) if self._row_id else f"{self._run_id}-{self.stats.added}"
            row = (*row, rid)
            if len(self._buffer) >= self._max_buffer:
                self._buffer.popleft()
                self._head_seq += 1
                self.stats.dropped += 1
            self._buffer.append(row)
            self.stats.added += 1

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Ask the writer to flush now and wait until the buffer is empty (True) or timeout."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
            self._wake.set()
        return self.pending() == 0

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what can be flushed within the timeout, then stop the thread."""
        self.flush(timeout_s)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    # ---------------------------------------------------------------- background thread
    def _take_batch(self) -> tuple[int, list[tuple[Any, ...]]]:
        with self._lock:
            n = min(len(self._buffer), self._batch_size)
            return self._head_seq, [self._buffer[i] for i in range(n)]

    def _commit_batch(self, start_seq: int, n: int) -> None:
        # Remove only rows that were written; rows dropped from the left while the insert ran
        # have already advanced _head_seq, so count from sequence numbers, not positions.
        with self._lock:
            for _ in range(max(0, start_seq + n - self._head_seq)):
                self._buffer.popleft()
                self._head_seq += 1
            self.stats.written += n

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            self._wake.wait(self._flush_interval_s)
            self._wake.clear()
            while True:
                start_seq, batch = self._take_batch()
                if not batch:
                    break
                try:
                    if self._client is None:
                        self._client = self._connect()
                    self._client.execute(self._insert_sql, batch)
                except Exception as exc:  # any ClickHouse/network error: keep rows, retry later
                    self.stats.failed_flushes += 1
                    self._client = None
                    log.warning("metrics insert failed (%d rows kept): %s", self.pending(), exc)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self._max_backoff_s)
                    break
                backoff = 0.2
                self._commit_batch(start_seq, len(batch))


def now_utc() -> datetime:
    """Second-resolution timestamp for DateTime columns."""
    return datetime.fromtimestamp(int(time.time()))
