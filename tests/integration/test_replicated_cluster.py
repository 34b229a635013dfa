"""A replicated dev cluster (``paperec devstack up --brokers 3``'s code path) on PRIVATE ports and
dirs, never the shared dev stack: the topics are created with replication factor 3 and
min.insync.replicas 2; the leader of a transitions partition is SIGKILLed while an idempotent
acks=all producer (base/kafka.py) writes, and later restarted. Every acknowledged record is read
back exactly once (counted by a unique id), and the restarted node rejoins the in-sync replicas.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaError
from private_stack import PrivateKafkaCluster

from base import kafka as kafka_clients
from base.settings import TOPIC_TRANSITIONS, Settings
from base.topics import create_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEND_INTERVAL_S = 0.002  # ~500 records/s: enough in flight when the leader dies


class AckedProducer:
    """Writes records with unique ids from a thread and counts which the cluster acknowledged."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.producer = kafka_clients.producer(settings, client_id="replicated-test", linger_ms=5)
        self.topic = topic
        self.acked: list[bytes] = []
        self.failed: list[tuple[bytes, Exception]] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="acked-producer", daemon=True)

    def _on_ack(self, record_id: bytes) -> None:
        with self._lock:
            self.acked.append(record_id)

    def _on_error(self, record_id: bytes, exc: Exception) -> None:
        with self._lock:
            self.failed.append((record_id, exc))

    def _run(self) -> None:
        while not self._stop.is_set():
            record_id = f"r{self.sent:07d}".encode()
            future = self.producer.send(self.topic, key=record_id, value=record_id)
            future.add_callback(lambda _meta, rid=record_id: self._on_ack(rid))
            future.add_errback(lambda exc, rid=record_id: self._on_error(rid, exc))
            self.sent += 1
            time.sleep(SEND_INTERVAL_S)

    def start(self) -> None:
        self._thread.start()

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.producer.flush(timeout=60)
        self.producer.close(timeout=10)


def read_all(settings: Settings, topic: str) -> Counter[bytes]:
    """Every record of ``topic``, counted by value, up to the end offsets of now."""
    consumer = kafka_clients.consumer(
        settings, group_id=None, enable_auto_commit=False, consumer_timeout_ms=5000
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        seen: Counter[bytes] = Counter()
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in partitions) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                seen.update(r.value for r in records)
        return seen
    finally:
        consumer.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except KafkaError:  # a request that reached the killed node: ask again
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_acked_records_survive_a_sigkilled_partition_leader_exactly_once(
    settings: Settings, tmp_path: Path
) -> None:
    cluster = PrivateKafkaCluster(settings.replace(topic_prefix="paperec.replicated."), tmp_path)
    started = time.monotonic()
    cluster.start()
    try:
        s = cluster.settings
        assert (s.replication_factor, s.min_insync_replicas) == (3, 2)
        assert create_topics(s) == []  # verifies replication factor 3 and min.insync.replicas=2
        topic = s.topic(TOPIC_TRANSITIONS)
        leader, isr = cluster.partition_state(topic, 0)
        assert isr == [1, 2, 3]

        producer = AckedProducer(s, topic)
        producer.start()
        wait_until(lambda: producer.acked_count() >= 300, 20, "acknowledged records before the kill")
        cluster.kill9(leader)
        before_kill = producer.acked_count()
        # A new leader is elected once the controller fences the dead node (its session times out);
        # the producer retries the unacknowledged batches there.
        wait_until(lambda: cluster.partition_state(topic, 0)[0] != leader, 30, "a new leader")
        wait_until(lambda: producer.acked_count() >= before_kill + 500, 30, "acks from the new leader")
        cluster.restart(leader)
        wait_until(
            lambda: leader in cluster.partition_state(topic, 0)[1], 30, "the restarted node in the ISR"
        )
        wait_until(lambda: producer.acked_count() >= producer.sent - 50, 10, "acks after the restart")
        producer.stop()

        assert producer.failed == [], producer.failed[:3]
        assert len(producer.acked) == producer.sent  # every record sent was acknowledged
        seen = read_all(s, topic)
        missing = [rid for rid in producer.acked if seen[rid] == 0]
        doubled = [rid for rid, n in seen.items() if n > 1]
        assert missing == [], f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"
        assert doubled == [], f"{len(doubled)} records written twice (idempotence), e.g. {doubled[:5]}"
        assert sum(seen.values()) == len(producer.acked)
        print(
            f"replicated cluster: {len(producer.acked)} records acknowledged and read back exactly once "
            f"across a SIGKILL of leader node {leader}; {time.monotonic() - started:.0f} s in all"
        )
    finally:
        cluster.stop()


def test_a_secured_cluster_replicates_and_its_roles_write_and_read_across_nodes(
    settings: Settings, tmp_path: Path
) -> None:
    """SASL_PLAINTEXT on three nodes: the same SCRAM users on each (formatted alike), replication
    between nodes as the admin principal, the ACLs applied once the quorum is complete."""
    cluster = PrivateKafkaCluster(settings.replace(topic_prefix="paperec.secure3."), tmp_path, secured=True)
    cluster.start()
    try:
        assert create_topics(cluster.as_role("admin")) == []  # replication factor 3 verified
        topic = cluster.settings.topic(TOPIC_TRANSITIONS)
        producer = kafka_clients.producer(cluster.as_role("streams"), client_id="secure3-test")
        ids = [f"s{i:04d}".encode() for i in range(200)]
        for record_id in ids:
            producer.send(topic, key=record_id, value=record_id).get(timeout=30)  # acks=all: all ISR
        producer.close(timeout=10)
        assert cluster.partition_state(topic, 0)[1] == [1, 2, 3]
        seen = read_all(cluster.as_role("learner"), topic)
        assert sorted(seen) == ids and set(seen.values()) == {1}
    finally:
        cluster.stop()
