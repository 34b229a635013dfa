"""Metric tables on the real ClickHouse server: created idempotently, accept a batch insert
(also through MetricsWriter) and answer the reference aggregate queries."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime

import pytest

from base.metrics_store import (
    LIST_OUTCOMES_COLUMNS,
    METRIC_COLUMNS,
    QUERIES,
    SAMPLE_COLUMNS,
    TABLES,
    MetricRow,
    client,
    init_tables,
    missing_columns,
    rollout_decision_writer,
    sample_writer,
    tables_current,
)
from base.metrics_writer import MetricsWriter
from base.settings import Settings
from streams.metrics import OUTCOME_COLUMNS, outcome_row_id

pytestmark = pytest.mark.integration

# list_outcomes as first released: no row id (plain MergeTree), no rollout arm
FIRST_LIST_OUTCOMES_COLUMNS = """
    ts DateTime, request_id String, user_id String, snapshot_version UInt64, objectives Array(String),
    weights Array(Float64), noise Array(Float64), n_items UInt32, clicks UInt32, dwell_ms UInt64,
    complete UInt8
"""


@pytest.fixture
def metrics_settings(settings: Settings, unique_prefix: str) -> Iterator[Settings]:
    db = "test_" + unique_prefix.strip(".").replace(".", "_")
    s = settings.replace(clickhouse_database=db)
    init_tables(s)
    init_tables(s)  # idempotent
    yield s
    ch = client(s)
    ch.execute(f"DROP DATABASE IF EXISTS {db}")
    ch.disconnect()


def test_tables_exist_and_aggregate_a_batch(metrics_settings: Settings) -> None:
    db = metrics_settings.clickhouse_database
    ch = client(metrics_settings)
    tables = {row[0] for row in ch.execute(f"SHOW TABLES FROM {db}")}
    assert set(TABLES) <= tables

    rng = random.Random(7)
    ts = datetime(2026, 11, 28, 12, 0, 0)
    rows = []
    for i in range(1000):
        n_items, clicks = 10, rng.randint(0, 3)
        w = rng.random()
        rows.append(
            (
                ts,
                f"r{i}",
                f"u{i % 50}",
                i % 3,
                ["click", "dwell"],
                [1 - w, w],
                [0.0, 0.0],
                n_items,
                clicks,
                clicks * 1000 * rng.randint(1, 60),
                1,
            )
        )
    ch.execute(
        f"INSERT INTO {db}.list_outcomes (ts, request_id, user_id, snapshot_version, objectives, weights,"
        " noise, n_items, clicks, dwell_ms, complete) VALUES",
        rows,
    )
    ((impressions, clicks, ctr, _dwell),) = [
        r[1:] for r in ch.execute(QUERIES["objectives_per_minute"].format(db=db))
    ]
    assert impressions == 10_000
    assert clicks == sum(r[8] for r in rows)
    assert ctr == pytest.approx(clicks / 10_000)
    per_snapshot = ch.execute(QUERIES["objectives_per_snapshot"].format(db=db))
    assert [r[0] for r in per_snapshot] == [0, 1, 2] and sum(r[1] for r in per_snapshot) == 1000
    buckets = ch.execute(QUERIES["objectives_per_weight_bucket"].format(db=db))
    assert sum(r[1] for r in buckets) == 1000
    ch.disconnect()


def test_the_metric_row_is_the_sample_tables_row() -> None:
    """MetricRow's fields are the sample tables' columns, in order (the writer adds row_id)."""
    ddl_columns = [line.split()[0] for line in SAMPLE_COLUMNS.strip().splitlines()]
    assert [*METRIC_COLUMNS, "row_id"] == ddl_columns
    assert {t for t, (columns, _) in TABLES.items() if columns is SAMPLE_COLUMNS} == {
        "stream_metrics",
        "learner_metrics",
        "serving_metrics",
    }
    with pytest.raises(ValueError):
        sample_writer(Settings(), "list_outcomes")


def test_metrics_writer_batches_into_clickhouse(metrics_settings: Settings) -> None:
    db = metrics_settings.clickhouse_database
    writer = sample_writer(metrics_settings, "learner_metrics", flush_interval_s=0.05, batch_size=100)
    ts = datetime(2026, 11, 28, 12, 0, 0)
    for step in range(1000):
        writer.add(MetricRow(ts, "learner-0", "reward", "", -float(step)))
    assert writer.flush(10)
    writer.close()
    ch = client(metrics_settings)
    ((count, total),) = ch.execute(
        f"SELECT count(), sum(value) FROM {db}.learner_metrics WHERE name = 'reward'"
    )
    assert count == 1000 and total == -sum(range(1000))
    ch.disconnect()


def test_replayed_rows_count_once_and_old_tables_are_migrated(metrics_settings: Settings) -> None:
    """At-least-once inserts (a retried batch, outcomes re-emitted after a restart) do not count
    twice through the reference queries; tables of the old schema (plain MergeTree, no row id)
    are migrated by init_tables with their rows, exact copies collapsed."""
    db = metrics_settings.clickhouse_database
    ch = client(metrics_settings)
    ts = datetime(2026, 11, 28, 12, 0, 0)
    outcome = (ts, "r1", "u1", 1, ["click", "dwell"], [0.5, 0.5], [0.0, 0.0], 10, 2, 1000, 1)
    writer = MetricsWriter(
        lambda: client(metrics_settings),
        f"{db}.list_outcomes",
        OUTCOME_COLUMNS,
        flush_interval_s=0.05,
        row_id=outcome_row_id,
    )
    for _ in range(3):  # the same list outcome, emitted three times
        writer.add((*outcome, "personalized", -1.5))
    assert writer.flush(10)
    writer.close()
    ((_, impressions, clicks, _, _),) = ch.execute(QUERIES["objectives_per_minute"].format(db=db))
    assert (impressions, clicks) == (10, 2)

    # a database from before row ids
    ch.execute(f"DROP TABLE {db}.list_outcomes")
    ch.execute(f"DROP TABLE {db}.stream_metrics")
    ch.execute(
        f"CREATE TABLE {db}.list_outcomes ({FIRST_LIST_OUTCOMES_COLUMNS}) ENGINE = MergeTree() "
        "PARTITION BY toYYYYMMDD(ts) ORDER BY (ts, user_id, request_id)"
    )
    ch.execute(
        f"CREATE TABLE {db}.stream_metrics (ts DateTime, source String, name String, label String, "
        "value Float64) ENGINE = MergeTree() PARTITION BY toYYYYMMDD(ts) ORDER BY (name, ts)"
    )
    other = (ts, "r2", "u1", 1, ["click", "dwell"], [0.5, 0.5], [0.0, 0.0], 10, 1, 500, 1)
    for _ in range(2):
        ch.execute(f"INSERT INTO {db}.list_outcomes VALUES", [outcome, other])
        ch.execute(f"INSERT INTO {db}.stream_metrics VALUES", [(ts, "s", "events_in", "t", 5.0)])
    init_tables(metrics_settings)
    engines = dict(ch.execute(f"SELECT name, engine FROM system.tables WHERE database = '{db}'"))
    assert {engines[t] for t in TABLES} == {"ReplacingMergeTree"}
    ((_, impressions, clicks, _, _),) = ch.execute(QUERIES["objectives_per_minute"].format(db=db))
    assert (impressions, clicks) == (20, 3)
    assert ch.execute(f"SELECT count(), sum(value) FROM {db}.stream_metrics FINAL") == [(1, 5.0)]
    ch.disconnect()


def test_issue_18_columns_are_added_to_existing_tables_and_decisions_are_stored(
    metrics_settings: Settings,
) -> None:
    """A list_outcomes table from before the guarded rollout (row ids, no arm) gets ``arm`` and
    ``log_propensity`` from init_tables, in the CREATE's column order, its rows kept (arm '',
    propensity NULL); the writer-only check sees the missing columns; ``rollout_decisions``
    keeps a decision written twice once."""
    db = metrics_settings.clickhouse_database
    ch = client(metrics_settings)
    ts = datetime(2026, 11, 28, 12, 0, 0)
    ch.execute(f"DROP TABLE {db}.list_outcomes")
    ch.execute(f"DROP TABLE {db}.rollout_decisions")
    ch.execute(
        f"CREATE TABLE {db}.list_outcomes ({FIRST_LIST_OUTCOMES_COLUMNS}, row_id String DEFAULT request_id) "
        "ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMMDD(ts) ORDER BY (ts, user_id, request_id, row_id)"
    )
    old = (ts, "r0", "u0", 1, ["click", "dwell"], [0.5, 0.5], [0.0, 0.0], 10, 1, 500, 1)
    ch.execute(
        f"INSERT INTO {db}.list_outcomes (ts, request_id, user_id, snapshot_version, objectives, weights,"
        " noise, n_items, clicks, dwell_ms, complete) VALUES",
        [old],
    )
    assert not tables_current(ch, db)
    assert set(missing_columns(ch, db)) == {("list_outcomes", "arm"), ("list_outcomes", "log_propensity")}
    init_tables(metrics_settings)
    init_tables(metrics_settings)  # idempotent (IF NOT EXISTS)
    assert tables_current(ch, db) and missing_columns(ch, db) == []
    columns = [row[0] for row in ch.execute(f"DESCRIBE TABLE {db}.list_outcomes")]  # in table order
    assert columns == [line.split()[0] for line in LIST_OUTCOMES_COLUMNS.strip().splitlines()]

    writer = MetricsWriter(
        lambda: client(metrics_settings),
        f"{db}.list_outcomes",
        OUTCOME_COLUMNS,
        flush_interval_s=0.05,
        row_id=outcome_row_id,
    )
    for i, (arm, clicks) in enumerate([("holdout", 1), ("personalized", 3), ("personalized", 2)]):
        writer.add(
            (
                ts,
                f"r{i + 1}",
                f"u{i}",
                2,
                ["click", "dwell"],
                [0.5, 0.5],
                [0.0, 0.0],
                10,
                clicks,
                0,
                1,
                arm,
                -0.5 * i,
            )
        )
    assert writer.flush(10)
    writer.close()
    rows = ch.execute(
        f"SELECT request_id, arm, log_propensity FROM {db}.list_outcomes FINAL ORDER BY request_id"
    )
    assert rows == [
        ("r0", "", None),
        ("r1", "holdout", 0.0),
        ("r2", "personalized", -0.5),
        ("r3", "personalized", -1.0),
    ]
    per_arm = {
        arm: (lists, ctr) for arm, lists, ctr, _ in ch.execute(QUERIES["objectives_per_arm"].format(db=db))
    }
    assert per_arm == {"": (1, 0.1), "holdout": (1, 0.1), "personalized": (2, 0.25)}

    decisions = rollout_decision_writer(metrics_settings, flush_interval_s=0.05)
    row = (ts, "13-rollback-1", "rollback", 13, 12, None, 0.2, "dwell fell", '{"dwell.upper": -0.08}')
    decisions.add(row)
    decisions.add(row)  # written again (a retried insert, a restarted controller)
    assert decisions.flush(10)
    decisions.close()
    got = ch.execute(
        f"SELECT decision_id, decision, version, incumbent, candidate, canary_share, reason, evidence_json "
        f"FROM {db}.rollout_decisions FINAL"
    )
    assert got == [row[1:]]
    ch.disconnect()
