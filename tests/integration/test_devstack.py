"""`paperec devstack`: the shared stack is up and answering, `up` is idempotent, and an
up/up/down cycle of a second stack (own state dir and ports) leaves no process behind."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_driver import Client
from kafka.admin import KafkaAdminClient

from base.settings import Settings
from paperec.devstack.process import pid_alive, pids_with_marker

pytestmark = pytest.mark.integration

PAPEREC = [sys.executable, "-m", "paperec.cli", "devstack"]


def devstack(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PAPEREC, *args], capture_output=True, text=True, env=env, timeout=240, check=False
    )


def read_pid(state_dir: Path, service: str) -> int:
    return int((state_dir / service / f"{service}.pid").read_text())


def status_states(stdout: str) -> dict[str, str]:
    """{service: state} from the status table."""
    rows = [line.split() for line in stdout.splitlines()[1:] if line.strip()]
    return {row[0]: row[1] for row in rows}


# ------------------------------------------------------------------ the shared stack
def test_status_reports_every_service_up(settings: Settings) -> None:
    done = devstack("status")
    assert done.returncode == 0, done.stdout + done.stderr
    assert status_states(done.stdout) == {"kafka": "up", "clickhouse": "up"}
    assert str(settings.kafka_port) in done.stdout
    assert str(settings.clickhouse_port) in done.stdout


def test_up_again_is_a_noop_that_keeps_the_pids(settings: Settings) -> None:
    before = {s: read_pid(settings.state_path, s) for s in ("kafka", "clickhouse")}
    done = devstack("up")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("already running") == 2, done.stdout
    after = {s: read_pid(settings.state_path, s) for s in ("kafka", "clickhouse")}
    assert after == before
    assert all(pid_alive(pid) for pid in after.values())


def test_kafka_answers_a_metadata_request(kafka_bootstrap: str, settings: Settings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=10_000)
    try:
        cluster = admin.describe_cluster()
        assert isinstance(admin.list_topics(), list)
    finally:
        admin.close()
    assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [
        (settings.kafka_host, settings.kafka_port)
    ]


def test_clickhouse_answers_select_version(clickhouse_client: Client) -> None:
    [(version,)] = clickhouse_client.execute("SELECT version()")
    assert re.match(r"^\d+\.\d+", version), version


# ------------------------------------------------------------------ a second, private stack
def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def private_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for a second stack that cannot touch the shared one; torn down afterwards."""
    kafka, controller, native, http = free_ports(4)
    env = {
        **os.environ,
        "PAPEREC_STATE_DIR": str(tmp_path / "state"),
        "PAPEREC_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}",
        "PAPEREC_KAFKA_CONTROLLER_PORT": str(controller),
        "PAPEREC_CLICKHOUSE_PORT": str(native),
        "PAPEREC_CLICKHOUSE_HTTP_PORT": str(http),
    }
    yield env
    devstack("down", "--wipe", env=env)  # whatever the test did, stop what it started


def test_port_taken_fails_naming_the_setting(private_env: dict[str, str]) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        env = {**private_env, "PAPEREC_CLICKHOUSE_HTTP_PORT": str(port)}
        done = devstack("up", "--only", "clickhouse", env=env)
    assert done.returncode == 1
    assert f"port {port}" in done.stderr
    assert "PAPEREC_CLICKHOUSE_HTTP_PORT" in done.stderr
    assert not (Path(env["PAPEREC_STATE_DIR"]) / "clickhouse" / "clickhouse.pid").exists()


@pytest.mark.slow
def test_private_stack_up_up_down_leaves_no_process(private_env: dict[str, str]) -> None:
    state = Path(private_env["PAPEREC_STATE_DIR"])

    first = devstack("up", env=private_env)
    assert first.returncode == 0, first.stdout + first.stderr
    pids = {s: read_pid(state, s) for s in ("kafka", "clickhouse")}

    second = devstack("up", env=private_env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("already running") == 2
    assert {s: read_pid(state, s) for s in ("kafka", "clickhouse")} == pids

    status = devstack("status", env=private_env)
    assert status.returncode == 0
    assert status_states(status.stdout) == {"kafka": "up", "clickhouse": "up"}

    down = devstack("down", env=private_env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(pid_alive(pid) for pid in pids.values())
    assert pids_with_marker(str(state)) == []  # no java/clickhouse with this state dir left
    assert not (state / "kafka" / "kafka.pid").exists()

    status = devstack("status", env=private_env)
    assert status.returncode == 3
    assert status_states(status.stdout) == {"kafka": "down", "clickhouse": "down"}

    again = devstack("down", env=private_env)
    assert again.returncode == 0
    assert again.stdout.count("not running") == 2
