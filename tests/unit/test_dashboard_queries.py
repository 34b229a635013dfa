"""From query rows to panels, without ClickHouse: ratios, buckets, series per node/topic,
failed queries, and SQL that ClickHouse 18.16 accepts (no alias reuses a column name)."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from base.metrics_store import LIST_OUTCOMES_COLUMNS, SAMPLE_COLUMNS, TABLES
from paperec.dashboard.model import BarChart, LineChart
from paperec.dashboard.queries import (
    HIST_BINS,
    MAX_NODES,
    PANEL_QUERIES,
    PANEL_TITLES,
    SERVING_AGE,
    SERVING_P50,
    SERVING_P99,
    SQL,
    build_dashboard,
    fetch,
    step_for,
)

T0 = 1_800_000_000  # a bucket start (multiple of 60)


def _build(results: dict[str, list[tuple[Any, ...]]], errors: dict[str, str] | None = None, step: int = 60):
    return build_dashboard(results, errors or {}, window_minutes=60, step_s=step, database="paperec", now=T0)


def _panel(dashboard, key: str):
    return next(p for p in dashboard.panels if p.key == key)


def test_every_panel_is_present_and_empty_without_rows() -> None:
    d = _build({})
    assert [(p.key, p.title) for p in d.panels] == list(PANEL_TITLES.items())
    for panel in d.panels:
        assert panel.charts and all(c.is_empty() for c in panel.charts), panel.key


def test_ctr_and_dwell_per_bucket() -> None:
    rows = [
        (T0, 10, 100, 8, 50_000),  # t, lists, impressions, clicks, dwell ms
        (T0 + 60, 0, 0, 0, 0),  # no impressions: no point instead of a division by zero
        (T0 + 120, 5, 40, 4, 8_000),
    ]
    ctr, dwell = _panel(_build({"outcomes_over_time": rows}), "a").charts
    assert isinstance(ctr, LineChart) and isinstance(dwell, LineChart)
    assert ctr.series[0].points == [(T0, 0.08), (T0 + 120, 0.1)]
    assert dwell.series[0].points == [(T0, 0.5), (T0 + 120, 0.2)]
    assert ctr.max_gap == pytest.approx(150)  # 2.5 buckets: the missing bucket is not a gap yet


def test_per_snapshot_version_bars() -> None:
    rows = [(1, 10, 100, 10, 100_000), (2, 3, 30, 6, 60_000), (3, 1, 0, 0, 0)]
    ctr, dwell = _panel(_build({"outcomes_per_snapshot": rows}), "b").charts
    assert isinstance(ctr, BarChart) and isinstance(dwell, BarChart)
    assert [(b.label, b.value) for b in ctr.bars] == [("v1", 0.1), ("v2", 0.2)]
    assert [b.value for b in dwell.bars] == [1.0, 2.0]
    assert ctr.bars[0].detail == "10 lists, 100 impressions"


def test_weight_histogram_has_every_bin_and_learner_band() -> None:
    learner = [
        (T0, "weight_mean", "dwell", 0.4),
        (T0, "weight_std", "dwell", 0.1),
        (T0 + 60, "weight_mean", "dwell", 0.5),
        (T0 + 60, "weight_std", "dwell", 0.05),
        (T0, "weight_mean", "click", 0.6),
    ]
    hist, weights = _panel(
        _build({"dwell_weight_histogram": [(3.0, 7), (19.0, 2)], "learner_series": learner}), "c"
    ).charts
    assert isinstance(hist, BarChart) and isinstance(weights, LineChart)
    assert len(hist.bars) == HIST_BINS
    assert hist.bars[3].value == 7 and hist.bars[19].value == 2 and hist.bars[0].value == 0
    assert hist.bars[3].label == "0.15"
    by_name = {s.name: s for s in weights.series}
    dwell = by_name["mean weight[dwell] ± std"]
    assert dwell.points == [(T0, 0.4), (T0 + 60, 0.5)]
    assert dwell.band == [(T0, pytest.approx(0.3), 0.5), (T0 + 60, 0.45, 0.55)]
    assert by_name["mean weight[click] ± std"].band is None  # no std samples


def test_learner_reward_and_losses() -> None:
    learner = [
        (T0, "reward", "", -0.2),
        (T0, "reward_best", "", -0.1),
        (T0, "loss", "", 3.0),
        (T0, "loss", "click", 1.0),
        (T0, "loss", "dwell", 2.0),
        (T0, "actor_loss", "", 0.1),
        (T0, "critic_loss", "", 0.01),
        (T0 + 60, "critic_loss", "", math.nan),  # a diverged step: dropped, not drawn
    ]
    reward, loss, ac = _panel(_build({"learner_series": learner}), "d").charts
    assert [(s.name, s.dashed) for s in reward.series] == [("reward", False), ("reward_best", True)]
    assert [s.name for s in loss.series] == ["loss", "loss[click]", "loss[dwell]"]
    assert [s.name for s in ac.series] == ["actor_loss", "critic_loss"]
    assert ac.series[1].points == [(T0, 0.01)]


def test_serving_latency_in_ms_and_age_per_node_with_one_color_each() -> None:
    rows = []
    for n in range(MAX_NODES + 2):
        node = f"actor:node-{n}"
        for k in range(n + 1):  # node-N has N+1 samples per metric: the busiest are kept
            rows += [
                (T0 + 60 * k, node, SERVING_P50, 0.010),
                (T0 + 60 * k, node, SERVING_P99, 0.050),
                (T0 + 60 * k, node, SERVING_AGE, 3.0),
            ]
    latency, age = _panel(_build({"serving_series": rows}), "e").charts
    assert len(age.series) == MAX_NODES
    assert "node-0" not in [s.name for s in age.series]  # the least busy ones are dropped
    p50 = next(s for s in latency.series if s.name.endswith("p50"))
    p99 = next(s for s in latency.series if s.name == p50.name.replace("p50", "p99"))
    assert p50.points[0][1] == pytest.approx(10.0) and p99.points[0][1] == pytest.approx(50.0)
    assert p99.dashed and not p50.dashed and p50.color == p99.color


def test_stream_health() -> None:
    results: dict[str, list[tuple[Any, ...]]] = {
        "stream_lag": [(T0, 12.0), (T0 + 60, 0.0)],
        "stream_events_in": [(T0, "impressions", 600.0), (T0, "clicks", 120.0)],
        "stream_dead_letters": [("dead_letters", "decode", 3.0)],
        "counter_increases": [
            ("serving", "paperec_serving_snapshots_rejected_total", 'reason="checksum"', 2.0),
            ("learner", "dead_letters_total", "", 1.0),
        ],
        "learner_series": [(T0, "consumer_lag", "", 5.0)],
    }
    lag, events, dead = _panel(_build(results), "f").charts
    assert [s.name for s in lag.series] == ["streams: input lag", "learner: transitions lag"]
    assert {s.name: s.points for s in events.series} == {"clicks": [(T0, 2.0)], "impressions": [(T0, 10.0)]}
    assert isinstance(dead, BarChart) and dead.horizontal
    assert [(b.label, b.value) for b in dead.bars] == [
        ("streams dead_letters[decode]", 3.0),
        ("learner dead_letters", 1.0),
        ("serving snapshots_rejected[checksum]", 2.0),
    ]


def test_time_charts_share_one_x_range() -> None:
    results: dict[str, list[tuple[Any, ...]]] = {
        "outcomes_over_time": [(T0 + 120, 1, 10, 1, 1000), (T0 + 180, 1, 10, 1, 1000)],
        "learner_series": [(T0, "reward", "", -0.1), (T0 + 60, "reward", "", -0.1)],
    }
    d = _build(results)
    ranges = {c.x_range for p in d.panels for c in p.charts if isinstance(c, LineChart)}
    assert ranges == {(T0, T0 + 180)}


class FakeClient:
    def __init__(self, fail: str = "") -> None:
        self.queries: list[str] = []
        self.fail = fail

    def execute(self, query: str) -> list[tuple[Any, ...]]:
        self.queries.append(query)
        if self.fail and self.fail in query:
            raise RuntimeError("Code: 60. Table paperec.stream_metrics doesn't exist.\nStack trace: ...")
        return []


def test_fetch_formats_every_query_and_reports_failures_per_panel() -> None:
    client = FakeClient(fail="stream_metrics")
    results, errors = fetch(client, "mydb", window_s=600, step_s=10)
    assert len(client.queries) == len(SQL)
    for q in client.queries:
        assert "{" not in q and "mydb." in q and "now() - 600" in q
    assert "intDiv(toUInt32(ts), 10) * 10" in client.queries[0]
    assert set(errors) == {"stream_lag", "stream_events_in", "stream_dead_letters"}
    assert errors["stream_lag"] == "stream_lag: Code: 60. Table paperec.stream_metrics doesn't exist."
    d = build_dashboard(results, errors, window_minutes=10, step_s=10, database="mydb")
    assert len(_panel(d, "f").errors) == 3 and not _panel(d, "a").errors


def test_every_query_feeds_a_panel() -> None:
    assert set(PANEL_QUERIES) == set(PANEL_TITLES)
    assert {q for qs in PANEL_QUERIES.values() for q in qs} == set(SQL)


def _columns(spec: str) -> set[str]:
    return {line.split()[0] for line in spec.strip().splitlines() if line.strip()}


def test_no_alias_reuses_a_column_name() -> None:
    """ClickHouse 18.16 resolves `sum(clicks)` to an alias named `clicks` when there is one."""
    columns = set().union(*(_columns(spec) for spec, _ in TABLES.values()))
    assert _columns(LIST_OUTCOMES_COLUMNS) | _columns(SAMPLE_COLUMNS) <= columns
    for name, sql in SQL.items():
        aliases = set(re.findall(r"\bAS\s+(\w+)", sql))
        assert not aliases & columns, (name, aliases & columns)
        assert re.search(r"\{db\}\.(\w+)", sql).group(1) in TABLES  # type: ignore[union-attr]


def test_step_is_a_nice_bucket_of_about_a_sixtieth_of_the_window() -> None:
    assert step_for(60) == 60
    assert step_for(10) == 10
    assert step_for(7) == 10
    assert step_for(1) == 5
    assert step_for(24 * 60) == 1800
    assert step_for(10**6) == 86400


def test_every_query_reads_the_metric_tables_deduplicated() -> None:
    """Inserts are at-least-once: a table read without FINAL counts a replayed row twice."""
    from base.metrics_store import QUERIES
    from paperec.dashboard.grafana import dashboard

    grafana = [t["rawSql"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    sql = [*SQL.values(), *QUERIES.values(), *grafana]
    reads = [m for q in sql for m in re.finditer(rf"FROM (?:\S+\.)?({'|'.join(TABLES)})\b(\s+FINAL)?", q)]
    assert len(reads) >= len(sql)
    assert [m.group(0) for m in reads if not m.group(2)] == []
