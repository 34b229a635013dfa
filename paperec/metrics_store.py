"""``paperec metrics init``: the ClickHouse database and metric tables.

The SQL is restricted to what ClickHouse 18.16 (the dev stack's Debian package) and current
ClickHouse both run: MergeTree with PARTITION BY/ORDER BY, DateTime, Float64, String, Array,
UInt*. No DateTime64, TTL, Map, JSON or LowCardinality.

Tables
- ``list_outcomes``: one row per served list once its feedback window closed (per-objective event
  metrics). CTR, dwell per impression, per minute / snapshot version / weight bucket are
  aggregates over it (see ``QUERIES``).
- ``stream_metrics``, ``learner_metrics``, ``serving_metrics``: long-format samples
  (name, label, value) written by the streams worker, the learner and the serving nodes.
"""

from __future__ import annotations

import argparse
import logging

from clickhouse_driver import Client

from paperec.settings import Settings

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
    complete UInt8
"""

# One shape serves the three service metric tables: name/label/value samples from one source.
SAMPLE_COLUMNS = """
    ts DateTime,
    source String,
    name String,
    label String,
    value Float64
"""

TABLES: dict[str, tuple[str, str]] = {
    # table -> (columns, ORDER BY)
    "list_outcomes": (LIST_OUTCOMES_COLUMNS, "(ts, user_id, request_id)"),
    "stream_metrics": (SAMPLE_COLUMNS, "(name, ts)"),
    "learner_metrics": (SAMPLE_COLUMNS, "(name, ts)"),
    "serving_metrics": (SAMPLE_COLUMNS, "(name, ts)"),
}

# Reference aggregates (also what the dashboards run). `{db}` is the database name. Aliases must
# not reuse a column name: ClickHouse 18.16 resolves `sum(clicks)` to the alias `clicks` if it exists.
QUERIES: dict[str, str] = {
    "objectives_per_minute": """
        SELECT toStartOfMinute(ts) AS minute, sum(n_items) AS impressions, sum(clicks) AS total_clicks,
               sum(clicks) / sum(n_items) AS ctr,
               sum(dwell_ms) / 1000 / sum(n_items) AS dwell_s_per_impression
        FROM {db}.list_outcomes GROUP BY minute ORDER BY minute
    """,
    "objectives_per_snapshot": """
        SELECT snapshot_version, count() AS lists, sum(clicks) / sum(n_items) AS ctr,
               sum(dwell_ms) / 1000 / sum(n_items) AS dwell_s_per_impression
        FROM {db}.list_outcomes GROUP BY snapshot_version ORDER BY snapshot_version
    """,
    "objectives_per_weight_bucket": """
        SELECT floor(weights[2] * 10) / 10 AS dwell_weight_bucket, count() AS lists,
               sum(clicks) / sum(n_items) AS ctr,
               sum(dwell_ms) / 1000 / sum(n_items) AS dwell_s_per_impression
        FROM {db}.list_outcomes WHERE length(weights) >= 2
        GROUP BY dwell_weight_bucket ORDER BY dwell_weight_bucket
    """,
}


def client(settings: Settings, database: str | None = None) -> Client:
    return Client(
        host=settings.clickhouse_host,
        port=settings.clickhouse_port,
        user=settings.clickhouse_user,
        password=settings.clickhouse_password,
        database=database or "default",
        connect_timeout=5,
        send_receive_timeout=30,
    )


def ddl(database: str) -> list[str]:
    """CREATE statements for the database and every table (idempotent)."""
    statements = [f"CREATE DATABASE IF NOT EXISTS {database}"]
    for table, (columns, order_by) in TABLES.items():
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {database}.{table} ({columns}) "
            f"ENGINE = MergeTree() PARTITION BY toYYYYMMDD(ts) ORDER BY {order_by}"
        )
    return statements


def init_tables(settings: Settings) -> None:
    ch = client(settings)
    try:
        for statement in ddl(settings.clickhouse_database):
            ch.execute(statement)
    finally:
        ch.disconnect()
    log.info("metric tables ready in %s", settings.clickhouse_database)


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
