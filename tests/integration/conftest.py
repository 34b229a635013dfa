"""Fixtures for tests against the real dev stack (Kafka broker + ClickHouse server).

Every test under tests/integration is marked ``integration`` and needs the stack started by
``paperec devstack up`` (``scripts/test.sh`` does that). If the stack is not reachable the tests
FAIL with that hint rather than skip, so a broken stack never passes as green; set
``PAPEREC_SKIP_INTEGRATION=1`` to skip them deliberately.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_driver import Client
from private_stack import PrivateClickHouse, PrivateKafka

from base.settings import Settings
from base.topics import delete_prefixed_topics
from paperec.devstack.clickhouse import ClickHouse
from paperec.devstack.kafka import Kafka

HERE = Path(__file__).parent
SKIP_ENV = "PAPEREC_SKIP_INTEGRATION"


def _skip_requested() -> bool:
    return os.environ.get(SKIP_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason=f"{SKIP_ENV}=1")
    for item in items:
        if HERE not in Path(str(item.path)).parents:
            continue  # this hook sees the whole session's items
        item.add_marker(pytest.mark.integration)
        if _skip_requested():
            item.add_marker(skip)


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The same settings the CLI would use: defaults, then PAPEREC_* variables."""
    return Settings.from_env()


@pytest.fixture(scope="session")
def _devstack_reachable(settings: Settings) -> None:
    # Session-scoped: probed once; pytest re-raises a failed check for every later test.
    down = [
        f"{svc.name} at {svc.address}" for svc in (Kafka(settings), ClickHouse(settings)) if not svc.probe()
    ]
    if down:
        pytest.fail(
            f"dev stack not reachable: {', '.join(down)}. Start it with `paperec devstack up` "
            f"(or `make devstack-up`; `bash scripts/test.sh` does it for you), or set {SKIP_ENV}=1 "
            "to skip the integration tests.",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _require_devstack(_devstack_reachable: None) -> None:
    """Every integration test needs the stack, even one that only asks for ``settings``."""


@pytest.fixture(scope="session")
def kafka_bootstrap(settings: Settings) -> str:
    return settings.kafka_bootstrap


@pytest.fixture
def clickhouse_client(settings: Settings) -> Iterator[Client]:
    """A native-protocol client on the ``default`` database (qualify table names)."""
    client = Client(
        host=settings.clickhouse_host,
        port=settings.clickhouse_port,
        user=settings.clickhouse_user,
        password=settings.clickhouse_password,
    )
    try:
        yield client
    finally:
        client.disconnect()


@pytest.fixture
def unique_prefix(settings: Settings) -> Iterator[str]:
    """A per-test topic prefix (``paperec.test.<8 hex>.``); its topics are deleted afterwards."""
    prefix = f"paperec.test.{uuid.uuid4().hex[:8]}."
    yield prefix
    # best effort: keeps the dev broker from collecting thousands of test topics over time
    with contextlib.suppress(Exception):
        delete_prefixed_topics(settings.replace(topic_prefix=prefix))


@pytest.fixture
def private_kafka(settings: Settings, tmp_path: Path) -> Iterator[PrivateKafka]:
    """A started broker of this test's own, to stop, kill and restart (tests/integration/private_stack.py)."""
    broker = PrivateKafka(settings, tmp_path / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def secure_kafka(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    """A started SECURED broker of this module's own: SASL_PLAINTEXT (SCRAM-SHA-512), a user per
    service role, ACLs for the topic prefix ``paperec.secure.``; a test gets its own prefix's
    with ``PrivateKafka.prefixed`` (tests/integration/private_stack.py). Module-scoped: starting
    one costs 10-25 s on the 2-core CI machine."""
    broker = PrivateKafka(
        settings.replace(topic_prefix="paperec.secure."), tmp_path_factory.mktemp("kafka"), secured=True
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def private_clickhouse(settings: Settings, tmp_path: Path) -> Iterator[PrivateClickHouse]:
    """A started ClickHouse server of this test's own, to kill and restart."""
    server = PrivateClickHouse(settings, tmp_path / "clickhouse")
    server.start()
    try:
        yield server
    finally:
        server.stop()
