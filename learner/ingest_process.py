"""A RecordSource whose polling, decoding and featurizing run in a worker process.

Why: decoding a transition and featurizing it is CPU-bound Python. On the ingestion thread it
holds the GIL that the training loop needs between torch ops, and with an unbounded backlog the
training loop ran at 0.15x its bare speed on 2 cores. In a worker process it competes only for
a CPU core, which the operating system shares (and the worker runs at a lower priority).

    source = ProcessSource(partial(KafkaSource, bootstrap, topic, group), ranker_cfg, start)
    ingestor = Ingestor(source, buffer, ranker_cfg, dead_letters)   # stores what poll returns

The worker builds its source with ``factory(start_offsets)``, polls chunks, turns each into a
:class:`~learner.ingest.PreparedChunk` (no dedup there: the buffer drops seen ids when storing)
and puts it on a bounded queue: it prefetches at most ``prefetch`` chunks, so a paused or slow
consumer stops it (back-pressure) instead of growing memory. A chunk's tensors travel through
shared memory (torch's multiprocessing reductions pass a file descriptor per tensor, closed
once the chunk is stored and freed), the rest is pickled.

Requests travel the other way, in order: ``commit`` (the worker owns the Kafka consumer),
``seek`` (after a failed chunk; chunks prepared before the seek carry an older *generation* and
are dropped by :meth:`ProcessSource.poll`) and ``stop``. After reporting an error the worker
waits for the rewind (``seek``) its reader always sends. A worker that died is restarted by the
next ``seek``, at the offsets the reader stored last, so nothing it had read is lost.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from typing import Any

from learner.ingest import PreparedChunk, RawRecord, RecordSource, lower_priority, prepare
from model.ranker import RankerConfig

log = logging.getLogger(__name__)

SourceFactory = Callable[[dict[int, int] | None], RecordSource]
"""Builds the worker's source, reading from the given offsets (None: its own default). It is
pickled into the worker process: a ``functools.partial`` of a class, or a module-level function."""

_PUT_WAIT_S = 0.2  # how often a worker blocked on a full queue looks at its requests


def _worker(
    factory: SourceFactory,
    ranker_cfg: RankerConfig,
    start: dict[int, int] | None,
    chunk_size: int,
    nice: int,
    log_level: int,
    requests: Any,  # mp.Queue of requests, in order
    chunks: Any,  # mp.Queue (bounded) of ("hello"|"chunk"|"error", generation, ...)
) -> None:
    import torch

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[ingest]: %(message)s")
    # kafka-python warns when its poll task runs long, which a niced worker on a busy machine
    # does by design (it gets the CPU training leaves over)
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    torch.set_num_threads(1)  # featurizing is small tensor work; leave the cores to training
    lower_priority(nice)  # before the source starts any thread: they inherit it
    try:
        source = factory(start)
    except Exception as exc:
        # returning joins the queue's feeder thread, so this reaches the parent (it waits for it)
        chunks.put(("error", 0, f"source: {type(exc).__name__}: {exc}"))
        return
    # from here, exiting with unread chunks must not hang (they were not stored). Not earlier:
    # a cancelled join drops what the feeder thread has not written yet, the error above too
    chunks.cancel_join_thread()
    generation, stopping = 0, False
    parent = os.getppid()

    def orphaned() -> bool:
        """The training process is gone (SIGKILL): nobody will read or stop us."""
        return os.getppid() != parent

    def handle(request: tuple[Any, ...]) -> str:
        nonlocal generation, stopping
        kind = request[0]
        if kind == "commit":
            try:
                source.commit(request[1])
            except Exception as exc:  # the checkpoint holds the offsets; a commit can wait
                log.warning("offset commit failed (checkpoint still has them): %s", exc)
        elif kind == "seek":
            source.seek(request[1])
            generation = request[2]
        elif kind == "stop":
            stopping = True
        return str(kind)

    def handle_pending() -> set[str]:
        seen = set()
        while True:
            try:
                seen.add(handle(requests.get_nowait()))
            except queue.Empty:
                return seen

    def put(message: tuple[Any, ...]) -> None:
        """Blocks while the queue is full, serving requests meanwhile; a seek or stop drops it."""
        while not stopping and not orphaned():
            try:
                chunks.put(message, timeout=_PUT_WAIT_S)
                return
            except queue.Full:
                if handle_pending() & {"seek", "stop"}:
                    return

    chunks.put(("hello", generation, source.start_positions()))
    try:
        while not stopping and not orphaned():
            if handle_pending() & {"stop"}:
                break
            try:
                records: Any = source.poll(0.2, chunk_size)
                chunk = prepare(records, ranker_cfg) if records else None
                lag = source.lag()
            except Exception as exc:
                log.exception("ingest worker error: %s", exc)
                before = generation  # every seek moves it (a seek may even come while we put)
                put(("error", generation, f"{type(exc).__name__}: {exc}"))
                while generation == before and not stopping and not orphaned():  # wait for the rewind
                    with contextlib.suppress(queue.Empty):
                        handle(requests.get(timeout=_PUT_WAIT_S))
                continue
            if chunk is not None:
                put(("chunk", generation, chunk, lag))
    finally:
        source.close()


class ProcessSource:
    """A :class:`~learner.ingest.RecordSource` that returns chunks prepared in a worker process.

    ``poll``'s ``max_records`` is ignored: the worker's chunks have ``chunk_size`` records.
    """

    def __init__(
        self,
        factory: SourceFactory,
        ranker_cfg: RankerConfig,
        start: dict[int, int] | None = None,
        *,
        chunk_size: int = 256,
        nice: int = 0,
        prefetch: int = 4,
        start_timeout_s: float = 120.0,
    ) -> None:
        self.factory, self.ranker_cfg = factory, ranker_cfg
        self.chunk_size, self.nice, self.prefetch = chunk_size, nice, prefetch
        self.start_timeout_s = start_timeout_s
        self._ctx = mp.get_context("spawn")  # fork would copy the training process's threads
        self._generation = 0
        self._lag: int | None = None
        self.restarts = 0
        self._start = self._spawn(start)

    def _spawn(self, start: dict[int, int] | None) -> dict[int, int]:
        self._requests = self._ctx.Queue()
        self._chunks = self._ctx.Queue(maxsize=self.prefetch)
        self._proc = self._ctx.Process(
            target=_worker,
            args=(
                self.factory,
                self.ranker_cfg,
                start,
                self.chunk_size,
                self.nice,
                logging.getLogger().getEffectiveLevel(),
                self._requests,
                self._chunks,
            ),
            name="paperec-learner-ingest",
            daemon=True,
        )
        self._proc.start()
        kind, _, payload = self._first_message()
        if kind != "hello":
            self._proc.join(5)
            raise RuntimeError(f"ingest worker failed to start: {payload}")
        return {int(p): int(o) for p, o in payload.items()}

    def _first_message(self) -> tuple[Any, ...]:
        """The worker's hello (or its error); a worker that exits or hangs instead is reported."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            exited = not self._proc.is_alive()
            try:  # after an exit, once more: what it wrote before exiting is in the pipe
                message: tuple[Any, ...] = self._chunks.get(timeout=0 if exited else 0.5)
                return message
            except queue.Empty:
                pass
            if exited:
                raise RuntimeError(f"ingest worker exited (code {self._proc.exitcode}) before starting")
            if time.monotonic() > deadline:
                self._proc.kill()
                raise RuntimeError(f"ingest worker did not start within {self.start_timeout_s:.0f} s")

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    def start_positions(self) -> dict[int, int]:
        return dict(self._start)

    def poll(self, timeout_s: float, max_records: int) -> list[RawRecord] | PreparedChunk:
        try:
            message = self._chunks.get(timeout=timeout_s)
        except queue.Empty:
            if not self._proc.is_alive():
                raise RuntimeError(f"ingest worker exited (code {self._proc.exitcode})") from None
            return []
        kind, generation = message[0], message[1]
        if generation != self._generation:  # prepared before the last seek: read again after it
            return []
        if kind == "error":
            raise RuntimeError(f"ingest worker: {message[2]}")
        chunk: PreparedChunk = message[2]
        self._lag = message[3]
        return chunk

    def lag(self) -> int | None:
        return self._lag

    def wait_full(self, timeout_s: float = 10.0) -> bool:
        """Wait until ``prefetch`` chunks are waiting (the worker then blocks and uses no CPU):
        benchmarks pause ingestion with this before timing the training loop alone."""
        deadline = time.monotonic() + timeout_s
        while not self._chunks.full() and self._proc.is_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def seek(self, offsets: dict[int, int]) -> None:
        self._generation += 1
        if not self._proc.is_alive():
            self.restarts += 1
            log.warning("restarting the ingest worker at %s", offsets)
            self._generation = 0
            self._spawn(dict(offsets))
            return
        self._requests.put(("seek", dict(offsets), self._generation))

    def commit(self, offsets: dict[int, int]) -> None:
        self._requests.put(("commit", dict(offsets)))

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the worker after the requests before this one (a final commit) are done."""
        if self._proc.is_alive():
            self._requests.put(("stop",))
            self._proc.join(timeout_s)
        if self._proc.is_alive():
            log.warning("ingest worker did not stop within %.0f s: killing it", timeout_s)
            self._proc.kill()
            self._proc.join(5)
