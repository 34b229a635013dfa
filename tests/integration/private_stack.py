"""A PRIVATE Kafka broker and ClickHouse server for outage tests: the dev stack's own service
classes with another state dir and free loopback ports, so a test may stop, kill and restart them
(by pid) while the shared dev stack, used by others in parallel, is never touched.

The broker's jar cache is linked from the default state dir, so nothing is downloaded again.
The fixtures ``private_kafka`` and ``private_clickhouse`` (tests/integration/conftest.py) start
one per test and stop it afterwards; ``secure_kafka`` starts a secured broker (SASL_PLAINTEXT,
SCRAM users, ACLs per service principal: paperec/devstack/kafka.py), whose clients take a
role's settings from :meth:`PrivateKafka.as_role`.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from base.settings import Settings
from paperec.devstack.clickhouse import ClickHouse
from paperec.devstack.kafka import SASL_PLAINTEXT, Kafka
from paperec.devstack.process import Service, pid_alive, terminate


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
