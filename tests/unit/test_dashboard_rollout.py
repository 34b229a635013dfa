"""Panel (g), the rollout, without ClickHouse: the lift formula against a bootstrap, rows ->
charts and tables, the page's tables, the Grafana panels on the same SQL, and docs/rollout.md's
copy of the lift query (it must be the query the dashboard runs)."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from paperec.dashboard.grafana import PANELS as GRAFANA_PANELS
from paperec.dashboard.grafana import dashboard as grafana_dashboard
from paperec.dashboard.model import LineChart, Table
from paperec.dashboard.page import render_page
from paperec.dashboard.queries import PANEL_QUERIES, SQL, build_dashboard, fetch, lift_sql
from paperec.dashboard.rollout import (
    LIFT_COLUMNS,
    ROLLOUT_SQL,
    format_evidence,
    lift_interval,
    lift_template,
    ratio_of_sums,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000
NAN = math.nan


def _panel_g(results: dict[str, list[tuple[Any, ...]]]):
    d = build_dashboard(results, {}, window_minutes=60, step_s=60, database="paperec", now=T0)
    return next(p for p in d.panels if p.key == "g"), d


def _lift_row(t: int, **values: Any) -> tuple[Any, ...]:
    row = dict.fromkeys(LIFT_COLUMNS, NAN) | {"t": t, "users_p": 40, "users_h": 10, "lists_p": 400}
    row |= {"lists_h": 100} | values
    return tuple(row[c] for c in LIFT_COLUMNS)


# ---------------------------------------------------------------- the formula


def _users(rng: random.Random, k: int, ctr: float) -> tuple[list[float], list[float]]:
    """Per-user clicks and impressions: users with their own CTR (heterogeneous), several lists
    of 10 items each."""
    clicks, imps = [], []
    for _ in range(k):
        lists = rng.randint(1, 12)
        p = min(0.95, max(0.0, rng.gauss(ctr, ctr / 2)))
        clicks.append(float(sum(rng.random() < p for _ in range(10 * lists))))
        imps.append(10.0 * lists)
    return clicks, imps


def test_ratio_of_sums_variance_matches_a_bootstrap_over_users() -> None:
    """The delta method is an approximation: on heterogeneous users it must agree with the
    bootstrap over users (the randomization unit) within a few percent."""
    rng = random.Random(3)
    y, n = _users(rng, 300, 0.1)
    mean, var = ratio_of_sums(y, n)
    assert mean == pytest.approx(sum(y) / sum(n))
    ya, na = np.array(y), np.array(n)
    boot = np.random.default_rng(4).integers(0, len(y), size=(4000, len(y)))
    means = ya[boot].sum(axis=1) / na[boot].sum(axis=1)
    assert math.sqrt(var) == pytest.approx(means.std(), rel=0.06)


def test_lift_interval_covers_the_true_lift_about_95_percent() -> None:
    """Seeded experiments with a true lift of +20% CTR: the 95% interval covers it in about 95%
    of them (400 experiments: 95% +- 2.5 points)."""
    rng = random.Random(11)
    covered = 0
    for _ in range(400):
        p = ratio_of_sums(*_users(rng, 90, 0.12))
        h = ratio_of_sums(*_users(rng, 30, 0.10))
        _, low, high = lift_interval(p, h)
        covered += low <= 0.2 <= high
    assert 0.92 <= covered / 400 <= 0.98


def test_lists_as_units_would_undercover() -> None:
    """Why the user is the unit: the same experiments analysed with each list as a unit (lists of
    one user share its CTR) cover the true lift far less often than 95%."""
    rng = random.Random(11)
    covered = 0
    for _ in range(400):
        arms = []
        for k, ctr in ((90, 0.12), (30, 0.10)):
            y: list[float] = []
            for _ in range(k):
                p = min(0.95, max(0.0, rng.gauss(ctr, ctr / 2)))
                y += [float(sum(rng.random() < p for _ in range(10))) for _ in range(rng.randint(1, 12))]
            arms.append(ratio_of_sums(y, [10.0] * len(y)))
        _, low, high = lift_interval(arms[0], arms[1])
        covered += low <= 0.2 <= high
    assert covered / 400 < 0.88


def test_no_interval_without_two_users_or_impressions() -> None:
    assert math.isnan(ratio_of_sums([3.0], [10.0])[1])
    assert all(math.isnan(v) for v in ratio_of_sums([0.0, 0.0], [0.0, 0.0]))
    lift, low, high = lift_interval((0.2, 0.001), (0.1, NAN))
    assert lift == pytest.approx(1.0) and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in lift_interval((0.2, 0.001), (0.0, 0.0)))


# ---------------------------------------------------------------- rows -> panel (g)


def test_lift_charts_are_percent_with_a_band_and_gaps_for_missing_arms() -> None:
    rows = [
        _lift_row(T0, ctr_lift=0.10, ctr_low=0.02, ctr_high=0.18, dwell_lift=-0.05),
        _lift_row(T0 + 60, users_h=0, ctr_lift=math.inf),  # no holdout lists: a gap
        _lift_row(T0 + 120, ctr_lift=0.20, ctr_low=0.1, ctr_high=0.3, dwell_lift=0.0, dwell_low=-0.1),
    ]
    panel, _ = _panel_g({"lift_over_time": rows})
    ctr, dwell = panel.charts[:2]
    assert isinstance(ctr, LineChart) and isinstance(dwell, LineChart)
    (s,) = ctr.series
    assert s.points == [(T0, pytest.approx(10.0)), (T0 + 120, pytest.approx(20.0))]
    assert s.band == [(T0, pytest.approx(2.0), pytest.approx(18.0)), (T0 + 120, 10.0, 30.0)]
    (d,) = dwell.series
    assert d.points == [(T0, pytest.approx(-5.0)), (T0 + 120, 0.0)]
    assert d.band is None  # no finite (low, high) pair
    assert ctr.y_from_zero and ctr.max_gap == pytest.approx(150)


def test_window_table_one_row_per_objective() -> None:
    row = _lift_row(
        T0,
        ctr_p=0.12, ctr_h=0.1, ctr_lift=0.2, ctr_low=0.05, ctr_high=0.35,
        dwell_p=2.5, dwell_h=2.0, dwell_lift=0.25, dwell_low=NAN, dwell_high=NAN,
    )  # fmt: skip
    table = _panel_g({"lift_in_window": [row]})[0].charts[2]
    assert isinstance(table, Table) and table.columns[3:5] == ["lift", "95% interval"]
    assert table.rows == [
        ["CTR (clicks / impression)", "0.12", "0.1", "+20.0%", "[+5.0%, +35.0%]", "40 / 10", "400 / 100"],
        ["dwell s / impression", "2.5", "2", "+25.0%", "[-, -]", "40 / 10", "400 / 100"],
    ]
    empty = _lift_row(T0, users_p=0, users_h=0)  # an empty window still yields the row
    assert _panel_g({"lift_in_window": [empty]})[0].charts[2].is_empty()


def test_arms_table_per_version_with_half_widths() -> None:
    rows = [
        ("personalized", 3, 50, 500, 5000, 0.12, 0.0001, 2.0, NAN),
        ("", 2, 1, 3, 30, 0.1, NAN, 1.0, NAN),
    ]
    table = _panel_g({"arms_per_version": rows})[0].charts[3]
    assert isinstance(table, Table)
    assert table.rows[0] == ["v3", "personalized", "50", "500", "5000", "0.12 ± 0.02", "2"]
    assert table.rows[1][1] == "(none)"


def test_decisions_table_with_reasons_and_evidence() -> None:
    evidence = json.dumps({"ctr_upper": -0.31, "dwell_upper": -0.2, "lists_canary": 412})
    rows = [
        (T0 + 5, "rollback", 7, 6, None, 0.0, "ctr fell: upper bound -31% < -5%", evidence),
        (T0, "canary", 7, 6, 7, 0.2, "OPE ok", "not json {"),
    ]
    table = _panel_g({"rollout_decisions": rows})[0].charts[4]
    assert isinstance(table, Table)
    first, second = table.rows
    assert first[1:6] == ["rollback", "v7", "v6 / -", "0", "ctr fell: upper bound -31% < -5%"]
    assert first[6] == "ctr_upper=-0.31, dwell_upper=-0.2, lists_canary=412"
    assert second[3] == "v6 / v7" and second[6] == "not json {"


def test_format_evidence_is_bounded() -> None:
    long = json.dumps({f"k{i:03d}": i / 7 for i in range(200)})
    assert len(format_evidence(long, limit=100)) == 100
    assert format_evidence("") == "" and format_evidence("[1, 2]") == "[1, 2]"


def test_page_renders_tables_escaped() -> None:
    evil = "<script>alert(1)</script>"
    rows = [(T0, "rollback", 7, 6, None, 0.0, evil, json.dumps({evil: 1.0}))]
    _, d = _panel_g({"rollout_decisions": rows})
    html = render_page(d)
    assert "<script" not in html and "&lt;script&gt;" in html
    section = re.search(r'<section class="panel" id="panel-g">(.*?)</section>', html, re.S).group(1)  # type: ignore[union-attr]
    assert section.count('<table class="data">') == 1  # the decisions; the other tables are empty
    assert section.count('<td class="evidence">') == 1 and "no data yet" in section


def test_fetch_runs_the_rollout_queries_for_panel_g() -> None:
    class Client:
        def __init__(self) -> None:
            self.queries: list[str] = []

        def execute(self, query: str) -> list[tuple[Any, ...]]:
            self.queries.append(query)
            if "rollout_decisions" in query:
                raise RuntimeError("Code: 60. Table mydb.rollout_decisions doesn't exist.")
            return []

    client = Client()
    results, errors = fetch(client, "mydb", window_s=600, step_s=10)
    assert lift_sql("mydb", 600, 10) in client.queries and lift_sql("mydb", 600) in client.queries
    assert set(errors) == {"rollout_decisions"}  # a missing table costs its table only
    assert PANEL_QUERIES["g"] == tuple(ROLLOUT_SQL) and set(ROLLOUT_SQL) <= set(SQL)
    d = build_dashboard(results, errors, window_minutes=10, step_s=10, database="mydb")
    assert [p.errors for p in d.panels if p.key == "g"] == [[errors["rollout_decisions"]]]


# ---------------------------------------------------------------- one SQL everywhere


def test_lift_sql_buckets_and_window() -> None:
    over_time = lift_sql("paperec", 3600, 60)
    assert "intDiv(toUInt32(ts), 60) * 60 AS t" in over_time and "ts >= now() - 3600" in over_time
    assert "toUInt32(now()) - 900 AS t" in lift_sql("db", 900)
    assert over_time.count("FINAL") == 1 and "{" not in over_time
    assert [c.strip() for c in re.findall(r"AS (\w+)", over_time.split("FROM (")[0])] == [
        c for c in LIFT_COLUMNS if c.endswith(("_lift", "_low", "_high"))
    ]


def test_grafana_lift_panels_run_the_same_sql() -> None:
    by_title = {p[1]: p[5] for p in GRAFANA_PANELS}
    grafana_lift = lift_template(
        "toDateTime(intDiv(toUInt32(ts), $__interval_s) * $__interval_s)", "list_outcomes",
        "$__timeFilter(ts)", t="time",
    )  # fmt: skip
    for objective, title in (("ctr", "CTR"), ("dwell", "dwell per impression")):
        sql = by_title[f"Lift of personalized vs holdout: {title}"]
        assert grafana_lift in sql and sql.startswith(f"SELECT time, {objective}_lift, {objective}_low")
    panels = {p["title"]: p for p in grafana_dashboard()["panels"]}
    band = panels["(g) Lift of personalized vs holdout: CTR"]["fieldConfig"]["overrides"]
    assert band[0]["properties"][0] == {"id": "custom.fillBelowTo", "value": "ctr_low"}
    assert panels["(g) Rollout decisions"]["type"] == "table"


DOC_MARKER = re.compile(r"<!-- (lift_sql\([^)]*\)) -->\s*```sql\n(.*?)```", re.S)


def test_the_docs_lift_query_is_the_dashboards() -> None:
    """docs/rollout.md's copy-pasteable lift query (after its marker) is ``lift_sql``'s, and the
    one-line change it describes gives the over-time query."""
    text = (ROOT / "docs/rollout.md").read_text()
    ((call, doc_sql),) = DOC_MARKER.findall(text)
    assert call == 'lift_sql("paperec", 3600)'
    assert doc_sql.rstrip("\n") == lift_sql("paperec", 3600)
    window_bucket, step_bucket = "toUInt32(now()) - 3600 AS t", "intDiv(toUInt32(ts), 60) * 60 AS t"
    assert f"`{window_bucket}`" in text and f"`{step_bucket}`" in text
    assert lift_sql("paperec", 3600).replace(window_bucket, step_bucket) == lift_sql("paperec", 3600, 60)
