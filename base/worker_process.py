"""Run a function in a worker process and talk to it: the one spawn-a-worker helper of paperec.

Why a process at all: decoding, featurizing and parsing are CPU-bound Python, and in the process
that trains or sends they hold the interpreter lock that process needs. A worker process competes
only for a core, which the operating system shares.

    worker = WorkerProcess(read_chunks, path, name="paperec-reader", backlog=4)
    worker.start()
    first = worker.wait_ready(timeout_s=120)  # what the target passed to link.ready()
    message = worker.receive(0.5)             # None: nothing within 0.5 s
    worker.send(("seek", offsets))            # requests, in order
    worker.stop(request=("stop",))            # or stop() alone: SIGTERM

    def read_chunks(link: WorkerLink, path: str) -> None:  # module-level: it is pickled
        source = open_source(path)            # an exception here reaches the parent, always
        link.ready(source.positions())
        while not link.orphaned():
            link.send(("chunk", source.read()))

The worker is started with ``spawn`` (a fresh interpreter: ``fork`` would copy the parent's
threads, whose locks may be held). Messages travel on two ``multiprocessing`` queues: requests
(parent -> worker) and messages (worker -> parent), the latter bounded by ``backlog`` so a worker
that runs ahead of a slow or paused reader blocks instead of growing memory.

What every copy before this got wrong once, and this gets right:

* **Start-up errors always reach the parent.** An exception before ``link.ready`` is sent as a
  failure, and the worker exits only after the queue's feeder thread has written it, so
  :meth:`WorkerProcess.wait_ready` raises :class:`WorkerFailed` with the exception's text.
* **A worker that exits before it is ready is reported at once** (with its exit code), not after
  the start-up timeout: ``wait_ready`` watches the process while it waits.
* **What a worker wrote before exiting is still read**: after it exits the queue is read once
  more before :meth:`WorkerProcess.receive` reports the exit.
* **An orphaned worker notices** (``link.orphaned()``: its parent was SIGKILLed), and with
  ``terminate_when_orphaned`` a watcher thread sends it SIGTERM within a second.
* ``drop_unsent_on_exit``: once ready, a worker may exit with messages its reader never read
  (prefetched chunks the parent will read again after a restart) without hanging on them. Only
  after ready: before it, dropping would lose the start-up error.

Floor 1: imports no other package of paperec.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_READY = "worker-process:ready"
_FAILED = "worker-process:failed"
_ORPHAN_CHECK_S = 1.0  # how often a terminate_when_orphaned worker looks at its parent
_WATCH_S = 0.5  # how often a waiting parent looks at its worker


class WorkerFailed(RuntimeError):
    """The worker reported an exception, exited, or did not start in time."""


class WorkerLink:
    """The worker's end of the two queues (the target's first argument)."""

    def __init__(self, requests: Any, messages: Any, parent_pid: int, drop_unsent_on_exit: bool) -> None:
        self._requests, self._messages = requests, messages
        self._parent = parent_pid
        self._drop_unsent_on_exit = drop_unsent_on_exit
        self.is_ready = False

    def ready(self, payload: Any = None) -> None:
        """Tell the parent the worker is up (``wait_ready`` returns ``payload``)."""
        self._messages.put((_READY, payload))
        self.is_ready = True
        if self._drop_unsent_on_exit:
            # from here, exiting with unread messages must not hang. Not earlier: a cancelled
            # join drops what the feeder thread has not written yet, a start-up error too
            self._messages.cancel_join_thread()

    def send(self, message: Any, timeout_s: float | None = None) -> None:
        """Put ``message`` for the parent; blocks while ``backlog`` messages wait (``queue.Full``
        after ``timeout_s``)."""
        self._messages.put(message, timeout=timeout_s)

    def receive(self, timeout_s: float | None = 0.0) -> Any | None:
        """The next request, or None when none came within ``timeout_s`` (None: wait for one)."""
        try:
            if timeout_s is not None and timeout_s <= 0:
                return self._requests.get_nowait()
            return self._requests.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def orphaned(self) -> bool:
        """The parent is gone (SIGKILL): nobody will read our messages or stop us."""
        return os.getppid() != self._parent


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_ORPHAN_CHECK_S)
    log.warning("parent process %d is gone; stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(
    target: Callable[..., None],
    args: tuple[Any, ...],
    link: WorkerLink,
    log_tag: str | None,
    log_level: int,
    terminate_when_orphaned: bool,
) -> None:
    if log_tag is not None:
        logging.basicConfig(
            level=log_level, format=f"%(asctime)s %(levelname)s %(name)s[{log_tag}]: %(message)s"
        )
    if terminate_when_orphaned:
        threading.Thread(target=_watch_parent, args=(link._parent,), name="parent-watch", daemon=True).start()
    try:
        target(link, *args)
    except Exception as exc:
        if link.is_ready:
            log.exception("worker failed: %s", exc)
        # before ready, returning joins the queue's feeder thread: this reaches the parent
        link._messages.put((_FAILED, f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None


class WorkerProcess:
    """The parent's end: start, wait for ready, receive, send, stop (see the module doc).

    ``start`` may be called again once the worker has exited (a restart): it gets fresh queues.
    """

    def __init__(
        self,
        target: Callable[..., None],
        *args: Any,
        name: str,
        backlog: int = 0,
        daemon: bool = True,
        log_tag: str | None = None,
        drop_unsent_on_exit: bool = False,
        terminate_when_orphaned: bool = False,
    ) -> None:
        """``target(link, *args)`` runs in the worker (module-level, its arguments picklable);
        ``backlog``: messages that may wait for the parent (0: unbounded); ``daemon``: killed
        with the parent (a daemon may not start processes of its own); ``log_tag``: configure
        the worker's logging at the parent's level, lines tagged ``name[log_tag]``."""
        self.target, self.args, self.name = target, args, name
        self.backlog, self.daemon, self.log_tag = backlog, daemon, log_tag
        self.drop_unsent_on_exit = drop_unsent_on_exit
        self.terminate_when_orphaned = terminate_when_orphaned
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._requests: Any = None
        self._messages: Any = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker (again, after it exited), with fresh queues."""
        if self._proc is not None and self._proc.is_alive():
            raise RuntimeError(f"{self.name} is running")
        self._requests = self._ctx.Queue()
        self._messages = self._ctx.Queue(maxsize=self.backlog)
        link = WorkerLink(self._requests, self._messages, os.getpid(), self.drop_unsent_on_exit)
        self._proc = self._ctx.Process(
            target=_worker_main,
            args=(
                self.target,
                self.args,
                link,
                self.log_tag,
                logging.getLogger().getEffectiveLevel(),
                self.terminate_when_orphaned,
            ),
            name=self.name,
            daemon=self.daemon,
        )
        self._proc.start()

    def wait_ready(self, timeout_s: float = 120.0) -> Any:
        """The payload of the worker's ``link.ready``. Raises :class:`WorkerFailed` with its
        start-up error, at once when it exits instead, and after ``timeout_s`` (killing it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            exited = not self._proc.is_alive()
            try:  # after an exit, once more: what it wrote before exiting is in the pipe
                kind, payload = self._messages.get(timeout=0 if exited else _WATCH_S)
            except queue.Empty:
                if exited:
                    raise WorkerFailed(
                        f"{self.name} exited (code {self._proc.exitcode}) before starting"
                    ) from None
                if time.monotonic() > deadline:
                    self.kill()
                    raise WorkerFailed(f"{self.name} did not start within {timeout_s:.0f} s") from None
                continue
            if kind == _READY:
                return payload
            self._proc.join(5)
            raise WorkerFailed(f"{self.name} failed to start: {payload}")

    def stop(self, timeout_s: float = 30.0, request: Any = None) -> None:
        """Ask the worker to stop: send ``request`` (after the requests before it), or SIGTERM
        when None; kill it when it has not exited after ``timeout_s``."""
        proc = self._proc
        if proc is None or not proc.is_alive():
            return
        if request is not None:
            self._requests.put(request)
        else:
            proc.terminate()
        proc.join(timeout_s)
        if proc.is_alive():
            log.warning("%s did not stop within %.0f s: killing it", self.name, timeout_s)
            self.kill()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the worker to exit by itself; True when it has."""
        if self._proc is not None:
            self._proc.join(timeout_s)
        return not self.alive

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        if self._proc is not None:
            self._proc.join(5)

    # ------------------------------------------------------------------ talking
    def receive(self, timeout_s: float) -> Any | None:
        """The worker's next message; None when none came within ``timeout_s``. Raises
        :class:`WorkerFailed` when the worker reported an exception, or exited with nothing
        left to read."""
        exited = not self._proc.is_alive()
        try:  # after an exit, once more: what it wrote before exiting is in the pipe
            message = self._messages.get(timeout=0 if exited else timeout_s)
        except queue.Empty:
            if not exited:  # (if it exited during the wait, the next call reads what it left)
                return None
            raise WorkerFailed(f"{self.name} exited (code {self._proc.exitcode})") from None
        if isinstance(message, tuple) and len(message) == 2 and message[0] == _FAILED:
            raise WorkerFailed(f"{self.name}: {message[1]}")
        return message

    def send(self, request: Any) -> None:
        self._requests.put(request)

    # ------------------------------------------------------------------ looking
    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def exitcode(self) -> int | None:
        return None if self._proc is None else self._proc.exitcode

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def backlog_full(self) -> bool:
        """``backlog`` messages wait (a worker blocked on sending uses no CPU)."""
        return self._messages is not None and bool(self._messages.full())
