"""Acceptance tests of issue 20 part 1: Kafka with SASL/SCRAM-SHA-512 and ACLs per service.

Each test starts a PRIVATE secured broker (the ``secure_kafka`` fixture: the dev stack's broker
class with ``kafka_security_protocol=SASL_PLAINTEXT``, a SCRAM user per service role created at
format time, ``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false`` and the ACLs of
``base.kafka_acls.acl_plan``); the shared dev stack is never touched. Every client is built
by ``base/kafka.py`` from a role's settings (``PrivateKafka.as_role``), as the services build
theirs from their own ``PAPEREC_KAFKA_*`` environment.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.errors import TopicAuthorizationFailedError as AioTopicAuthorizationFailed
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError
from private_stack import PrivateKafka

from base import kafka as kafka_clients
from base.kafka_acls import ADMIN, FEEDBACK, LEARNER, ROLLOUT, SERVING, STREAMS
from base.settings import TOPIC_IMPRESSIONS, TOPIC_SNAPSHOTS, TOPIC_TRANSITIONS, Settings
from base.topics import create_topics
from paperec.demo import DemoOptions, demo_services
from paperec.devstack import cli as devstack_cli
from paperec.services import Supervisor
from paperec.traffic import Traffic, as_env, serve_base_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def send_sync(settings: Settings, topic: str) -> Any:
    """One record to ``topic`` with a kafka-python producer of ``settings``; its metadata."""
    producer = kafka_clients.producer(settings, acks="all", max_block_ms=10_000)
    try:
        return producer.send(topic, key=b"k", value=b"v").get(timeout=15)
    finally:
        producer.close(timeout=5)


async def send_aio(settings: Settings, topic: str) -> Any:
    """The same with an aiokafka producer (what the serving nodes use)."""
    producer = kafka_clients.aio_producer(settings, acks="all", request_timeout_ms=10_000)
    try:
        await producer.start()
        return await producer.send_and_wait(topic, key=b"k", value=b"v")
    finally:
        await producer.stop()


def test_only_the_learner_principal_writes_snapshots(secure_kafka: PrivateKafka) -> None:
    secure_kafka.prefixed("paperec.secure.writers.")
    admin = secure_kafka.as_role(ADMIN)
    assert create_topics(admin) == []  # the admin principal creates topics
    serving, learner = secure_kafka.as_role(SERVING), secure_kafka.as_role(LEARNER)
    snapshots = serving.topic(TOPIC_SNAPSHOTS)

    # the serving principal: refused on the snapshot topic, by both client libraries
    with pytest.raises(TopicAuthorizationFailedError, match="actor-snapshots"):
        send_sync(serving, snapshots)
    with pytest.raises(AioTopicAuthorizationFailed):
        asyncio.run(send_aio(serving, snapshots))
    # ... while it may write what is its own (so the refusal above is the ACL, not the login)
    assert asyncio.run(send_aio(serving, serving.topic(TOPIC_IMPRESSIONS))).offset == 0

    # the learner principal: accepted, and the record is there
    assert send_sync(learner, snapshots).offset == 0
    consumer = kafka_clients.consumer(serving, group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(snapshots, 0)
        assert consumer.end_offsets([tp]) == {tp: 1}  # and serving may read it
    finally:
        consumer.close()


def test_devstack_acls_grants_the_services_another_prefix(secure_kafka: PrivateKafka) -> None:
    """``paperec devstack acls``: ACLs are literal per topic prefix, so a new prefix (a demo
    run's) is reachable only once granted."""
    prefix = "paperec.secure.cli."
    admin, serving = (secure_kafka.as_role(r).replace(topic_prefix=prefix) for r in (ADMIN, SERVING))
    assert create_topics(admin) == []
    with pytest.raises(TopicAuthorizationFailedError):
        send_sync(serving, serving.topic(TOPIC_IMPRESSIONS))
    args = argparse.Namespace(action="acls", only=None, wipe=False)
    assert devstack_cli.run(args, secure_kafka.settings.replace(topic_prefix=prefix)) == 0
    assert send_sync(serving, serving.topic(TOPIC_IMPRESSIONS)).offset == 0


def test_a_client_without_credentials_gets_no_metadata(secure_kafka: PrivateKafka) -> None:
    """What Kafka does: the SASL listener answers the client's ApiVersions request, then closes
    the connection at its first other request ("Unexpected Kafka request of type METADATA during
    SASL handshake" in the broker's log), so the client never gets metadata: aiokafka fails at
    once, kafka-python retries until its bootstrap timeout. A wrong password fails the SCRAM
    exchange ("invalid credentials"), and the client gets no metadata either."""
    anonymous = secure_kafka.settings.replace(kafka_security_protocol="PLAINTEXT")
    wrong = secure_kafka.as_role(SERVING).replace(kafka_password="not-the-password")
    server_log = secure_kafka.kafka.log_dir / "server.log"

    started = time.monotonic()
    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        asyncio.run(send_aio(anonymous, anonymous.topic(TOPIC_IMPRESSIONS)))
    assert time.monotonic() - started < 10
    with pytest.raises(KafkaTimeoutError, match="Unable to bootstrap"):
        kafka_clients.admin(anonymous, bootstrap_timeout_ms=3_000)
    assert "Unexpected Kafka request of type METADATA during SASL handshake" in server_log.read_text()

    with pytest.raises(KafkaConnectionError):
        asyncio.run(send_aio(wrong, wrong.topic(TOPIC_IMPRESSIONS)))
    with pytest.raises(KafkaTimeoutError, match="Unable to bootstrap"):
        kafka_clients.admin(wrong, bootstrap_timeout_ms=3_000)
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in server_log.read_text()


# ------------------------------------------------------------------------------ the whole loop
SEED, USERS, PARALLEL, LISTS_PER_S = 20, 40, 4, 20.0
# Short windows, no ClickHouse (this test is about Kafka), frequent snapshots.
STACK = {
    "join_window_ms": 1_000,
    "join_lateness_ms": 300,
    "session_gap_ms": 2_000,
    "streams_idle_ms": 500,
    "streams_tick_ms": 100,
    "streams_commit_interval_s": 0.5,
    "serve_metrics_clickhouse": False,
    "streams_metrics_clickhouse": False,
    # topics are the admin's: the streams principal may not create them
    "streams_create_topics": False,
}
LEARNER_FLAGS = [
    *("--batch-size", "16", "--min-buffer", "32", "--snapshot-every-steps", "0"),
    *("--snapshot-every-s", "2", "--checkpoint-every-s", "30", "--no-metrics-clickhouse"),
]
ROLE_OF = {
    "streams": STREAMS,
    "learner": LEARNER,
    "actor-1": SERVING,
    "actor-2": SERVING,
    "rollout": ROLLOUT,
}


def service_env(s: Settings) -> dict[str, str]:
    """Every setting as its PAPEREC_* variable, credentials left empty: each service gets its
    own principal's on top."""
    return {**as_env(s), "PAPEREC_KAFKA_USERNAME": "", "PAPEREC_KAFKA_PASSWORD": ""}


def end_offset(settings: Settings, suffix: str) -> int:
    """Records on a topic (sum of its partitions' end offsets), read as ``settings``' principal."""
    consumer = kafka_clients.consumer(settings, group_id=None, enable_auto_commit=False)
    try:
        topic = settings.topic(suffix)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return sum(consumer.end_offsets(tps).values()) if tps else 0
    finally:
        consumer.close()


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def served_version(url: str) -> int:
    """The snapshot version a node serves (0: its cold-start model)."""
    return int(httpx.get(f"{url}/readyz").json().get("snapshot_version") or 0)


def test_the_loop_runs_under_sasl_with_one_principal_per_service(
    secure_kafka: PrivateKafka, tmp_path: Path
) -> None:
    """Streams, the learner and two serving nodes, each with only its own principal's
    credentials, and clients sending feedback as theirs: transitions are produced, a snapshot
    is published and both nodes load it."""
    secure_kafka.prefixed("paperec.secure.loop.")
    admin = secure_kafka.as_role(ADMIN)
    s = secure_kafka.settings.replace(serve_port=serve_base_port(), **STACK)
    assert create_topics(admin) == []
    opts = DemoOptions(60.0, USERS, PARALLEL, SEED, None, None, tmp_path / "demo", False)
    services, urls = demo_services(s, opts, tmp_path / "demo" / "logs")
    assert {svc.name for svc in services} == set(ROLE_OF)
    supervisor = Supervisor()
    traffic: Traffic | None = None

    def healthy() -> None:
        dead = supervisor.dead()
        assert not dead, f"{dead[0].name} exited:\n{dead[0].tail(60)}"
        assert traffic is None or traffic.error is None, f"traffic failed: {traffic.error!r}"

    def wait(what: str, cond: Any, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            healthy()
            if cond():
                return
            time.sleep(0.5)
        logs = "\n".join(f"--- {svc.name}\n{svc.tail(20)}" for svc in supervisor.services)
        pytest.fail(f"timed out waiting for {what}\n{logs}")

    try:
        for svc in services:
            args = [*svc.args, *LEARNER_FLAGS] if svc.name == "learner" else svc.args
            env = {**svc.env, **service_env(s), **secure_kafka.role_env(ROLE_OF[svc.name])}
            supervisor.start(dataclasses.replace(svc, args=args, env=env))
        wait("both nodes ready", lambda: all(ready(u) for u in urls), 60)
        traffic = Traffic(
            secure_kafka.as_role(FEEDBACK),
            urls,
            seed=SEED,
            users=USERS,
            parallel=PARALLEL,
            lists_per_s=LISTS_PER_S,
        ).start()
        wait("transitions from the streams worker", lambda: end_offset(admin, TOPIC_TRANSITIONS) > 0, 60)
        wait("a snapshot from the learner", lambda: end_offset(admin, TOPIC_SNAPSHOTS) > 0, 60)
        wait("both nodes serving a learner's snapshot", lambda: min(served_version(u) for u in urls) >= 1, 30)
        healthy()
        assert len(traffic.answered) > 0
    finally:
        if traffic is not None:
            traffic.stop()
        supervisor.stop_all()
