"""Run paperec services as child processes: start, watch, stop, and never leave one behind.

Used by ``paperec demo`` and the end-to-end tests. Each child is ``python -m paperec.cli
<command> ...`` in its own session (process group), with its output in a log file, so stopping
it also stops anything it started and a Ctrl-C in the terminal reaches only the supervisor, which
then stops the children in order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class ServiceProcess:
    name: str
    args: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    stopped: bool = False  # stopped on purpose (not a crash)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("ab")
        cmd = [sys.executable, "-m", "paperec.cli", *self.args]
        log.info("starting %s: %s (log %s)", self.name, " ".join(self.args), self.log_path)
        self.proc = subprocess.Popen(
            cmd,
            env={**os.environ, **self.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()  # the child holds its own descriptor

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout_s``; returns the exit code."""
        if self.proc is None:
            return None
        self.stopped = True
        self.signal_group(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s: SIGKILL", self.name, timeout_s)
            self.signal_group(signal.SIGKILL)
            return self.proc.wait(10)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Supervisor:
    """A set of services stopped together (in reverse start order), also on errors."""

    def __init__(self) -> None:
        self.services: list[ServiceProcess] = []

    def start(self, service: ServiceProcess) -> ServiceProcess:
        service.start()
        self.services.append(service)
        return service

    def dead(self) -> list[ServiceProcess]:
        """Services that exited although nobody stopped them."""
        return [s for s in self.services if not s.alive() and not s.stopped]

    def stop_all(self, timeout_s: float = 20.0) -> None:
        # Send SIGTERM to all first so they shut down in parallel, then wait for each.
        for s in reversed(self.services):
            s.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for s in reversed(self.services):
            s.stop(max(0.1, deadline - time.monotonic()))
        self.services.clear()
