"""A PRIVATE Kafka broker and ClickHouse server for outage tests: the dev stack's own service
classes with another state dir and free loopback ports, so a test may stop, kill and restart them
(by pid) while the shared dev stack, used by others in parallel, is never touched.

The broker's jar cache is linked from the default state dir, so nothing is downloaded again.
The fixtures ``private_kafka`` and ``private_clickhouse`` (tests/integration/conftest.py) start
one per test and stop it afterwards; ``secure_kafka`` starts a secured broker (SASL_PLAINTEXT,
SCRAM users, ACLs per service principal: paperec/devstack/kafka.py), whose clients take a
role's settings from :meth:`PrivateKafka.as_role`. :class:`PrivateKafkaCluster` starts a
replicated cluster of its own (``paperec devstack up --brokers 3``'s code path) whose nodes a test
may SIGKILL and restart one by one.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from base import kafka as kafka_clients
from base.settings import Settings
from paperec.devstack import cli as devstack_cli
from paperec.devstack.clickhouse import ClickHouse
from paperec.devstack.kafka import SASL_PLAINTEXT, Kafka, kafka_nodes, replication
from paperec.devstack.process import Service, pid_alive, port_in_use, terminate


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_block(count: int, attempts: int = 200) -> int:
    """A port p with p .. p+count-1 all free on loopback (a cluster's derived ports)."""
    for _ in range(attempts):
        base = free_port()
        if base + count < 65536 and not any(port_in_use("127.0.0.1", base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1")


class _PrivateServer:
    """Start, SIGKILL, restart and stop one dev-stack server of our own, by pid."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.pid = 0

    def start(self) -> None:
        self.pid = self.service.spawn()
        self.service.wait_ready(self.pid)

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(self.pid) and time.monotonic() < deadline:  # pid_alive reaps the zombie
            time.sleep(0.05)

    def stop(self) -> None:
        if self.pid and pid_alive(self.pid):
            os.kill(self.pid, signal.SIGCONT)  # a test that failed while it was stopped
            terminate(self.pid)


class PrivateKafka(_PrivateServer):
    """A broker of our own (KRaft, single node). ``secured``: a SASL_PLAINTEXT listener, one SCRAM
    user per service role and the ACLs of ``settings``' topic prefix (its admin client's
    settings: ``as_role("admin")``)."""

    def __init__(self, settings: Settings, tmp: Path, *, secured: bool = False) -> None:
        shared_libs = Kafka(settings).libs_dir
        kafka = Kafka(
            settings.replace(
                state_dir=str(tmp / "state"),
                kafka_bootstrap=f"127.0.0.1:{free_port()}",
                kafka_controller_port=free_port(),
                kafka_security_protocol=SASL_PLAINTEXT if secured else "PLAINTEXT",
                kafka_username="",
                kafka_password="",
            )
        )
        kafka.root.mkdir(parents=True, exist_ok=True)
        if shared_libs.is_dir():  # reuse the jar cache: no second Maven download
            kafka.libs_dir.symlink_to(shared_libs, target_is_directory=True)
        kafka.prepare()
        super().__init__(kafka)
        self.kafka = kafka

    def as_role(self, role: str) -> Settings:
        """This broker's settings as the principal of ``role`` (a secured broker's)."""
        return self.kafka.client_settings(role)

    def prefixed(self, prefix: str) -> PrivateKafka:
        """Grant the ACLs of topic prefix ``prefix`` and use it from now on (one prefix per test
        on a shared secured broker)."""
        self.settings = self.settings.replace(topic_prefix=prefix)
        self.kafka = Kafka(self.settings)
        self.service = self.kafka
        self.kafka.apply_acls()
        return self

    def role_env(self, role: str) -> dict[str, str]:
        """``role``'s PAPEREC_KAFKA_* variables, for a service process."""
        return self.kafka.credentials(role)


class PrivateClickHouse(_PrivateServer):
    """A ClickHouse server of our own (its config only opens the native and HTTP ports)."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        clickhouse = ClickHouse(
            settings.replace(
                state_dir=str(tmp / "state"),
                clickhouse_port=free_port(),
                clickhouse_http_port=free_port(),
            )
        )
        clickhouse.prepare()
        super().__init__(clickhouse)


class PrivateKafkaCluster:
    """A replicated KRaft cluster of our own: ``brokers`` nodes on free consecutive loopback
    ports (node i: base + 2(i-1), controller + 1), started and stopped by the dev stack's own
    ``up``/``down``. ``settings`` bootstrap from every node and create topics with the cluster's
    replication factor and min.insync.replicas (3 and 2 for 3 nodes). ``secured``: SASL_PLAINTEXT,
    the SCRAM users on every node and the ACLs of ``settings``' topic prefix (``as_role``)."""

    def __init__(self, settings: Settings, tmp: Path, brokers: int = 3, *, secured: bool = False) -> None:
        base = free_port_block(2 * brokers)
        rf, min_isr = replication(brokers)
        plain = settings.replace(
            state_dir=str(tmp / "state"),
            kafka_bootstrap=f"127.0.0.1:{base}",
            kafka_controller_port=base + 1,
            kafka_brokers=brokers,
            kafka_security_protocol=SASL_PLAINTEXT if secured else "PLAINTEXT",
            kafka_username="",
            kafka_password="",
            replication_factor=rf,
            min_insync_replicas=min_isr,
        )
        self.nodes = kafka_nodes(plain)
        self.settings = plain.replace(kafka_bootstrap=self.nodes[0].bootstrap)
        shared_libs = Kafka(settings).libs_dir
        self.nodes[0].cluster_root.mkdir(parents=True, exist_ok=True)
        if shared_libs.is_dir():  # reuse the jar cache: no second Maven download
            self.nodes[0].libs_dir.symlink_to(shared_libs, target_is_directory=True)

    def as_role(self, role: str) -> Settings:
        """The cluster's settings (every node's listener) as the principal of ``role``."""
        return self.node(1).client_settings(role).replace(kafka_bootstrap=self.settings.kafka_bootstrap)

    def node(self, node_id: int) -> Kafka:
        return self.nodes[node_id - 1]

    def start(self) -> None:
        devstack_cli.up(self.nodes)  # prepare all, spawn all, then wait for all: a quorum forms

    def pid(self, node_id: int) -> int:
        pid = self.node(node_id).running_pid()
        assert pid is not None, f"kafka node {node_id} is not running"
        return pid

    def kill9(self, node_id: int) -> None:
        pid = self.pid(node_id)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:  # pid_alive reaps the zombie
            time.sleep(0.05)

    def restart(self, node_id: int) -> None:
        node = self.node(node_id)
        node.wait_ready(node.spawn())

    def stop(self) -> None:
        for node in self.nodes:
            pid = node.running_pid()
            if pid is not None:
                os.kill(pid, signal.SIGCONT)  # a test that failed while it was stopped
        devstack_cli.down(self.nodes, wipe=False)

    def partition_state(self, topic: str, partition: int) -> tuple[int, list[int]]:
        """(leader node id, in-sync replica ids) of one partition, as the cluster reports it
        (asked of the live nodes only: a killed one stays in the metadata until it is fenced)."""
        live = ",".join(f"{n.host}:{n.port}" for n in self.nodes if n.running_pid() is not None)
        settings = self.as_role("admin") if self.node(1).secured else self.settings
        admin = kafka_clients.admin(
            settings, bootstrap_servers=live, client_id="private-cluster", request_timeout_ms=10_000
        )
        try:
            (described,) = admin.describe_topics([topic])
        finally:
            admin.close()
        (state,) = [p for p in described["partitions"] if p["partition_index"] == partition]
        return int(state["leader_id"]), sorted(int(r) for r in state["isr_nodes"])
