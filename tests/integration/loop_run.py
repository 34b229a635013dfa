"""One whole-loop acceptance run on a private stack, shared by the acceptance tests
(test_outage_acceptance.py: one broker stopped and killed, ClickHouse killed;
test_replicated_loop.py: a partition leader of a 3-node cluster killed).

:func:`whole_loop` starts the services as ``paperec demo`` starts them
(``paperec.demo.demo_services``: streams worker, learner, two serving nodes, rollout controller)
with short windows and frequent snapshots, waits for the nodes and a first snapshot under seeded
traffic (paperec/traffic.py), and stops everything afterwards, also on failure. :class:`Run` holds
what a test checks while it waits (no service exited, no ``/rank`` failed) and after the traffic
stopped (every answered list on the impressions topic, the transitions they give).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import TopicPartition

from actor_service.devtools import metric_value
from base import kafka as kafka_clients
from base.kafka import read_topic
from base.metrics_store import init_tables
from base.settings import (
    TOPIC_CLICKS,
    TOPIC_DWELLS,
    TOPIC_IMPRESSIONS,
    TOPIC_SNAPSHOTS,
    TOPIC_TRANSITIONS,
    Settings,
)
from base.topics import create_topics
from model.snapshot import header_of
from paperec.demo import DEMO_ROLLOUT_ENV, DemoOptions, demo_services
from paperec.services import Supervisor
from paperec.traffic import Traffic, as_env, serve_base_port
from schemas import Impression, Transition, decode, decode_snapshot_header, transition_id

log = logging.getLogger(__name__)

SEED, USERS, PARALLEL, LISTS_PER_S = 15, 60, 4, 15.0
SESSION_GAP_MS = 3_000

# Short windows and frequent samples: a run has about three minutes.
STACK = {
    "join_window_ms": 2_000,
    "join_lateness_ms": 500,
    "session_gap_ms": SESSION_GAP_MS,
    "streams_idle_ms": 500,
    "streams_tick_ms": 100,
    "streams_commit_interval_s": 0.5,
    "streams_session_timeout_s": 6.0,
    "streams_metrics_interval_s": 2.0,
    "serve_metrics_interval_s": 1.0,
}
LEARNER_FLAGS = [  # after the demo's flags: these win
    *("--batch-size", "32", "--min-buffer", "64", "--snapshot-every-steps", "0"),
    *("--snapshot-every-s", "3", "--checkpoint-every-s", "5", "--metrics-interval-s", "2"),
]
IMPRESSION_DROPS = ("dropped_buffer_full", "dropped_failed", "dropped_too_large")


# ------------------------------------------------------------------------------ observation
class SnapshotWatch:
    """Follows the snapshot topic: (version, Kafka timestamp ms) of every snapshot."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = kafka_clients.consumer(
            settings,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=64 * 1024 * 1024,
        )
        self.consumer.assign([TopicPartition(settings.topic(TOPIC_SNAPSHOTS), 0)])
        self.seen: list[tuple[int, int]] = []

    def poll(self) -> list[tuple[int, int]]:
        for records in self.consumer.poll(timeout_ms=200).values():
            for r in records:
                if r.value is not None:
                    version = decode_snapshot_header(header_of(r.headers)).snapshot_version
                    self.seen.append((version, r.timestamp))
        return self.seen

    def newest(self) -> int:
        return max((v for v, _ in self.poll()), default=0)

    def published_since(self, since_ms: int) -> list[int]:
        return [v for v, ts in self.poll() if ts >= since_ms]

    def close(self) -> None:
        self.consumer.close()


def expected_transitions(lists: Iterable[tuple[str, int, str]], gap_ms: int) -> dict[str, tuple[int, int]]:
    """The transitions stage 2 gives for ``(user, ts_ms, request_id)`` lists, as transition id ->
    (ts of its list, ts of the next list or its own): each user's lists in (ts, request id)
    order, linked while the gap is at most ``gap_ms``, the last of each session done."""
    by_user: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for user, ts, rid in lists:
        by_user[user].append((ts, rid))
    out = {}
    for user, xs in by_user.items():
        xs.sort()
        for (ta, a), (tb, b) in itertools.pairwise(xs):
            linked = tb - ta <= gap_ms
            out[transition_id(user, a, b if linked else None)] = (ta, tb if linked else ta)
        out[transition_id(user, xs[-1][1], None)] = (xs[-1][0], xs[-1][0])
    return out


def node_metric(urls: list[str], name: str, labels: str = "") -> float:
    """The sum of one sample over the serving nodes' ``/metrics``."""
    return sum(metric_value(httpx.get(f"{u}/metrics").text, name, labels) for u in urls)


def node_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def now_ms() -> int:
    return int(time.time() * 1000)


# ------------------------------------------------------------------------------ the run
@dataclasses.dataclass
class Run:
    """The services and the traffic, with the checks made while waiting and after."""

    settings: Settings
    supervisor: Supervisor
    traffic: Traffic
    watch: SnapshotWatch
    urls: list[str]
    logs: Path  # the services' logs
    traffic_started: float = 0.0  # time.monotonic() when the traffic started

    def healthy(self) -> None:
        dead = self.supervisor.dead()
        assert not dead, (
            f"{dead[0].name} exited (code {dead[0].proc and dead[0].proc.poll()}):\n{dead[0].tail(60)}"
        )
        assert self.traffic.error is None, f"a /rank request failed: {self.traffic.error!r}"

    def until(self, cond: Callable[[], Any], timeout_s: float) -> bool:
        """Poll ``cond`` (checking the services and the traffic) until true or ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.healthy()
            if cond():
                return True
            time.sleep(0.5)
        return False

    def wait(self, what: str, cond: Callable[[], Any], timeout_s: float) -> None:
        if not self.until(cond, timeout_s):
            logs = "\n".join(f"--- {s.name}\n{s.tail(15)}" for s in self.supervisor.services)
            pytest.fail(f"timed out waiting for {what}\n{logs}")
        log.info("%s", what)

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.healthy()
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    # -------------------------------------------------------------------------- after the traffic
    def answered(self) -> dict[str, str]:
        """request id -> user of every answered list (stops the traffic first); each once."""
        self.traffic.stop()
        self.healthy()
        answered = dict((rid, user) for user, rid in self.traffic.answered)
        assert len(answered) == len(self.traffic.answered) > 0
        return answered

    def impressions_accounted(self) -> float:
        """Impressions the nodes had acknowledged (``sent``) plus those they counted as dropped."""
        metric = "paperec_serving_impressions_total"
        sent = node_metric(self.urls, metric, 'outcome="sent"')
        return sent + sum(node_metric(self.urls, metric, f'outcome="{o}"') for o in IMPRESSION_DROPS)

    def check_impressions(self, answered: dict[str, str]) -> dict[str, Impression]:
        """Every answered list was a 200, has one impression sent or one counted drop, and is on
        the impressions topic; the impressions by request id."""
        self.wait("impressions delivered", lambda: self.impressions_accounted() >= len(answered), 60)
        assert self.impressions_accounted() == len(answered)
        ok = node_metric(self.urls, "paperec_serving_requests_total", 'route="/rank",status="200"')
        assert ok == len(answered)
        impressions = {
            imp.request_id: imp
            for imp in (decode(r.value, Impression) for r in read_topic(self.settings, TOPIC_IMPRESSIONS))
        }
        assert set(impressions) == set(answered), "answered lists missing on the impressions topic"
        return impressions

    def check_feedback(self) -> int:
        """Every click and dwell the traffic sent was acknowledged and is on its topic exactly
        once (the traffic has stopped: its producer flushed); their number."""
        assert self.traffic.sender.errors == 0, (
            f"{self.traffic.sender.errors} feedback events not acknowledged"
        )
        sent = Counter(e.value for e in self.traffic.feedback)
        on_topics = Counter(
            r.value for t in (TOPIC_CLICKS, TOPIC_DWELLS) for r in read_topic(self.settings, t)
        )
        missing, doubled = sent - on_topics, on_topics - sent
        assert not missing and not doubled, f"{missing.total()} feedback events lost, {doubled.total()} extra"
        return sent.total()

    def transitions(
        self, expected: Iterable[str], answered: dict[str, str], timeout_s: float
    ) -> dict[str, Transition]:
        """The transitions on the topic by id (deduplicated), read until they include ``expected``
        or ``timeout_s`` passed; each refers to answered lists of its user."""
        wanted = set(expected)
        got: dict[str, Transition] = {}

        def complete() -> bool:
            records = read_topic(self.settings, TOPIC_TRANSITIONS)
            got.update((tr.transition_id, tr) for tr in (decode(r.value, Transition) for r in records))
            return wanted <= set(got)

        self.until(complete, timeout_s)  # the caller checks the exact set last, after what must hold
        for tr in got.values():
            assert answered.get(tr.state.request_id) == tr.user_id, tr.transition_id
            assert tr.next_state is None or answered.get(tr.next_state.request_id) == tr.user_id
        return got

    def assert_exact_transitions(
        self, expected: dict[str, tuple[int, int]], got: Iterable[str], since_ms: int, since: str
    ) -> None:
        """The deduplicated transition ids equal the expected set; a failure says how many are
        missing, of lists answered how long after ``since`` (at ``since_ms``), and where the logs are."""
        got = set(got)
        lost = sorted(expected[tid][0] - since_ms for tid in expected.keys() - got)
        where = (
            f" (of lists answered {lost[0] / 1000:.1f} s to {lost[-1] / 1000:.1f} s after {since})"
            if lost
            else ""
        )
        assert got == set(expected), (
            f"{len(lost)} of {len(expected)} expected transitions missing{where}; "
            f"{len(got - expected.keys())} unexpected (services' logs: {self.logs})"
        )


@contextlib.contextmanager
def whole_loop(kafka: Settings, clickhouse: Settings, tmp_path: Path, topic_prefix: str) -> Iterator[Run]:
    """The demo's services on broker(s) ``kafka`` and ClickHouse ``clickhouse`` (each a private
    server's settings), topics and metric tables created, under traffic once the nodes are ready,
    yielded after the first snapshot; stopped (traffic, then services) on exit."""
    s = kafka.replace(
        clickhouse_port=clickhouse.clickhouse_port,
        clickhouse_http_port=clickhouse.clickhouse_http_port,
        serve_port=serve_base_port(),
        topic_prefix=topic_prefix,
        **STACK,
    )
    assert create_topics(s) == []
    init_tables(s)
    opts = DemoOptions(180.0, USERS, PARALLEL, SEED, None, None, tmp_path / "demo", False)
    logs = tmp_path / "demo" / "logs"
    services, urls = demo_services(s, opts, logs)
    log.warning("services' logs: %s", logs)
    supervisor = Supervisor()
    traffic = Traffic(s, urls, seed=SEED, users=USERS, parallel=PARALLEL, lists_per_s=LISTS_PER_S)
    run = Run(s, supervisor, traffic, SnapshotWatch(s), urls, logs)
    try:
        for svc in services:
            args = [*svc.args, *LEARNER_FLAGS] if svc.name == "learner" else svc.args
            # as_env sets every setting, the rollout's to their defaults (direct serving): the
            # demo's guarded rollout goes back on top, so the nodes serve as in the demo
            env = {**svc.env, **as_env(s), **DEMO_ROLLOUT_ENV}
            supervisor.start(dataclasses.replace(svc, args=args, env=env))
        run.wait("nodes ready", lambda: all(node_ready(u) for u in urls), 60)
        traffic.start()
        run.traffic_started = time.monotonic()
        run.wait("a first snapshot", lambda: run.watch.newest() > 0, 90)
        yield run
    finally:
        traffic.stop()
        run.watch.close()
        supervisor.stop_all()
