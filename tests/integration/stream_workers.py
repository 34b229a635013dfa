"""Streams workers on the real broker in integration tests: a ``python -m streams`` process per
worker (stage 1 in it, stage 2 its child) with the settings as PAPEREC_* variables, readers of
the output topics, a producer of scripted events, the committed offsets of the two stages'
consumer groups, and users' sessions with the transition ids they must give.

Windows, lateness and session gap are shortened (about a second) to keep the tests fast.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

from base.kafka import member_assignments
from base.settings import TOPIC_CLICKS, TOPIC_DWELLS, TOPIC_IMPRESSIONS, Settings
from base.topics import create_topics
from schemas import Transition, decode, transition_id
from streams import fixtures as fx

ROOT = Path(__file__).resolve().parents[2]
W, L, GAP = 1_000, 300, 2_000


class Worker:
    """One ``python -m streams`` process with the given settings (as PAPEREC_* variables)."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        env = dict(os.environ, PYTHONUNBUFFERED="1")  # keep the log of a killed worker
        for f in dataclasses.fields(Settings):
            env["PAPEREC_" + f.name.upper()] = str(getattr(self.settings, f.name))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                # in this process (stage 1, stage 2 its child), so that the test can kill each
                [sys.executable, "-m", "streams", "--quiet", "--no-supervise"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Until Faust logs that the worker finished recovery and consumes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.alive(), f"worker died:\n{self.tail()}"
            if "Worker ready" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise AssertionError(f"worker not ready after {timeout_s} s:\n{self.tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[int]:
        """The worker's stage-2 processes (children started by multiprocessing's spawn; not its
        resource tracker), from /proc."""
        assert self.proc is not None
        pid = self.proc.pid
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        return [c for c in kids if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]

    def tail(self, n: int = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def streams_settings(settings: Settings, prefix: str, tmp_path: Path, **overrides: Any) -> Settings:
    short = {
        "join_window_ms": W,
        "join_lateness_ms": L,
        "session_gap_ms": GAP,
        "streams_idle_ms": 300,
        "streams_tick_ms": 100,
        "streams_commit_interval_s": 0.5,
        "streams_metrics_interval_s": 1.0,
        "streams_session_timeout_s": 6.0,
        "log_level": "INFO",
    }
    s = settings.replace(topic_prefix=prefix, state_dir=str(tmp_path / "state"), **{**short, **overrides})
    assert create_topics(s) == []
    return s


class Reader:
    """Reads a topic from the beginning, keeping everything read so far."""

    def __init__(self, settings: Settings, suffix: str) -> None:
        self.consumer = KafkaConsumer(
            settings.topic(suffix),
            bootstrap_servers=settings.kafka_bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        self.records: list[Any] = []

    def poll(self) -> list[Any]:
        for batch in self.consumer.poll(timeout_ms=200).values():
            self.records.extend(batch)
        return self.records

    def until(self, done: Callable[[list[Any]], bool], timeout_s: float, worker: Worker) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done(self.poll()):
                return self.records
            assert worker.alive(), f"worker died:\n{worker.tail()}"
        return self.records

    def close(self) -> None:
        self.consumer.close()


def producer(settings: Settings) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5)


def send(p: KafkaProducer, settings: Settings, suffix: str, key: str, value: dict | bytes) -> None:
    raw = value if isinstance(value, bytes) else fx.dumps(value)
    p.send(settings.topic(suffix), raw, key=key.encode())


def committed(s: Settings) -> dict[str, int]:
    """Offsets the worker's two consumer groups (stage 1, stage 2) committed, summed per input
    topic."""
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    out: dict[str, int] = {}
    try:
        for group in (s.streams_app_id, s.streams_link_app_id):
            for tp, meta in admin.list_group_offsets({group: None}).get(group, {}).items():
                if "changelog" not in tp.topic:
                    out[tp.topic] = out.get(tp.topic, 0) + max(0, meta.offset)
    finally:
        admin.close()
    return out


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """The processes among ``pids`` still running after up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return next(
            line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:")
        )
    except (OSError, StopIteration):
        return "zombie"  # gone meanwhile


def user_sessions(
    prefix: str, n_users: int, per_user: int, ts: Callable[[int, int], int]
) -> tuple[list[tuple[int, str, str]], set[str]]:
    """Lists ``(ts(user, k), user, request id)`` of ``n_users`` users with ``per_user`` lists each,
    in time order, and the transition ids they give: each user's consecutive lists linked, the
    last one ending the session (the callers keep a user's lists within one session gap)."""
    lists = sorted((ts(u, k), f"u{u}", f"{prefix}u{u}-r{k}") for u in range(n_users) for k in range(per_user))
    expected = set()
    for u in range(n_users):
        rids = [f"{prefix}u{u}-r{k}" for k in range(per_user)]
        expected |= {transition_id(f"u{u}", a, b) for a, b in itertools.pairwise(rids)}
        expected.add(transition_id(f"u{u}", rids[-1], None))
    return lists, expected


def transitions_of(records: list[Any]) -> list[Transition]:
    return [decode(r.value, Transition) for r in records]


def group_assignment(s: Settings, group: str) -> tuple[str, list[dict[str, list[int]]]]:
    """The consumer group's state (``Stable`` once a rebalance completed) and each member's
    assignment as the broker holds it: {topic: partitions} per member."""
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    try:
        described = admin.describe_groups([group])[group]
    finally:
        admin.close()
    return described["group_state"], member_assignments(described)


def send_in_real_time(s: Settings, lists: list[tuple[int, str, str]]) -> None:
    """Each ``(ts, user, request id)`` list's impression, a click and a dwell, sent at its event
    time (wall clock), as serving nodes and clients send them."""
    p = producer(s)
    for ts, user, rid in lists:
        delay = ts / 1000 - time.time()
        if delay > 0:
            time.sleep(delay)
        pos = hash(rid) % 3
        send(p, s, TOPIC_IMPRESSIONS, rid, fx.impression(rid, user, ts))
        send(p, s, TOPIC_CLICKS, rid, fx.click(rid, user, pos, ts + 50))
        send(p, s, TOPIC_DWELLS, rid, fx.dwell(rid, user, pos, ts + 100, 1_000 + pos))
    p.flush()
    p.close()
