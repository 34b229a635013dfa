"""The compose broker's own files on a real Kafka: deploy/kafka/start.sh with
deploy/kafka/server.properties (ports, host and log dir moved to a private loopback copy) formats
the storage with the SCRAM users and starts a broker that denies by default; ``paperec topics
create`` and ``paperec topics acls`` as the admin principal (its password from a file, as a
mounted secret would give it) then give each service exactly its role's rights.

No Docker here: the apache/kafka image's tools are stood in for by the dev stack's broker jars
(the same Kafka 4 classes, ``kafka.tools.StorageTool`` and ``kafka.Kafka``), in a private
directory and on free ports; the shared dev stack is never touched.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import TopicAuthorizationFailedError as AioTopicAuthorizationFailed
from kafka.errors import TopicAuthorizationFailedError
from private_stack import free_port

from base import kafka as kafka_clients
from base.settings import TOPIC_IMPRESSIONS, TOPIC_SNAPSHOTS, Settings
from base.topics import create_topics
from paperec.cli import main
from paperec.devstack.kafka import Kafka, require_java
from paperec.devstack.process import tcp_accepts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = ("ADMIN", "CONTROLLER", "SERVING", "STREAMS", "LEARNER", "FEEDBACK", "REPLAY", "ROLLOUT")


def kafka_home(tmp: Path, libs: Path) -> Path:
    """``bin/kafka-storage.sh`` and ``bin/kafka-server-start.sh`` over the dev stack's jars."""
    home = tmp / "kafka-home"
    (home / "bin").mkdir(parents=True)
    java = f'"{require_java()}" -Xmx512m -cp "{libs}/*" -Dlog4j2.level=WARN'
    tools = {"kafka-storage.sh": "kafka.tools.StorageTool", "kafka-server-start.sh": "kafka.Kafka"}
    for name, main_class in tools.items():
        (home / "bin" / name).write_text(f'#!/bin/sh\nexec {java} {main_class} "$@"\n')
        (home / "bin" / name).chmod(0o755)
    return home


@pytest.fixture(scope="module")
def compose_broker(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, dict]]:
    libs = Kafka(settings).libs_dir
    if not any(libs.glob("kafka_2.13-*.jar")):
        pytest.skip(f"no broker jars in {libs} (`paperec devstack up` fetches them)")
    tmp = tmp_path_factory.mktemp("compose-kafka")
    port, controller = free_port(), free_port()
    deploy = tmp / "deploy-kafka"
    shutil.copytree(ROOT / "deploy/kafka", deploy)
    props = (deploy / "server.properties").read_text()
    for old, new in {
        "SASL_PLAINTEXT://:9092": f"SASL_PLAINTEXT://127.0.0.1:{port}",
        "SASL_PLAINTEXT://kafka:9092": f"SASL_PLAINTEXT://127.0.0.1:{port}",
        "127.0.0.1:9093": f"127.0.0.1:{controller}",
        "log.dirs=/var/lib/kafka/data": f"log.dirs={tmp / 'data'}",
    }.items():
        assert old in props, old
        props = props.replace(old, new)
    (deploy / "server.properties").write_text(props)
    passwords = {f"PAPEREC_KAFKA_{r}_PASSWORD": secrets.token_urlsafe(24) for r in PASSWORDS}
    env = {
        **os.environ,
        **passwords,
        "KAFKA_HOME": str(kafka_home(tmp, libs)),
        "PAPEREC_KAFKA_CONF_DIR": str(tmp / "conf"),
    }
    with (tmp / "broker.log").open("wb") as out:
        proc = subprocess.Popen(
            ["sh", str(deploy / "start.sh")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not tcp_accepts("127.0.0.1", port):
            assert proc.poll() is None, (tmp / "broker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the broker did not listen within 60 s"
            time.sleep(0.2)
        base = settings.replace(
            kafka_bootstrap=f"127.0.0.1:{port}",
            kafka_security_protocol="SASL_PLAINTEXT",
            topic_prefix="paperec.compose.",
        )
        yield base, passwords
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def as_user(base: Settings, passwords: dict, role: str) -> Settings:
    return base.replace(
        kafka_username=f"paperec-{role}", kafka_password=passwords[f"PAPEREC_KAFKA_{role.upper()}_PASSWORD"]
    )


async def send(settings: Settings, topic: str) -> int:
    producer = kafka_clients.aio_producer(settings, acks="all", request_timeout_ms=10_000)
    try:
        await producer.start()
        return (await producer.send_and_wait(topic, key=b"k", value=b"v")).offset
    finally:
        await producer.stop()


def test_init_as_the_admin_gives_each_service_its_rights_on_the_compose_broker(
    compose_broker: tuple[Settings, dict], tmp_path: Path
) -> None:
    base, passwords = compose_broker
    admin = as_user(base, passwords, "admin")
    serving, learner = as_user(base, passwords, "serving"), as_user(base, passwords, "learner")
    snapshots, impressions = base.topic(TOPIC_SNAPSHOTS), base.topic(TOPIC_IMPRESSIONS)
    assert create_topics(admin) == []  # the admin: a super user

    # denied by default: no ACLs yet, so not even the serving node's own topic
    with pytest.raises(TopicAuthorizationFailedError):
        kafka_clients.producer(serving, max_block_ms=10_000).send(impressions, b"v").get(timeout=15)

    # `paperec topics acls` as compose's init runs it, the password from a mounted file
    secret = tmp_path / "admin-password"
    secret.write_text(passwords["PAPEREC_KAFKA_ADMIN_PASSWORD"] + "\n")
    flags = [f"--kafka-bootstrap={base.kafka_bootstrap}", "--kafka-security-protocol=SASL_PLAINTEXT"]
    flags += [
        "--kafka-username=paperec-admin",
        f"--kafka-password-file={secret}",
        f"--topic-prefix={base.topic_prefix}",
    ]
    assert main(["topics", "acls", *flags]) == 0
    assert main(["topics", "acls", *flags]) == 0  # idempotent (init runs on every `up`)

    assert asyncio.run(send(serving, impressions)) == 0
    with pytest.raises(AioTopicAuthorizationFailed):
        asyncio.run(send(serving, snapshots))
    assert asyncio.run(send(learner, snapshots)) == 0

    # a service principal is no admin: it cannot grant itself more
    denied = main(
        [
            "topics",
            "acls",
            *flags[:2],
            "--kafka-username=paperec-serving",
            f"--kafka-password={passwords['PAPEREC_KAFKA_SERVING_PASSWORD']}",
            f"--topic-prefix={base.topic_prefix}",
        ]
    )
    assert denied == 1
