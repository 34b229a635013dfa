"""The worker-process helper (base/worker_process.py): start-up errors reach the parent, early
exits are reported at once, nothing written before an exit is lost, stop and restart."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from base.worker_process import WorkerFailed, WorkerLink, WorkerProcess


# -------------------------------------------------------------- worker targets (module level: pickled)
def _echo(link: WorkerLink, greeting: str) -> None:
    link.ready(greeting)
    while True:
        request = link.receive(None)
        if request == "stop":
            return
        link.send(("echo", request))


def _fail_at_start(link: WorkerLink) -> None:
    raise ValueError("no such source")


def _exit_at_once(link: WorkerLink) -> None:
    os._exit(3)  # e.g. killed while importing its dependencies: no error message at all


def _never_ready(link: WorkerLink) -> None:
    time.sleep(600)


def _send_then_return(link: WorkerLink, n: int) -> None:
    link.ready()
    for i in range(n):
        link.send(i)


def _fail_after_ready(link: WorkerLink) -> None:
    link.ready()
    link.send("one")
    raise OSError("disk gone")


def _ignore_sigterm(link: WorkerLink) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    link.ready()
    time.sleep(600)


def _big_messages_then_stop(link: WorkerLink) -> None:
    link.ready()
    for _ in range(3):  # more than the pipe holds: the queue's feeder thread blocks writing them
        link.send(b"x" * 1_000_000)
    while link.receive(None) != "stop":
        pass


def _grandparent(link: WorkerLink, pid_file: str) -> None:
    """Starts a worker that stops when orphaned, then dies as by SIGKILL (no clean-up)."""
    child = WorkerProcess(_write_pid_and_wait, pid_file, name="grandchild", terminate_when_orphaned=True)
    child.start()
    link.ready(child.wait_ready(30))
    time.sleep(0.5)
    os._exit(0)


def _write_pid_and_wait(link: WorkerLink, pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    link.ready(os.getpid())
    time.sleep(600)


# -------------------------------------------------------------- tests
def test_ready_payload_requests_in_order_and_a_clean_stop() -> None:
    worker = WorkerProcess(_echo, "hi", name="echo", log_tag="echo")
    worker.start()
    try:
        assert worker.wait_ready(60) == "hi"
        for i in range(3):
            worker.send(i)
        got = [worker.receive(10) for _ in range(3)]
        assert got == [("echo", 0), ("echo", 1), ("echo", 2)]
        assert worker.receive(0.05) is None  # nothing more: a timeout, not an error
    finally:
        worker.stop(10, request="stop")
    assert not worker.alive and worker.exitcode == 0


def test_a_start_up_error_reaches_the_parent_with_its_text() -> None:
    worker = WorkerProcess(_fail_at_start, name="source")
    worker.start()
    with pytest.raises(WorkerFailed, match="source failed to start: ValueError: no such source"):
        worker.wait_ready(60)
    assert not worker.alive


def test_a_worker_that_exits_before_starting_is_reported_at_once() -> None:
    worker = WorkerProcess(_exit_at_once, name="early")
    worker.start()
    began = time.monotonic()
    with pytest.raises(WorkerFailed, match=r"early exited \(code 3\) before starting"):
        worker.wait_ready(600)
    assert time.monotonic() - began < 60  # not the start-up timeout


def test_a_worker_that_does_not_start_in_time_is_killed() -> None:
    worker = WorkerProcess(_never_ready, name="slow")
    worker.start()
    with pytest.raises(WorkerFailed, match="slow did not start within 1 s"):
        worker.wait_ready(1)
    assert not worker.alive


def test_messages_written_before_an_exit_are_read_before_the_exit_is_reported() -> None:
    worker = WorkerProcess(_send_then_return, 5, name="short")
    worker.start()
    worker.wait_ready(60)
    assert worker.join(60)
    assert [worker.receive(1) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(WorkerFailed, match=r"short exited \(code 0\)"):
        worker.receive(1)


def test_a_failure_after_ready_is_raised_by_receive_after_what_came_before() -> None:
    worker = WorkerProcess(_fail_after_ready, name="reader")
    worker.start()
    worker.wait_ready(60)
    assert worker.receive(30) == "one"
    with pytest.raises(WorkerFailed, match="reader: OSError: disk gone"):
        worker.receive(30)
    assert worker.join(30) and worker.exitcode == 1


def test_stop_without_a_request_is_sigterm_and_a_worker_ignoring_it_is_killed() -> None:
    worker = WorkerProcess(_ignore_sigterm, name="stubborn")
    worker.start()
    worker.wait_ready(60)
    worker.stop(timeout_s=1)
    assert worker.exitcode == -signal.SIGKILL

    polite = WorkerProcess(_never_ready, name="polite")
    polite.start()
    time.sleep(0.5)
    polite.stop(timeout_s=30)
    assert polite.exitcode == -signal.SIGTERM


@pytest.mark.parametrize("drop", [True, False])
def test_drop_unsent_on_exit_lets_a_worker_with_unread_messages_stop(drop: bool) -> None:
    worker = WorkerProcess(_big_messages_then_stop, name="big", backlog=4, drop_unsent_on_exit=drop)
    worker.start()
    worker.wait_ready(60)
    time.sleep(0.5)  # the messages are sent (their feeder thread blocks on the full pipe)
    worker.stop(timeout_s=2, request="stop")
    # dropping: a clean exit; keeping them: the exit waits for a reader, and is killed
    assert worker.exitcode == (0 if drop else -signal.SIGKILL)


def test_the_backlog_bounds_what_a_worker_runs_ahead() -> None:
    worker = WorkerProcess(_send_then_return, 6, name="ahead", backlog=3)
    worker.start()
    try:
        worker.wait_ready(60)
        deadline = time.monotonic() + 30
        while not worker.backlog_full():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        assert worker.alive  # blocked on the fourth message
        assert [worker.receive(5) for _ in range(6)] == list(range(6))
    finally:
        worker.kill()


def test_start_again_after_an_exit_is_a_restart_with_fresh_queues() -> None:
    worker = WorkerProcess(_echo, "again", name="echo")
    worker.start()
    worker.wait_ready(60)
    worker.kill()
    with pytest.raises(RuntimeError, match="is running"):
        running = WorkerProcess(_echo, "x", name="twice")
        running.start()
        try:
            running.start()
        finally:
            running.kill()
    worker.start()
    try:
        assert worker.wait_ready(60) == "again"
        worker.send("ping")
        assert worker.receive(10) == ("echo", "ping")
    finally:
        worker.stop(10, request="stop")


def test_an_orphaned_worker_stops_itself(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    parent = WorkerProcess(_grandparent, str(pid_file), name="parent", daemon=False)
    parent.start()
    grandchild = int(parent.wait_ready(60))
    parent.kill()
    deadline = time.monotonic() + 30
    while _running(grandchild):
        assert time.monotonic() < deadline, "the orphaned worker did not stop"
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status
