"""A ChunkSource whose polling, decoding and featurizing run in a worker process.

Why: decoding a transition and featurizing it is CPU-bound Python. On the ingestion thread it
holds the GIL that the training loop needs between torch ops, and with an unbounded backlog the
training loop ran at 0.15x its bare speed on 2 cores. In a worker process it competes only for
a CPU core, which the operating system shares (and the worker runs at a lower priority).

    source = ProcessSource(partial(KafkaSource, settings, topic, group), ranker_cfg, start)
    ingestor = Ingestor(source, buffer, ranker_cfg, dead_letters)   # stores what poll returns

The worker (``base.worker_process``: spawned, start-up errors reach the parent, an early exit is
reported at once) builds its source with ``factory(start_offsets)``, polls chunks, turns each into a
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

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

from base.worker_process import WorkerFailed, WorkerLink, WorkerProcess
from learner.ingest import PreparedChunk, RecordSource, lower_priority, prepare
from model.ranker import RankerConfig

log = logging.getLogger(__name__)

SourceFactory = Callable[[dict[int, int] | None], RecordSource]
"""Builds the worker's source, reading from the given offsets (None: its own default). It is
pickled into the worker process: a ``functools.partial`` of a class, or a module-level function."""

_PUT_WAIT_S = 0.2  # how often a worker blocked on a full queue looks at its requests


class _IngestWorker:
    """The worker process's loop: poll, prepare, send; serve commit, seek and stop requests."""

    def __init__(self, link: WorkerLink, source: RecordSource, ranker_cfg: RankerConfig, chunk_size: int):
        self.link, self.source = link, source
        self.ranker_cfg, self.chunk_size = ranker_cfg, chunk_size
        self.generation, self.stopping = 0, False

    def done(self) -> bool:
        return self.stopping or self.link.orphaned()

    def handle(self, request: tuple[Any, ...]) -> str:
        kind = request[0]
        if kind == "commit":
            try:
                self.source.commit(request[1])
            except Exception as exc:  # the checkpoint holds the offsets; a commit can wait
                log.warning("offset commit failed (checkpoint still has them): %s", exc)
        elif kind == "seek":
            self.source.seek(request[1])
            self.generation = request[2]
        elif kind == "stop":
            self.stopping = True
        return str(kind)

    def handle_pending(self) -> set[str]:
        seen = set()
        while (request := self.link.receive()) is not None:
            seen.add(self.handle(request))
        return seen

    def put(self, message: tuple[Any, ...]) -> None:
        """Blocks while the queue is full, serving requests meanwhile; a seek or stop drops it."""
        while not self.done():
            try:
                self.link.send(message, timeout_s=_PUT_WAIT_S)
                return
            except queue.Full:
                if self.handle_pending() & {"seek", "stop"}:
                    return

    def run(self) -> None:
        while not self.done():
            if self.handle_pending() & {"stop"}:
                break
            try:
                records = self.source.poll(0.2, self.chunk_size)
                chunk = prepare(records, self.ranker_cfg) if records else None
                lag = self.source.lag()
            except Exception as exc:
                log.exception("ingest worker error: %s", exc)
                before = self.generation  # every seek moves it (a seek may even come while we put)
                self.put(("error", self.generation, f"{type(exc).__name__}: {exc}"))
                while self.generation == before and not self.done():  # wait for the rewind
                    if (request := self.link.receive(_PUT_WAIT_S)) is not None:
                        self.handle(request)
                continue
            if chunk is not None:
                self.put(("chunk", self.generation, chunk, lag))


def _ingest_worker(
    link: WorkerLink,
    factory: SourceFactory,
    ranker_cfg: RankerConfig,
    start: dict[int, int] | None,
    chunk_size: int,
    nice: int,
) -> None:
    import torch

    # kafka-python warns when its poll task runs long, which a niced worker on a busy machine
    # does by design (it gets the CPU training leaves over)
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    torch.set_num_threads(1)  # featurizing is small tensor work; leave the cores to training
    lower_priority(nice)  # before the source starts any thread: they inherit it
    source = factory(start)  # an exception here is the parent's start-up error
    try:
        link.ready(source.start_positions())
        _IngestWorker(link, source, ranker_cfg, chunk_size).run()
    finally:
        source.close()


class ProcessSource:
    """A :class:`~learner.ingest.ChunkSource` whose chunks are prepared in a worker process.

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
        self._generation = 0
        self._lag: int | None = None
        self.restarts = 0
        self.worker: WorkerProcess
        self._start = self._spawn(start)

    def _spawn(self, start: dict[int, int] | None) -> dict[int, int]:
        self.worker = WorkerProcess(
            _ingest_worker,
            self.factory,
            self.ranker_cfg,
            start,
            self.chunk_size,
            self.nice,
            name="ingest worker",
            backlog=self.prefetch,
            log_tag="ingest",
            # chunks it prepared but nobody read are read again from the stored positions
            drop_unsent_on_exit=True,
        )
        self.worker.start()
        positions = self.worker.wait_ready(self.start_timeout_s)
        return {int(p): int(o) for p, o in positions.items()}

    @property
    def alive(self) -> bool:
        return self.worker.alive

    def start_positions(self) -> dict[int, int]:
        return dict(self._start)

    def poll(self, timeout_s: float, max_records: int) -> PreparedChunk | None:
        message = self.worker.receive(timeout_s)
        if message is None:
            return None
        kind, generation = message[0], message[1]
        if generation != self._generation:  # prepared before the last seek: read again after it
            return None
        if kind == "error":
            raise WorkerFailed(f"ingest worker: {message[2]}")
        chunk: PreparedChunk = message[2]
        self._lag = message[3]
        return chunk

    def lag(self) -> int | None:
        return self._lag

    def wait_full(self, timeout_s: float = 10.0) -> bool:
        """Wait until ``prefetch`` chunks are waiting (the worker then blocks and uses no CPU):
        benchmarks pause ingestion with this before timing the training loop alone."""
        deadline = time.monotonic() + timeout_s
        while not self.worker.backlog_full() and self.worker.alive:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def seek(self, offsets: dict[int, int]) -> None:
        self._generation += 1
        if not self.worker.alive:
            self.restarts += 1
            log.warning("restarting the ingest worker at %s", offsets)
            self._generation = 0
            self._spawn(dict(offsets))
            return
        self.worker.send(("seek", dict(offsets), self._generation))

    def commit(self, offsets: dict[int, int]) -> None:
        self.worker.send(("commit", dict(offsets)))

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the worker after the requests before this one (a final commit) are done."""
        self.worker.stop(timeout_s, request=("stop",))
