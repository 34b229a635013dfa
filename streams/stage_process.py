"""A worker in a child process: started, watched, restarted after a backoff when it dies, and
stopped cleanly. Used twice (docs/streams.md, "Processes"):

* the stage-1 worker runs stage 2 in a child (``streams.worker.create_app``, stage ``all``).
  Why: a worker is CPU-bound in one Python process (the GIL), while the machine has more cores.
  The two stages share nothing but the list-outcomes topic (stage 2's input, with stage 1's
  progress records), so they split cleanly, each a Faust app with its own consumer group,
  changelog and committed offsets; nothing crosses between the processes except through Kafka,
  so the recovery argument of each stage holds as it is.
* ``paperec streams`` runs the whole worker in a child (``supervise``): a small parent process
  that restarts the worker when it exits abnormally and stops it cleanly on SIGTERM.

Lifecycle: the child is started with its parent and stopped (SIGTERM: a clean Faust shutdown)
with it. If the child exits abnormally (a delivery that failed during a broker outage crashes a
Faust worker on purpose: only a restart from the changelog is consistent), ``restart_if_dead``
starts it again after a backoff (``Backoff``: 1 s doubling to 30 s, reset after a minute up) and
counts the restart; its state comes back from its changelog and committed offsets. If the parent
dies without stopping it (SIGKILL), the child notices within a second (its parent process
changed) and shuts down cleanly, so a restarted worker does not find a stale stage 2 in its group.

The child process itself is a ``base.worker_process.WorkerProcess`` (spawn, SIGTERM then kill
on stop, SIGTERM to itself when orphaned); this module adds the restarts and knows nothing of
the stages: the child runs ``target(*args)`` (module-level: it is pickled by name) and exits
with the status it returns.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from base.worker_process import WorkerLink, WorkerProcess

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0
"""How long a stopping child may take to shut down cleanly before it is killed."""


@dataclass
class Backoff:
    """Restart delays: ``first_s`` doubling to ``max_s``; back to ``first_s`` once a process
    stayed up ``reset_after_s`` (a crash loop slows down, a rare crash restarts at once)."""

    first_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0
    _next_s: float = 0.0

    def delay(self, uptime_s: float) -> float:
        if uptime_s >= self.reset_after_s or self._next_s == 0.0:
            self._next_s = self.first_s
        delay, self._next_s = self._next_s, min(self._next_s * 2, self.max_s)
        return delay


class ChildProcess(Protocol):
    """What ``StageProcess`` uses of ``base.worker_process.WorkerProcess``."""

    def start(self) -> None: ...

    def stop(self, timeout_s: float = ..., request: Any = ...) -> None: ...

    @property
    def alive(self) -> bool: ...

    @property
    def exitcode(self) -> int | None: ...

    @property
    def pid(self) -> int | None: ...


def _exit_with(link: WorkerLink, target: Callable[..., int], *args: Any) -> None:
    """In the child: run ``target`` and exit with its status (WorkerProcess's targets return None)."""
    sys.exit(target(*args))


def child_process(stage: str, target: Callable[..., int], *args: Any) -> WorkerProcess:
    """``target(*args)`` in a spawned process named after ``stage``, stopped when orphaned."""
    return WorkerProcess(
        _exit_with,
        target,
        *args,
        name=f"paperec-streams-{stage}",
        daemon=False,  # it runs a Faust worker, which may start processes of its own
        terminate_when_orphaned=True,
    )


class StageProcess:
    """A stage's child process, restarted by ``restart_if_dead`` after a backoff when it exits
    without being asked to; ``stage`` names it in logs and metrics."""

    def __init__(
        self,
        stage: str,
        process: ChildProcess,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stage = stage
        self.process = process
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.restarts = 0
        self._started = False
        self._stopping = False
        self._started_at = 0.0
        self._restart_at: float | None = None  # when a dead child is due to be started again

    def start(self) -> None:
        self.process.start()
        self._started = True
        self._started_at = self.clock()
        log.info("started stage %s in process %s", self.stage, self.process.pid)

    def restart_if_dead(self) -> bool:
        """Call periodically: start a child that exited abnormally again, once its backoff has
        passed. True when it restarted it now."""
        failure = self.failure()
        if failure is None:
            return False
        now = self.clock()
        if self._restart_at is None:
            delay = self.backoff.delay(now - self._started_at)
            self._restart_at = now + delay
            log.error("%s; restarting it in %.0f s (restarts so far: %d)", failure, delay, self.restarts)
            return False
        if now < self._restart_at:
            return False
        self._restart_at = None
        self.restarts += 1
        self.start()
        return True

    def failure(self) -> str | None:
        """Why the child is gone, when it died without being asked to stop; else None."""
        if not self._started or self._stopping or self.process.alive:
            return None
        return (
            f"the {self.stage} stage's process (pid {self.process.pid}) exited with {self.process.exitcode}"
        )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the child to shut down cleanly (SIGTERM); kill it if it has not after ``timeout_s``."""
        self._stopping = True
        self.process.stop(timeout_s)


def supervise(
    proc: StageProcess,
    stop: threading.Event,
    on_restart: Callable[[StageProcess], None] | None = None,
    poll_s: float = 0.5,
) -> int:
    """Run ``proc`` until ``stop`` is set (the caller's SIGTERM handler sets it), restarting it
    whenever it exits abnormally; then stop it cleanly. Exit status 0."""
    proc.start()
    while not stop.wait(poll_s):
        if proc.restart_if_dead() and on_restart is not None:
            on_restart(proc)
    proc.stop()
    return 0
