"""A PRIVATE Kafka broker and ClickHouse server for outage tests: the dev stack's own service
classes with another state dir and free loopback ports, so a test may stop, kill and restart them
(by pid) while the shared dev stack, used by others in parallel, is never touched.

The broker's jar cache is linked from the default state dir, so nothing is downloaded again.
The fixtures ``private_kafka`` and ``private_clickhouse`` (tests/integration/conftest.py) start
one per test and stop it afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from base.settings import Settings
from paperec.devstack.clickhouse import ClickHouse
from paperec.devstack.kafka import Kafka
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
    """A broker of our own (KRaft, single node)."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        shared_libs = Kafka(settings).libs_dir
        kafka = Kafka(
            settings.replace(
                state_dir=str(tmp / "state"),
                kafka_bootstrap=f"127.0.0.1:{free_port()}",
                kafka_controller_port=free_port(),
            )
        )
        kafka.root.mkdir(parents=True, exist_ok=True)
        if shared_libs.is_dir():  # reuse the jar cache: no second Maven download
            kafka.libs_dir.symlink_to(shared_libs, target_is_directory=True)
        kafka.prepare()
        super().__init__(kafka)
        self.kafka = kafka


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
