"""Stage 2 in a process of its own, started, watched and stopped by the stage-1 worker.

Why: a worker is CPU-bound in one Python process (the GIL), while the machine has more cores.
The two stages share nothing but the list-outcomes topic (stage 2's input, with stage 1's
progress records), so they split cleanly: ``paperec streams`` runs stage 1 and starts stage 2
here, each a Faust app with its own consumer group, changelog and committed offsets. Nothing
crosses between the processes except through Kafka, so the recovery argument of each stage holds
as it is (docs/streams.md, "Processes").

Lifecycle: the child is started with the worker and stopped (SIGTERM: a clean Faust shutdown)
with it. If the child dies, the parent stops too (``failure``), so a supervisor restarts the
worker as a whole. If the parent dies without stopping it (SIGKILL), the child notices within a
second (its parent process changed) and shuts down cleanly, so a restarted worker does not find
a stale stage 2 in its group.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from typing import Any

from paperec.settings import Settings

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


class StageProcess:
    """One stage's worker in a child process (``multiprocessing`` spawn: a fresh interpreter)."""

    def __init__(self, settings: Settings, stage: str, quiet: bool = True) -> None:
        self.settings = settings
        self.stage = stage
        self.quiet = quiet
        self._proc: Any = None
        self._stopping = False

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self._proc = ctx.Process(
            target=_child_main,
            args=(self.settings, self.stage, self.quiet, os.getpid()),
            name=f"paperec-streams-{self.stage}",
            daemon=False,  # it runs a Faust worker, which has children of its own (none today)
        )
        self._proc.start()
        log.info("started stage %s in process %d", self.stage, self._proc.pid)

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
