"""Restarting a streams process that exited abnormally: backoff, restart counter, no restart of
a process asked to stop (a stand-in process: no Faust, no Kafka)."""

from __future__ import annotations

import sys
import threading
from typing import Any

from streams.stage_process import Backoff, StageProcess, child_process, supervise


def test_backoff_doubles_to_its_cap_and_resets_after_a_long_run() -> None:
    b = Backoff(first_s=1.0, max_s=8.0, reset_after_s=60.0)
    assert [b.delay(uptime_s=2.0) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert b.delay(uptime_s=120.0) == 1.0  # up for two minutes: a fresh crash restarts at once
    assert b.delay(uptime_s=1.0) == 2.0


class StandInChild:
    """A child process that the test kills (``crash``) and that records being stopped."""

    def __init__(self) -> None:
        self.starts = 0
        self.alive = False
        self.exitcode: int | None = None
        self.pid: int | None = None
        self.stopped = False

    def start(self) -> None:
        self.starts += 1
        self.alive, self.exitcode, self.pid = True, None, 4242 + self.starts

    def crash(self) -> None:
        self.alive, self.exitcode = False, 1  # a delivery failed: Faust crashed on purpose

    def stop(self, timeout_s: float = 30.0, request: Any = None) -> None:
        self.stopped, self.alive = True, False


def stand_in_stage(clock: Any) -> tuple[StageProcess, StandInChild]:
    child = StandInChild()
    return StageProcess("link", child, backoff=Backoff(first_s=1.0, max_s=4.0), clock=clock), child


def test_a_dead_process_is_restarted_after_its_backoff_and_counted() -> None:
    now = [0.0]
    stage, child = stand_in_stage(lambda: now[0])
    assert stage.failure() is None and not stage.restart_if_dead()  # never started: not dead
    stage.start()
    assert not stage.restart_if_dead()  # alive
    child.crash()
    assert not stage.restart_if_dead()  # backoff of 1 s starts now
    now[0] = 0.5
    assert not stage.restart_if_dead()
    now[0] = 1.0
    assert stage.restart_if_dead() and stage.restarts == 1 and child.starts == 2
    child.crash()  # again at once
    assert not stage.restart_if_dead()
    now[0] = 2.9
    assert not stage.restart_if_dead()  # the second delay is 2 s
    now[0] = 3.0
    assert stage.restart_if_dead() and stage.restarts == 2
    stage.stop()  # asked to stop: never restarted
    assert child.stopped and not stage.restart_if_dead() and child.starts == 3


def test_supervise_restarts_until_asked_to_stop() -> None:
    now = [0.0]
    stage, child = stand_in_stage(lambda: now[0])
    stop = threading.Event()
    restarted: list[int] = []

    def crash_then_stop(proc: StageProcess) -> None:
        restarted.append(proc.restarts)
        if proc.restarts == 3:
            stop.set()

    def tick() -> None:  # the clock moves on and the current process keeps crashing
        while not stop.is_set():
            now[0] += 1.0
            if child.alive:
                child.crash()
            stop.wait(0.002)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    assert supervise(stage, stop, crash_then_stop, poll_s=0.001) == 0
    ticker.join(5)
    assert restarted == [1, 2, 3] and child.starts == 4 and child.stopped


def test_the_child_runs_its_target_and_its_exit_status_is_the_failure() -> None:
    # A real spawned interpreter: the target (pickled by name) runs with its args and the
    # child exits with what it returns (here: sys.exit(3) raises in the child, exit status 3).
    child = child_process("link", sys.exit, 3)
    proc = StageProcess("link", child)
    proc.start()
    child.join(30)
    assert proc.failure() == f"the link stage's process (pid {child.pid}) exited with 3"
    proc.stop()
    assert proc.failure() is None  # asked to stop: not a failure any more
