"""Restarting a streams process that exited abnormally: backoff, restart counter, no restart of
a process asked to stop (a stand-in process: no Faust, no Kafka)."""

from __future__ import annotations

import threading
from typing import Any

from base.settings import Settings
from streams.stage_process import STAGE_LINK, Backoff, StageProcess, supervise


def test_backoff_doubles_to_its_cap_and_resets_after_a_long_run() -> None:
    b = Backoff(first_s=1.0, max_s=8.0, reset_after_s=60.0)
    assert [b.delay(uptime_s=2.0) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert b.delay(uptime_s=120.0) == 1.0  # up for two minutes: a fresh crash restarts at once
    assert b.delay(uptime_s=1.0) == 2.0


class StandInProcess:
    pid = 4242

    def __init__(self) -> None:
        self.alive = True
        self.exitcode: int | None = None
        self.terminated = False

    def start(self) -> None: ...

    def is_alive(self) -> bool:
        return self.alive

    def terminate(self) -> None:
        self.terminated = True
        self.alive = False

    def join(self, timeout: float | None = None) -> None: ...

    def kill(self) -> None: ...


class StandInStage(StageProcess):
    def __init__(self, clock: Any) -> None:
        super().__init__(Settings(), STAGE_LINK, backoff=Backoff(first_s=1.0, max_s=4.0), clock=clock)
        self.procs: list[StandInProcess] = []

    def start(self) -> None:  # what StageProcess.start does, minus the interpreter
        self._proc = StandInProcess()
        self.procs.append(self._proc)
        self._started_at = self.clock()


def test_a_dead_process_is_restarted_after_its_backoff_and_counted() -> None:
    now = [0.0]
    stage = StandInStage(lambda: now[0])
    stage.start()
    assert not stage.restart_if_dead()  # alive
    stage.procs[0].alive, stage.procs[0].exitcode = False, 1  # a delivery failed: Faust crashed
    assert not stage.restart_if_dead()  # backoff of 1 s starts now
    now[0] = 0.5
    assert not stage.restart_if_dead()
    now[0] = 1.0
    assert stage.restart_if_dead() and stage.restarts == 1 and len(stage.procs) == 2
    stage.procs[1].alive, stage.procs[1].exitcode = False, 1  # crashes again at once
    assert not stage.restart_if_dead()
    now[0] = 2.9
    assert not stage.restart_if_dead()  # the second delay is 2 s
    now[0] = 3.0
    assert stage.restart_if_dead() and stage.restarts == 2
    stage.stop()  # asked to stop: never restarted
    assert stage.procs[2].terminated and not stage.restart_if_dead()


def test_supervise_restarts_until_asked_to_stop() -> None:
    now = [0.0]
    stage = StandInStage(lambda: now[0])
    stop = threading.Event()
    restarted: list[int] = []

    def crash_then_stop(proc: StageProcess) -> None:
        restarted.append(proc.restarts)
        if proc.restarts == 3:
            stop.set()

    def tick() -> None:  # the clock moves on and the current process keeps crashing
        while not stop.is_set():
            now[0] += 1.0
            if stage.procs:
                stage.procs[-1].alive, stage.procs[-1].exitcode = False, 1
            stop.wait(0.002)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    assert supervise(stage, stop, crash_then_stop, poll_s=0.001) == 0
    ticker.join(5)
    assert restarted == [1, 2, 3] and len(stage.procs) == 4
