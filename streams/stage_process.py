"""Stage 2 in a process of its own, started, watched and stopped by the stage-1 worker.

Why: a worker is CPU-bound in one Python process (the GIL), while the machine has more cores.
The two stages share nothing but the list-outcomes topic (stage 2's input, with stage 1's
progress records), so they split cleanly: ``paperec streams`` runs stage 1 and starts stage 2
here, each a Faust app with its own consumer group, changelog and committed offsets. Nothing
crosses between the processes except through Kafka, so the recovery argument of each stage holds
as it is (docs/streams.md, "Processes").

Lifecycle: the child is started with the worker and stopped (SIGTERM: a clean Faust shutdown)
with it. If the child exits abnormally (a delivery that failed during a broker outage crashes a
Faust worker on purpose: only a restart from the changelog is consistent), ``restart_if_dead``
starts it again after a backoff (``Backoff``: 1 s doubling to 30 s, reset after a minute up) and
counts the restart; its state comes back from its changelog and committed offsets. If the parent
dies without stopping it (SIGKILL), the child notices within a second (its parent process
changed) and shuts down cleanly, so a restarted worker does not find a stale stage 2 in its group.

``paperec streams`` runs the whole worker the same way (``supervise``): a small parent process
that restarts the worker when it exits abnormally and stops it cleanly on SIGTERM.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from base.settings import Settings

log = logging.getLogger(__name__)

STAGE_JOIN = "join"
STAGE_LINK = "link"
STAGE_ALL = "all"
STAGES = (STAGE_ALL, STAGE_JOIN, STAGE_LINK)

STOP_TIMEOUT_S = 30.0
"""How long a stopping child may take to shut down cleanly before it is killed."""
_ORPHAN_CHECK_S = 1.0


def _watch_parent(parent: int) -> None:
    """In the child: shut down (SIGTERM to ourselves, which Faust handles) once the process
    that started us is gone."""
    while os.getppid() == parent:
        time.sleep(_ORPHAN_CHECK_S)
    log.warning("the stage-1 worker (pid %d) is gone; stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)


def _child_main(settings: Settings, stage: str, quiet: bool, parent: int) -> None:
    from streams.cli import run_worker

    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True).start()
    sys.exit(run_worker(settings, stage, quiet=quiet))


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


class StageProcess:
    """One stage's worker in a child process (``multiprocessing`` spawn: a fresh interpreter)."""

    def __init__(
        self,
        settings: Settings,
        stage: str,
        quiet: bool = True,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.stage = stage
        self.quiet = quiet
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.restarts = 0
        self._proc: Any = None
        self._stopping = False
        self._started_at = 0.0
        self._restart_at: float | None = None  # when a dead child is due to be started again

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self._proc = ctx.Process(
            target=_child_main,
            args=(self.settings, self.stage, self.quiet, os.getpid()),
            name=f"paperec-streams-{self.stage}",
            daemon=False,  # it runs a Faust worker, which has children of its own (none today)
        )
        self._proc.start()
        self._started_at = self.clock()
        log.info("started stage %s in process %d", self.stage, self._proc.pid)

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
        if self._proc is None or self._stopping or self._proc.is_alive():
            return None
        return f"the {self.stage} stage's process (pid {self._proc.pid}) exited with {self._proc.exitcode}"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the child to shut down cleanly (SIGTERM); kill it if it has not after ``timeout_s``."""
        self._stopping = True
        proc = self._proc
        if proc is None or not proc.is_alive():
            return
        proc.terminate()
        proc.join(timeout_s)
        if proc.is_alive():
            log.warning("the %s stage's process did not stop in %.0f s; killing it", self.stage, timeout_s)
            proc.kill()
            proc.join(5)


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
