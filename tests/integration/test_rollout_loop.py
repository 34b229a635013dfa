"""Acceptance test of issue 18, part 2: canary, promotion and automatic rollback in a running loop.

On the shared dev stack (a topic prefix and a ClickHouse database of this test's own), the streams
worker, two serving nodes in guarded mode and the rollout controller run as processes, started as
``paperec demo`` starts them (``paperec.demo.demo_services``, without the learner: this test
publishes the snapshots, signed as the learner signs them). Seeded simulated users go through
``POST /rank`` on both nodes and send their clicks and dwells to Kafka.

1. v1, a ranker that orders items by their bait and quality proxies (good without training,
   ``rollout.devtools``), is published: the controller bootstraps it.
2. v2, the same model, is published: canary, then promoted (non-inferior within ``max_drop``).
3. v3, the same model with its scores negated (harmful), is published: canary; the controller is
   SIGKILLed while the canary runs and started again; it recovers the open canary from the control
   topic, re-reads the canary's lists and rolls v3 back.

Then: both nodes applied every decision within 1 s of it being made (the nodes' histogram of
decision-to-applied seconds); v3 served only canary users, at most the canary share of the
non-holdout impressions while its canary ran, and no impression after the rollback reached the
nodes; the holdout was always served the incumbent; every decision has its row in ClickHouse.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import TopicPartition

from actor_service.devtools import SnapshotPublisher, metric_value, snapshot_record
from base import kafka as kafka_clients
from base.kafka import read_topic
from base.metrics_store import client, init_tables
from base.settings import TOPIC_IMPRESSIONS, TOPIC_ROLLOUT, Settings
from base.topics import create_topics
from model.rollout_signing import decode_decision
from model.snapshot_keys import snapshot_keys
from paperec.demo import DemoOptions, demo_services
from paperec.services import ServiceProcess, Supervisor
from paperec.traffic import Traffic, as_env, serve_base_port
from rollout.devtools import negated, proxy_ranker_model
from schemas import Impression, RolloutDecision, decode_impression
from simulator import SimulatorConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

log = logging.getLogger(__name__)

SEED, USERS, PARALLEL, LISTS_PER_S = 18, 2000, 8, 40.0
CANARY_SHARE, HOLDOUT_SHARE = 0.5, 0.1
STACK = {
    "join_window_ms": 2_000,
    "join_lateness_ms": 500,
    "session_gap_ms": 3_000,
    "streams_idle_ms": 500,
    "streams_tick_ms": 100,
    "streams_commit_interval_s": 0.5,
    "serve_metrics_interval_s": 1.0,
    # the guarded rollout: a wide guard-rail and short canaries (the negated ranker's dwell per
    # impression falls by about 70%, a copy of the incumbent changes nothing)
    "rollout": "guarded",
    "holdout_share": HOLDOUT_SHARE,
    "canary_share": CANARY_SHARE,
    "rollout_max_drop": 0.5,
    "rollout_min_lists": 100,
    "rollout_max_lists": 5_000,
    "rollout_ope_lists": 0,
}


class DecisionWatch:
    """Follows the control topic: every verified decision, in order."""

    def __init__(self, settings: Settings) -> None:
        self.keys = snapshot_keys(settings.replace(dev_mode=True)).accepted
        self.consumer = kafka_clients.consumer(settings, group_id=None, enable_auto_commit=False)
        tp = TopicPartition(settings.topic(TOPIC_ROLLOUT), 0)
        self.consumer.assign([tp])
        self.consumer.seek_to_beginning(tp)
        self.seen: list[RolloutDecision] = []

    def poll(self) -> list[RolloutDecision]:
        for records in self.consumer.poll(timeout_ms=100).values():
            self.seen += [decode_decision(r.value, self.keys) for r in records]
        return self.seen

    def find(self, decision: str, version: int) -> RolloutDecision | None:
        return next((d for d in self.poll() if (d.decision, d.version) == (decision, version)), None)

    def close(self) -> None:
        self.consumer.close()


class Loop:
    """The services and the traffic, checked while waiting."""

    def __init__(self, supervisor: Supervisor, watch: DecisionWatch) -> None:
        self.supervisor = supervisor
        self.watch = watch
        self.traffic: Traffic | None = None

    def healthy(self) -> None:
        dead = self.supervisor.dead()
        assert not dead, f"{dead[0].name} exited:\n{dead[0].tail(60)}"
        if self.traffic is not None:
            assert self.traffic.error is None, f"a /rank request failed: {self.traffic.error!r}"

    def wait(self, what: str, cond: Callable[[], Any], timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.healthy()
            value = cond()
            if value:
                log.warning("%s after %.1f s", what, timeout_s - (deadline - time.monotonic()))
                return value
            time.sleep(0.1)
        logs = "\n".join(f"--- {s.name}\n{s.tail(20)}" for s in self.supervisor.services)
        pytest.fail(f"timed out waiting for {what}; decisions {self.watch.poll()}\n{logs}")

    def decision(self, kind: str, version: int, timeout_s: float) -> RolloutDecision:
        found: RolloutDecision = self.wait(
            f"{kind} of v{version}", lambda: self.watch.find(kind, version), timeout_s
        )
        return found


def readyz(url: str) -> dict[str, Any]:
    try:
        r = httpx.get(f"{url}/readyz", timeout=2.0)
    except httpx.HTTPError:
        return {}
    return dict(r.json()) if r.status_code == 200 else {}


def scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=5.0).text


def impressions(settings: Settings) -> Iterator[Impression]:
    for rec in read_topic(settings, TOPIC_IMPRESSIONS):
        yield decode_impression(rec.value)


def test_a_harmful_snapshot_is_rolled_back_and_a_good_one_promoted(
    settings: Settings, unique_prefix: str, tmp_path: Path
) -> None:
    database = f"paperec_rollout_{uuid.uuid4().hex[:8]}"
    s = settings.replace(
        topic_prefix=unique_prefix,
        clickhouse_database=database,
        serve_port=serve_base_port(),
        dev_mode=True,
        **STACK,
    )
    assert create_topics(s) == []
    init_tables(s)
    sim = SimulatorConfig(seed=SEED, n_users=USERS)
    good = proxy_ranker_model(sim.ranker_config(), bait_index=sim.n_topics, quality_index=sim.n_topics + 1)
    harmful = negated(good)

    log_dir = tmp_path / "logs"
    opts = DemoOptions(0.0, USERS, PARALLEL, SEED, None, None, tmp_path, False)
    services, urls = demo_services(s, opts, log_dir)
    services = [
        dataclasses.replace(svc, env={**svc.env, **as_env(s)}) for svc in services if svc.name != "learner"
    ]
    controller_url = f"http://127.0.0.1:{s.serve_port + 3}"
    log.warning("services' logs: %s", log_dir)
    supervisor = Supervisor()
    watch = DecisionWatch(s)
    loop = Loop(supervisor, watch)
    publisher = SnapshotPublisher(s)
    traffic = Traffic(s, urls, seed=SEED, users=USERS, parallel=PARALLEL, lists_per_s=LISTS_PER_S)
    try:
        for svc in services:
            supervisor.start(svc)
        loop.wait("nodes ready", lambda: all(readyz(u) for u in urls), 90)

        # 1. bootstrap
        publisher.publish(snapshot_record(good, 1, s))
        boot = loop.decision("bootstrap", 1, 30)
        loop.wait("v1 served", lambda: all(readyz(u).get("snapshot_version") == 1 for u in urls), 10)
        loop.traffic = traffic.start()

        # 2. a good snapshot: canary, promoted
        publisher.publish(snapshot_record(good, 2, s))
        canary2 = loop.decision("canary", 2, 30)
        assert (canary2.incumbent, canary2.candidate, canary2.canary_share) == (1, 2, CANARY_SHARE)
        promote2 = loop.decision("promote", 2, 120)
        assert promote2.incumbent == 2 and promote2.candidate is None, promote2
        assert promote2.evidence["lists.canary"] >= 100 and promote2.evidence["dwell.lower"] > -0.5

        # 3. a harmful one: canary; the controller dies mid-canary and is started again
        publisher.publish(snapshot_record(harmful, 3, s))
        canary3 = loop.decision("canary", 3, 30)
        controller = next(svc for svc in supervisor.services if svc.name == "rollout")

        def counted() -> float:
            try:
                return metric_value(scrape(controller_url), "paperec_rollout_canary_lists", 'arm="canary"')
            except httpx.HTTPError:
                return 0.0

        before_kill = loop.wait("canary lists of v3 counted", lambda: counted() >= 5 and counted(), 60)
        controller.signal_group(signal.SIGKILL)
        assert controller.proc is not None
        controller.proc.wait(10)
        controller.stopped = True  # killed on purpose
        assert watch.find("rollback", 3) is None, "rolled back before the kill: nothing left to recover"
        killed_at = time.monotonic()
        supervisor.start(
            ServiceProcess("rollout-restarted", controller.args, controller.env, controller.log_path)
        )
        rollback3 = loop.decision("rollback", 3, 120)
        log.warning("rollback %.1f s after the kill", time.monotonic() - killed_at)
        assert (rollback3.incumbent, rollback3.candidate, rollback3.rejected) == (2, None, (3,))
        assert rollback3.reason.startswith("guard-rail crossed"), rollback3.reason
        assert rollback3.evidence["dwell.upper"] < -0.5
        # the restarted controller re-read the canary's lists from its start, those counted before too
        assert rollback3.evidence["lists.canary"] >= before_kill
        assert f"recovered from decision {canary3.decision_id}" in controller.log_path.read_text()

        time.sleep(4)  # traffic after the rollback
        traffic.stop()
        loop.traffic = None
        loop.healthy()

        # every decision reached both nodes within 1 s of being made (and the latest is applied)
        decisions = [boot, canary2, promote2, canary3, rollback3]
        assert [d.decision_id for d in watch.poll()] == [d.decision_id for d in decisions]
        for url in urls:
            text = scrape(url)
            name = "paperec_serving_rollout_decision_to_applied_seconds"
            applied = metric_value(text, name + "_count")
            within = metric_value(text, name + "_bucket", 'le="1.0"')
            mean_ms = 1000 * metric_value(text, name + "_sum") / max(applied, 1)
            log.warning(
                "%s: %d decisions applied, %d within 1 s, mean %.0f ms", url, applied, within, mean_ms
            )
            assert applied == len(decisions) and within == applied, text
            assert readyz(url)["decision_id"] == rollback3.decision_id

        # who served what: v3 only to canary users, at most its share, never after the rollback
        def all_impressions() -> list[Impression]:
            xs = list(impressions(s))
            return xs if len(xs) >= len(traffic.answered) else []

        served: list[Impression] = loop.wait(
            "every answered list's impression on the topic", all_impressions, 20
        )
        assert len(served) == len(traffic.answered) > 0
        by_version = Counter(i.snapshot_version for i in served)
        log.warning(
            "impressions by version %s, by arm %s", dict(by_version), dict(Counter(i.arm for i in served))
        )
        v3 = [i for i in served if i.snapshot_version == 3]
        assert v3 and {i.arm for i in v3} == {"canary"}
        assert max(i.ts_ms for i in v3) <= rollback3.decided_at_ms + 1000
        during = [
            i
            for i in served
            if canary3.decided_at_ms + 1000 <= i.ts_ms <= rollback3.decided_at_ms and i.arm != "holdout"
        ]
        share = sum(i.snapshot_version == 3 for i in during) / len(during)
        log.warning("v3 served %.3f of %d non-holdout lists during its canary", share, len(during))
        assert share <= CANARY_SHARE + 0.1
        assert len(v3) / len(served) <= CANARY_SHARE
        # the holdout is served the incumbent (v1 before the promotion, v2 after; a node applies a
        # decision within a second), with fixed weights: no propensity
        holdout = [i for i in served if i.arm == "holdout"]
        assert holdout and all(i.log_propensity is None for i in holdout)
        assert {i.snapshot_version for i in holdout if i.ts_ms < promote2.decided_at_ms} == {1}
        assert {i.snapshot_version for i in holdout if i.ts_ms > promote2.decided_at_ms + 1000} == {2}

        # a row per decision in ClickHouse
        ch = client(s, database)
        try:
            deadline = time.monotonic() + 15
            rows: list[tuple[str, str]] = []
            while time.monotonic() < deadline and len(rows) < len(decisions):
                rows = ch.execute(
                    f"SELECT decision_id, decision FROM {database}.rollout_decisions FINAL ORDER BY ts"
                )
                time.sleep(0.5)
            assert sorted(rows) == sorted((d.decision_id, d.decision) for d in decisions)
        finally:
            ch.disconnect()
    finally:
        traffic.stop()
        supervisor.stop_all()
        publisher.close()
        watch.close()
        try:
            ch = client(s, role="admin")
            ch.execute(f"DROP DATABASE IF EXISTS {database}")
            ch.disconnect()
        except Exception as exc:
            log.warning("could not drop %s: %s", database, exc)
