"""ClickHouse users with least privilege (docs/security.md), on a PRIVATE server configured by the
dev stack's own users file (paperec/devstack/clickhouse.py) with three users: the admin creates
the tables, the services' writer inserts but runs no DDL, the dashboard user only reads. The
shared dev stack's users are never touched. Passwords are generated here, per run.

The acceptance of issue 20: an INSERT as the dashboard user is refused, and the dashboards work
as that user (every query of `paperec dashboard`, through its own source and app, and every
Grafana panel's SQL).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from xml.etree import ElementTree

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException
from fastapi.testclient import TestClient
from private_stack import PrivateClickHouse
from test_dashboard import _expand_grafana_macros

from base.metrics_store import MetricRow, client, init_tables, sample_writer
from base.metrics_writer import now_utc
from base.settings import Settings
from paperec.dashboard.app import clickhouse_source, create_app
from paperec.dashboard.grafana import PANELS as GRAFANA_PANELS
from paperec.dashboard.queries import SERVING_P99
from streams.metrics import OUTCOME_COLUMNS

pytestmark = pytest.mark.integration  # a server of its own, started once: the module takes ~3 s

# ClickHouse error codes (the same in 18.16 and current releases).
READONLY = 164  # "Cannot execute query in readonly mode"
QUERY_IS_PROHIBITED = 392  # "DDL queries are prohibited for the user" (allow_ddl=0)
# UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, AUTHENTICATION_FAILED (current releases)
AUTHENTICATION_FAILED = {192, 193, 194, 516}
# the columns the streams worker writes list outcomes with, as it writes them
OUTCOMES_INSERT = ", ".join(OUTCOME_COLUMNS)


@pytest.fixture(scope="module")
def users_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings naming three users with fresh passwords, and a started private server with
    exactly those users. The admin is not `default`: the server runs without that user."""
    base = Settings.from_env().replace(
        clickhouse_admin_user="paperec_admin",
        clickhouse_admin_password=secrets.token_urlsafe(16),
        clickhouse_user="paperec_writer",
        clickhouse_password=secrets.token_urlsafe(16),
        clickhouse_dashboard_user="paperec_dashboard",
        clickhouse_dashboard_password=secrets.token_urlsafe(16),
    )
    server = PrivateClickHouse(base, tmp_path_factory.mktemp("clickhouse-users"))
    server.start()  # ready = the admin user answers (the dev stack probes as admin)
    try:
        yield server.settings
    finally:
        server.stop()


@pytest.fixture(scope="module")
def filled(users_settings: Settings) -> Settings:
    """The tables, created as admin, and a few minutes of metrics written as the services write
    them (the writer user): list outcomes, learner, serving and stream samples."""
    s = users_settings
    init_tables(s)
    now = now_utc()
    outcomes = [
        (
            now - timedelta(seconds=10 * i),
            f"req-{i}",
            f"user-{i % 7}",
            i // 10,
            ["click", "dwell"],
            [1 - (i % 10) / 10, (i % 10) / 10],
            [0.0, 0.0],
            20,
            i % 4,
            1000 * (i % 5),
            1,
            "holdout" if i % 10 == 0 else "personalized",  # the rollout's arm
            None,  # log_propensity
        )
        for i in range(40)
    ]
    writer = client(s, s.clickhouse_database)
    try:
        writer.execute(
            f"INSERT INTO {s.clickhouse_database}.list_outcomes ({OUTCOMES_INSERT}) VALUES", outcomes
        )
    finally:
        writer.disconnect()
    samples = {
        "learner_metrics": [("learner", "reward", ""), ("learner", "loss", "")],
        "serving_metrics": [("actor:test", SERVING_P99, 'route="/rank"')],
        "stream_metrics": [("streams:test", "events_in", "stage=join")],
    }
    for table, names in samples.items():
        metrics = sample_writer(s, table, flush_interval_s=0.1)
        for i in range(12):
            for source, name, label in names:
                metrics.add(MetricRow(now - timedelta(seconds=15 * i), source, name, label, float(i)))
        assert metrics.flush(timeout_s=20), f"{table}: the writer user's inserts did not land"
        metrics.close()
    return s


def _as(settings: Settings, role: Any) -> Client:
    return client(settings, settings.clickhouse_database, role=role)


def _refused(ch: Client, query: str, params: Any = None) -> int:
    """The server's error code for ``query`` (the test fails if it runs)."""
    with pytest.raises(ServerException) as exc:
        ch.execute(query, params) if params is not None else ch.execute(query)
    return int(exc.value.code)


def test_the_dashboard_user_cannot_write(filled: Settings) -> None:
    db = filled.clickhouse_database
    ch = _as(filled, "dashboard")
    try:
        row = [(now_utc(), "forged", "u", 1, ["click"], [1.0], [0.0], 1, 1, 0, 1, "", None)]
        assert _refused(ch, f"INSERT INTO {db}.list_outcomes ({OUTCOMES_INSERT}) VALUES", row) == READONLY
        assert _refused(ch, f"DROP TABLE {db}.learner_metrics") == READONLY
        assert _refused(ch, f"CREATE TABLE {db}.x (a UInt8) ENGINE = Memory") == READONLY
        assert _refused(ch, "SET readonly = 0") == READONLY
        # table functions read files (or URLs) on the server's side: readonly=1 refuses them
        assert _refused(ch, "SELECT * FROM file('users.xml', 'CSV', 'line String')") == READONLY
        # and it reads
        assert ch.execute(f"SELECT count() FROM {db}.list_outcomes FINAL") == [(40,)]
    finally:
        ch.disconnect()
    admin = client(filled, role="admin")
    try:
        assert admin.execute(f"SELECT count() FROM {db}.list_outcomes WHERE request_id = 'forged'") == [(0,)]
    finally:
        admin.disconnect()


def test_the_dashboards_work_as_the_dashboard_user(filled: Settings) -> None:
    # `paperec dashboard`'s own source (it connects as the dashboard user) and app
    dashboard = clickhouse_source(filled, window_minutes=60, step_s=30)()
    assert not dashboard.error, dashboard.error
    panels = {p.key: p for p in dashboard.panels}
    assert not [e for p in dashboard.panels for e in p.errors]
    for key in ("a", "b", "c", "d", "e"):  # what the rows above fill
        assert any(not chart.is_empty() for chart in panels[key].charts), f"panel ({key}) is empty"
    response = TestClient(create_app(clickhouse_source(filled, 60, 30))).get("/api/panels.json")
    assert response.status_code == 200, response.text[:500]
    # every Grafana panel's SQL (unqualified tables: the data source's default database)
    ch = _as(filled, "dashboard")
    try:
        rows = {(p[0], p[1]): ch.execute(_expand_grafana_macros(p[5])) for p in GRAFANA_PANELS}
    finally:
        ch.disconnect()
    for (key, title), result in rows.items():
        if key in ("a", "b"):  # list_outcomes, which the rows above fill
            assert result, f"Grafana panel ({key}) {title} is empty"


def test_a_wrong_password_is_refused(users_settings: Settings) -> None:
    s = users_settings.replace(
        clickhouse_dashboard_password="not-" + users_settings.clickhouse_dashboard_password
    )
    ch = _as(s, "dashboard")
    try:
        assert _refused(ch, "SELECT 1") in AUTHENTICATION_FAILED
    finally:
        ch.disconnect()
    dashboard = clickhouse_source(s, window_minutes=60, step_s=30)()
    assert "paperec_dashboard" in dashboard.error  # the page names the user that failed


def test_the_writer_inserts_but_runs_no_ddl(filled: Settings) -> None:
    db = filled.clickhouse_database
    ch = _as(filled, "writer")
    try:
        assert _refused(ch, f"DROP TABLE {db}.list_outcomes") == QUERY_IS_PROHIBITED
        assert _refused(ch, f"CREATE TABLE {db}.x (a UInt8) ENGINE = Memory") == QUERY_IS_PROHIBITED
        assert _refused(ch, f"CREATE DATABASE other_{uuid.uuid4().hex[:6]}") == QUERY_IS_PROHIBITED
    finally:
        ch.disconnect()


def test_services_start_with_writer_credentials_only(filled: Settings) -> None:
    """A service calls init_tables on start with its writer credentials and no admin password:
    with the tables in place it needs no DDL, so it must not need the admin either; a missing
    table does need the admin (and fails without it)."""
    no_admin = filled.replace(clickhouse_admin_password="")
    init_tables(no_admin)  # tables current: checked as the writer, no admin login
    db = filled.clickhouse_database
    admin = client(filled, role="admin")
    try:
        admin.execute(f"DROP TABLE {db}.stream_metrics")
        with pytest.raises(ServerException) as exc:
            init_tables(no_admin)
        assert exc.value.code in AUTHENTICATION_FAILED
        init_tables(filled)  # the admin recreates it
        assert admin.execute(f"EXISTS TABLE {db}.stream_metrics") == [(1,)]
    finally:
        admin.disconnect()


def test_the_users_file_is_private_and_has_no_open_default_user(users_settings: Settings) -> None:
    users_xml = users_settings.state_path / "clickhouse" / "config" / "users.xml"
    assert users_xml.stat().st_mode & 0o077 == 0, "users.xml must be readable by its owner only"
    users = {u.tag for u in ElementTree.parse(users_xml).getroot().iterfind("users/*")}
    assert users == {"paperec_admin", "paperec_writer", "paperec_dashboard"}, "no password-less default user"
