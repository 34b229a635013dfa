"""``paperec metrics init``: the ClickHouse database and metric tables.

The SQL is restricted to what ClickHouse 18.16 (the dev stack's Debian package) and current
ClickHouse both run: MergeTree family with PARTITION BY/ORDER BY, DateTime, Float64, String,
Array, UInt*, Nullable. No DateTime64, TTL, Map, JSON or LowCardinality (18.16 refuses it
without an experimental setting: the rollout arm is a plain String).

Idempotent rows: inserts are at-least-once (a writer retries a batch whose insert may have landed;
the streams worker re-emits the list outcomes of its uncommitted tail after a restart). So every
row carries a deterministic ``row_id`` (a list outcome's is its ``request_id``; a sample's is
given by its writer, the same on every retry), the tables are ``ReplacingMergeTree`` with the
row id in the sorting key, and every query reads them with ``FINAL``, which collapses the
copies that background merges have not collapsed yet. ``init_tables`` migrates tables created
before (plain MergeTree, no ``row_id``) in place, and adds the columns added since
(``ADDED_COLUMNS``) that a table lacks with ``ALTER TABLE ... ADD COLUMN``.

Users (docs/security.md): ``client`` connects as one of three roles' users: the services write
as the writer, ``paperec dashboard`` reads as the read-only dashboard user, and ``init_tables``
(``paperec metrics init``) runs its DDL as the admin.

Tables
- ``list_outcomes``: one row per served list once its feedback window closed (per-objective event
  metrics). CTR, dwell per impression, per minute / snapshot version / weight bucket / rollout
  arm are aggregates over it (see ``QUERIES``).
- ``rollout_decisions``: one row per decision of the rollout controller (docs/rollout.md).
- ``stream_metrics``, ``learner_metrics``, ``serving_metrics``: long-format samples
  (name, label, value) written by the streams worker, the learner and the serving nodes.
"""

from __future__ import annotations

import argparse
import logging
from datetime import datetime
from typing import Any, Literal, NamedTuple

from clickhouse_driver import Client

from base.metrics_writer import MetricsWriter
from base.settings import Settings

log = logging.getLogger(__name__)

LIST_OUTCOMES_COLUMNS = """
    ts DateTime,
    request_id String,
    user_id String,
    snapshot_version UInt64,
    objectives Array(String),
    weights Array(Float64),
    noise Array(Float64),
    n_items UInt32,
    clicks UInt32,
    dwell_ms UInt64,
    complete UInt8,
    arm String DEFAULT '',
    log_propensity Nullable(Float64),
    row_id String DEFAULT request_id
"""
# ``arm``: the rollout arm that served the list ('' = none: served without a guarded rollout, or
# written before it existed); ``log_propensity``: the impression's (NULL = none). Both were added
# after the table existed (ADDED_COLUMNS).

ROLLOUT_DECISIONS_COLUMNS = """
    ts DateTime,
    decision_id String,
    decision String,
    version UInt64,
    incumbent Nullable(UInt64),
    candidate Nullable(UInt64),
    canary_share Float64,
    reason String,
    evidence_json String,
    row_id String DEFAULT decision_id
"""
ROLLOUT_DECISION_FIELDS: tuple[str, ...] = (
    "ts",
    "decision_id",
    "decision",
    "version",
    "incumbent",
    "candidate",
    "canary_share",
    "reason",
    "evidence_json",
)
"""The columns a writer of rollout decisions inserts (row_id = decision_id, added by the writer):
``rollout_decision_writer``. ``evidence_json`` is the decision's ``evidence`` as JSON."""


class MetricRow(NamedTuple):
    """One sample of a service metric table (stream_metrics, learner_metrics, serving_metrics):
    the one row shape every writer adds (a tuple, so MetricsWriter takes it as it is)."""

    ts: datetime
    """second resolution (DateTime column); base.metrics_writer.now_utc()"""
    source: str
    """the writing process, e.g. ``streams:<app id>``, ``learner``, the serving node's id"""
    name: str
    label: str
    """the sample's label (an objective, a stage, Prometheus-style ``k="v"`` pairs), or empty"""
    value: float


# The columns a writer inserts (row_id is added by the writer, see below).
METRIC_COLUMNS: tuple[str, ...] = MetricRow._fields

# One shape serves the three service metric tables: name/label/value samples from one source.
SAMPLE_COLUMNS = """
    ts DateTime,
    source String,
    name String,
    label String,
    value Float64,
    row_id String DEFAULT toString(cityHash64(ts, source, name, label, value))
"""

TABLES: dict[str, tuple[str, str]] = {
    # table -> (columns, ORDER BY). ReplacingMergeTree keeps one row per sorting key, so the row
    # id is in it; the columns before it are what the queries filter and group on.
    "list_outcomes": (LIST_OUTCOMES_COLUMNS, "(ts, user_id, request_id, row_id)"),
    "stream_metrics": (SAMPLE_COLUMNS, "(name, ts, row_id)"),
    "learner_metrics": (SAMPLE_COLUMNS, "(name, ts, row_id)"),
    "serving_metrics": (SAMPLE_COLUMNS, "(name, ts, row_id)"),
    "rollout_decisions": (ROLLOUT_DECISIONS_COLUMNS, "(ts, row_id)"),
}
ENGINE = "ReplacingMergeTree"

ADDED_COLUMNS: dict[str, tuple[tuple[str, str, str], ...]] = {
    # table -> (column, type, the column it follows) added after the table was first created:
    # existing tables get them from init_tables, where the CREATE has them.
    "list_outcomes": (
        ("arm", "String DEFAULT ''", "complete"),
        ("log_propensity", "Nullable(Float64)", "arm"),
    ),
}

# Reference aggregates (also what the dashboards run). `{db}` is the database name. Aliases must
# not reuse a column name: ClickHouse 18.16 resolves `sum(clicks)` to the alias `clicks` if it exists.
QUERIES: dict[str, str] = {
    "objectives_per_minute": """
        SELECT toStartOfMinute(ts) AS minute, sum(n_items) AS impressions, sum(clicks) AS total_clicks,
               sum(clicks) / sum(n_items) AS ctr,
               sum(dwell_ms) / 1000 / sum(n_items) AS dwell_s_per_impression
        FROM {db}.list_outcomes FINAL GROUP BY minute ORDER BY minute
    """,
    "objectives_per_snapshot": """
        SELECT snapshot_version, count() AS lists, sum(clicks) / sum(n_items) AS ctr,
               sum(dwell_ms) / 1000 / sum(n_items) AS dwell_s_per_impression
        FROM {db}.list_outcomes FINAL GROUP BY snapshot_version ORDER BY snapshot_version
    """,
    "objectives_per_weight_bucket": """
        SELECT floor(weights[2] * 10) / 10 AS dwell_weight_bucket, count() AS lists,
               sum(clicks) / sum(n_items) AS ctr,
               sum(dwell_ms) / 1000 / sum(n_items) AS dwell_s_per_impression
        FROM {db}.list_outcomes FINAL WHERE length(weights) >= 2
        GROUP BY dwell_weight_bucket ORDER BY dwell_weight_bucket
    """,
    "objectives_per_arm": """
        SELECT arm, count() AS lists, sum(clicks) / sum(n_items) AS ctr,
               sum(dwell_ms) / 1000 / sum(n_items) AS dwell_s_per_impression
        FROM {db}.list_outcomes FINAL WHERE n_items > 0 GROUP BY arm ORDER BY arm
    """,
}


# Who connects as which ClickHouse user (docs/security.md): the services write metrics
# ("writer": INSERT and SELECT on the database, no DDL), `paperec dashboard` reads them
# ("dashboard": read-only), `paperec metrics init` creates the database and tables ("admin").
Role = Literal["writer", "dashboard", "admin"]


def credentials(settings: Settings, role: Role) -> tuple[str, str]:
    """(user, password) of ``role``'s ClickHouse user."""
    if role == "writer":
        return settings.clickhouse_user, settings.clickhouse_password
    if role == "dashboard":
        return settings.clickhouse_dashboard_user, settings.clickhouse_dashboard_password
    if role == "admin":
        return settings.clickhouse_admin_user, settings.clickhouse_admin_password
    raise ValueError(f"unknown ClickHouse role {role!r}")


def client(settings: Settings, database: str | None = None, *, role: Role = "writer") -> Client:
    """A native-protocol client as ``role``'s user. A writer or dashboard user restricted to the
    metrics database (as docs/security.md configures them) must pass ``database``: such a user
    cannot even connect to ``default``."""
    user, password = credentials(settings, role)
    return Client(
        host=settings.clickhouse_host,
        port=settings.clickhouse_port,
        user=user,
        password=password,
        database=database or "default",
        connect_timeout=5,
        send_receive_timeout=30,
    )


def sample_writer(
    settings: Settings, table: str, flush_interval_s: float = 1.0, **options: Any
) -> MetricsWriter:
    """A MetricsWriter of :class:`MetricRow` rows into ``table`` (one of the sample tables) of the
    settings' ClickHouse database (``options``: the writer's batch size, buffer bound ...)."""
    if TABLES[table][0] is not SAMPLE_COLUMNS:
        raise ValueError(f"{table} is not a metric sample table")
    db = settings.clickhouse_database
    return MetricsWriter(
        lambda: client(settings, db),
        f"{db}.{table}",
        METRIC_COLUMNS,
        flush_interval_s=flush_interval_s,
        **options,
    )


def rollout_decision_writer(settings: Settings, flush_interval_s: float = 1.0) -> MetricsWriter:
    """A MetricsWriter of ``rollout_decisions`` rows (:data:`ROLLOUT_DECISION_FIELDS`, in that
    order); the row id is the decision id, so a decision written twice is kept once."""
    db = settings.clickhouse_database
    index = ROLLOUT_DECISION_FIELDS.index("decision_id")
    return MetricsWriter(
        lambda: client(settings, db),
        f"{db}.rollout_decisions",
        ROLLOUT_DECISION_FIELDS,
        flush_interval_s=flush_interval_s,
        row_id=lambda row: str(row[index]),
    )


def create_table(database: str, table: str, name: str | None = None) -> str:
    """CREATE statement of ``table``'s current schema, as ``name`` (default: ``table``)."""
    columns, order_by = TABLES[table]
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{name or table} ({columns}) "
        f"ENGINE = {ENGINE}() PARTITION BY toYYYYMMDD(ts) ORDER BY {order_by}"
    )


def ddl(database: str) -> list[str]:
    """CREATE statements for the database and every table (idempotent)."""
    return [f"CREATE DATABASE IF NOT EXISTS {database}", *(create_table(database, t) for t in TABLES)]


def add_column(database: str, table: str, column: str) -> str:
    """The statement adding ``column`` (one of ``ADDED_COLUMNS``) to an existing ``table``. Not
    ``ADD COLUMN IF NOT EXISTS``: ClickHouse 18.16 has no such clause, so ``init_tables`` adds only
    the columns ``missing_columns`` reports."""
    kind, after = next((k, a) for name, k, a in ADDED_COLUMNS[table] if name == column)
    return f"ALTER TABLE {database}.{table} ADD COLUMN {column} {kind} AFTER {after}"


def migration(database: str, table: str) -> list[str]:
    """Statements that move a table created before row ids (plain MergeTree) to the current
    schema. The old table is renamed away first, so a writer's insert in between fails and is
    retried by its MetricsWriter instead of landing in a table about to be dropped. Existing rows
    get the default row id (the request id; a hash of a sample's columns), so exact copies left
    by earlier at-least-once inserts collapse too."""
    old = f"{database}.{table}__premigration"
    columns = [line.split()[0] for line in TABLES[table][0].strip().splitlines()]
    added = {name for name, _, _ in ADDED_COLUMNS.get(table, ())}  # newer than any outdated table
    kept = ", ".join(c for c in columns if c != "row_id" and c not in added)
    return [
        f"RENAME TABLE {database}.{table} TO {old}",
        create_table(database, table),
        f"INSERT INTO {database}.{table} ({kept}) SELECT {kept} FROM {old}",
        f"DROP TABLE {old}",
    ]


def _table_engines(ch: Client, database: str) -> dict[str, str]:
    rows = ch.execute("SELECT name, engine FROM system.tables WHERE database = %(db)s", {"db": database})
    return {name: engine for name, engine in rows}


def outdated_tables(ch: Client, database: str) -> list[str]:
    """Tables of ours that exist with another engine than ours (created before row ids)."""
    return [
        name for name, engine in _table_engines(ch, database).items() if name in TABLES and engine != ENGINE
    ]


def missing_columns(ch: Client, database: str) -> list[tuple[str, str]]:
    """(table, column) of ``ADDED_COLUMNS`` missing from existing tables of ours."""
    rows = ch.execute("SELECT table, name FROM system.columns WHERE database = %(db)s", {"db": database})
    present = {(table, name) for table, name in rows}
    tables = {table for table, _ in present}
    return [
        (table, name)
        for table, columns in ADDED_COLUMNS.items()
        if table in tables
        for name, _, _ in columns
        if (table, name) not in present
    ]


def tables_current(ch: Client, database: str) -> bool:
    """Every table of ours exists in ``database`` with the current engine and columns (reads of
    system.tables and system.columns, which a writer user may do)."""
    engines = _table_engines(ch, database)
    return all(engines.get(table) == ENGINE for table in TABLES) and not missing_columns(ch, database)


def init_tables(settings: Settings) -> None:
    """Create the database and the tables, or migrate them, as the admin user. The services call
    this on start with only their writer credentials, which may not run DDL: so the tables are
    checked first as the writer, and the admin user is only needed when something is missing
    (what `paperec metrics init` does once per deployment)."""
    db = settings.clickhouse_database
    if settings.clickhouse_user != settings.clickhouse_admin_user:
        try:
            writer = client(settings, db)
            try:
                if tables_current(writer, db):
                    log.info("metric tables ready in %s", db)
                    return
            finally:
                writer.disconnect()
        except Exception as exc:  # e.g. no database yet: the admin creates it below
            log.debug("metric tables not checked as %s: %s", settings.clickhouse_user, exc)
    ch = client(settings, role="admin")
    try:
        ch.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
        for table in outdated_tables(ch, db):
            log.warning("migrating %s.%s to %s with row ids", db, table, ENGINE)
            try:
                for statement in migration(db, table):
                    ch.execute(statement)
            except Exception:
                # Another service starting at the same time may have migrated it meanwhile.
                if table in outdated_tables(ch, db):
                    raise
        for table in TABLES:
            ch.execute(create_table(db, table))
        for table, column in missing_columns(ch, db):
            log.warning("adding column %s to %s.%s", column, db, table)
            try:
                ch.execute(add_column(db, table, column))
            except Exception:
                # Another service starting at the same time may have added it meanwhile.
                if (table, column) in missing_columns(ch, db):
                    raise
    finally:
        ch.disconnect()
    log.info("metric tables ready in %s", db)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["init", "ddl"], help="init: create database and tables")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "ddl":
        print(";\n".join(ddl(settings.clickhouse_database)) + ";")
        return 0
    init_tables(settings)
    print(
        f"ClickHouse {settings.clickhouse_host}:{settings.clickhouse_port}: database "
        f"{settings.clickhouse_database} with tables {', '.join(TABLES)}"
    )
    return 0
