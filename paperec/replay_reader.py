"""Reading a recorded log for ``paperec replay`` in a worker process.

Why: parsing and validating a line (``schemas.decode``) and encoding it again cost about as much
CPU as sending it, and kafka-python's sender thread needs the same interpreter lock. In a worker
process, reading, validation and time ordering run beside the producer; the replaying process
receives batches of plain tuples (cheap to pickle, unlike event objects) and only sends.

The worker does exactly what the in-process reader does (``read_lines`` then ``in_time_order``),
so the order, the line numbers and the reasons of bad lines are the same. The process is
:class:`base.worker_process.WorkerProcess` (a file it cannot open is its start-up error).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from base.worker_process import WorkerFailed, WorkerLink, WorkerProcess
from schemas import encode
from simulator.logfile import BadLine, LogLine, in_time_order, read_lines

BATCH = 2_000  # items per message from the worker
PREFETCH = 16  # batches the worker may run ahead of the sender


class EncodedEvent(NamedTuple):
    """An event as the worker hands it over: what routing and pacing need, and its encoding."""

    type: str
    ts_ms: int
    request_id: str
    value: bytes  # schemas.encode(event)


class EncodedLine(NamedTuple):
    line_no: int
    event: EncodedEvent


def read_in_order(
    path: Path | str, window: int, on_bytes: Callable[[int], None]
) -> Iterator[LogLine | BadLine]:
    """The log's items re-ordered by ``ts_ms`` within ``window`` events; ``on_bytes(n)`` for
    every line read (progress). What both the worker and an in-process reader yield."""
    with open(path, "rb") as f:

        def lines() -> Iterator[bytes]:
            for raw in f:
                on_bytes(len(raw))
                yield raw

        yield from in_time_order(read_lines(lines()), window)


def _read_worker(link: WorkerLink, path: str, window: int) -> None:
    """In the worker: ``(bytes read so far, items as plain tuples)`` batches, then ``(bytes, None)``."""
    open(path, "rb").close()  # a file it cannot open: the start-up error the parent raises
    link.ready()
    done = 0
    batch: list[tuple[Any, ...]] = []

    def count(n: int) -> None:
        nonlocal done
        done += n

    for item in read_in_order(path, window, count):
        if isinstance(item, BadLine):
            batch.append((item.line_no, None, item.reason))
        else:
            e = item.event
            batch.append((item.line_no, e.type, e.ts_ms, e.request_id, encode(e)))
        if len(batch) >= BATCH:
            link.send((done, batch))
            batch = []
    link.send((done, batch))
    link.send((done, None))  # the end


def read_in_worker(
    path: Path, window: int, progress: Callable[[int], None] | None = None
) -> Iterator[EncodedLine | BadLine]:
    """The log's items in time order, parsed in a worker process. ``progress(n)``: n more bytes read."""
    worker = WorkerProcess(_read_worker, str(path), window, name="log reader", backlog=PREFETCH)
    worker.start()
    seen = 0
    try:
        try:
            worker.wait_ready(timeout_s=300)
            while True:
                message = worker.receive(1.0)
                if message is None:  # nothing yet
                    continue
                done, payload = message
                if progress is not None and done > seen:
                    progress(done - seen)
                    seen = done
                if payload is None:  # the end
                    return
                for t in payload:
                    if t[1] is None:
                        yield BadLine(t[0], t[2])
                    else:
                        yield EncodedLine(t[0], EncodedEvent(t[1], t[2], t[3], t[4]))
        except WorkerFailed as exc:  # e.g. the file vanished: its error, or the reader's exit
            raise OSError(f"reading {path}: {exc}") from exc
    finally:
        worker.kill()
