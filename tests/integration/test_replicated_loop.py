"""Acceptance test of issue 19 ("Scale out"): the whole loop on a replicated cluster rides out the
SIGKILL of a partition leader.

On a PRIVATE 3-node KRaft cluster (tests/integration/private_stack.py ``PrivateKafkaCluster``:
replication factor 3, min.insync.replicas 2, every producer acks=all and idempotent) and a private
ClickHouse server (the shared dev stack is never signalled), the services ``paperec demo`` starts
(streams worker, learner, two serving nodes, rollout controller) run under seeded traffic, as the
outage acceptance test runs them (tests/integration/loop_run.py), bootstrapping from all three
nodes. After a baseline, the leader of the transitions topic's partition 0 is SIGKILLed, left down
for ``DOWN_S``, restarted and waited for in that partition's in-sync replicas; the traffic runs on
a little, then stops.

Then: no service process exited and every ``/rank`` answered 200 (checked throughout); the
nodes' acknowledged impressions + counted drops = lists answered, and every answered list is on
the impressions topic; every click and dwell the clients sent was acknowledged and is on its
topic exactly once; every transition refers to answered lists of its user, and the deduplicated
transition ids equal the set the answered lists give; a snapshot newer than any before the kill
is published while the node is down (two of three replicas are enough to write), and every
snapshot published after the restart is newer than those before the kill; the restarted node is
back in the partition's ISR. One summary line gives the counts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka.errors import KafkaError
from loop_run import SESSION_GAP_MS, expected_transitions, node_metric, now_ms, whole_loop
from private_stack import PrivateClickHouse, PrivateKafkaCluster

from base.settings import TOPIC_SNAPSHOTS, TOPIC_TRANSITIONS, Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITION = 0  # of the transitions topic: its leader is killed
BASELINE_S = 20.0  # traffic before the kill
DOWN_S = 20.0  # how long the killed node stays down
AFTER_S = 10.0  # traffic after the node is back in the ISR


def in_sync(cluster: PrivateKafkaCluster, topic: str, partition: int) -> list[int]:
    """The partition's in-sync replicas ([] while the cluster does not answer: ask again)."""
    try:
        return cluster.partition_state(topic, partition)[1]
    except KafkaError:
        return []


def test_the_loop_rides_out_a_sigkilled_partition_leader_on_three_brokers(
    settings: Settings, private_clickhouse: PrivateClickHouse, tmp_path: Path
) -> None:
    started = time.monotonic()
    cluster = PrivateKafkaCluster(settings, tmp_path / "kafka")
    cluster.start()
    try:
        kafka = cluster.settings
        assert (kafka.replication_factor, kafka.min_insync_replicas) == (3, 2)
        # every service bootstraps from every node: any one of them may be the one killed
        assert kafka.kafka_bootstrap.split(",") == [f"{n.host}:{n.port}" for n in cluster.nodes]
        with whole_loop(kafka, private_clickhouse.settings, tmp_path, "paperec.replicated-loop.") as run:
            s, watch = run.settings, run.watch
            topic = s.topic(TOPIC_TRANSITIONS)
            run.sleep(max(0.0, run.traffic_started + BASELINE_S - time.monotonic()))

            # the leader of transitions partition 0 dies; two replicas of each partition remain
            killed, isr = cluster.partition_state(topic, PARTITION)
            assert isr == [1, 2, 3]
            led_snapshots = cluster.partition_state(s.topic(TOPIC_SNAPSHOTS), 0)[0] == killed
            before = watch.newest()
            kill_ms, down_from = now_ms(), time.monotonic()
            cluster.kill9(killed)
            run.wait(
                f"a newer snapshot while node {killed} is down",
                lambda: any(v > before for v in watch.published_since(kill_ms)),
                DOWN_S + 30,
            )
            run.sleep(max(0.0, down_from + DOWN_S - time.monotonic()))

            cluster.restart(killed)
            back_ms = now_ms()
            run.wait(
                f"node {killed} back in the ISR", lambda: killed in in_sync(cluster, topic, PARTITION), 60
            )
            run.wait(
                "a snapshot published after the restart",
                lambda: any(v > before for v in watch.published_since(back_ms)),
                60,
            )
            run.sleep(AFTER_S)

            answered = run.answered()
            impressions = run.check_impressions(answered)  # acknowledged + dropped = answered, none lost
            feedback = run.check_feedback()
            acked = node_metric(run.urls, "paperec_serving_impressions_total", 'outcome="sent"')
            expected = expected_transitions(
                ((imp.user_id, imp.ts_ms, rid) for rid, imp in impressions.items()), SESSION_GAP_MS
            )
            transitions = run.transitions(expected, answered, 60)

            versions = watch.poll()
            during = [v for v, ts in versions if kill_ms <= ts < back_ms]
            after = [v for v, ts in versions if ts >= back_ms]
            assert during and min(during) > before, (before, during)
            assert after and min(after) > before, (before, after)
            assert in_sync(cluster, topic, PARTITION) == [1, 2, 3]
            run.healthy()
            print(
                f"replicated loop: node {killed} (leader of {topic}[{PARTITION}]"
                f"{' and of the snapshots' if led_snapshots else ''}) SIGKILLed for {DOWN_S:.0f} s and "
                f"restarted; {len(answered)} lists answered, {acked:.0f} impressions acknowledged, "
                f"{feedback} clicks and dwells acknowledged, {len(transitions)} transitions "
                f"({len(expected)} expected); snapshots before/during/after the outage "
                f"{len(versions) - len(during) - len(after)}/{len(during)}/{len(after)} "
                f"(versions {before} -> {max(during)} -> {max(after)}); "
                f"{time.monotonic() - started:.0f} s in all"
            )
            run.assert_exact_transitions(expected, transitions, kill_ms, f"node {killed} was killed")
    finally:
        cluster.stop()
