"""The provisioned Grafana dashboard: valid structure, the provisioned ClickHouse data source on
every panel, SQL over existing tables with Grafana's time macros, and the file in sync with
paperec.dashboard.grafana (which generates it)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from base.metrics_store import TABLES
from paperec.dashboard.grafana import render
from paperec.dashboard.queries import PANEL_TITLES

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/paperec.json"
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/clickhouse.yml"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_file_is_generated_from_the_module() -> None:
    assert DASHBOARD.read_text() == render(), (
        "regenerate: python -m paperec.dashboard.grafana > deploy/grafana/dashboards/paperec.json"
    )


def test_top_level(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "paperec" and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["time"]["from"].startswith("now-")
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_uses_the_provisioned_clickhouse(dashboard: dict[str, Any]) -> None:
    (provisioned,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    for panel in dashboard["panels"]:
        title = panel.get("title")
        assert title, panel
        assert panel["datasource"] == {"type": provisioned["type"], "uid": provisioned["uid"]}, title
        assert panel["targets"], title
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "paperec-clickhouse", title
            assert target["editorType"] == "sql" and target["format"] in (0, 1), title
            sql = target["rawSql"]
            tables = set(re.findall(r"\bFROM\s+(\w+)", sql)) - {"("}
            assert tables and tables <= set(TABLES), (title, tables)
            assert "$__timeFilter(ts)" in sql, title
            if target["format"] == 0:  # time series: a time column, in order
                assert " AS time" in sql and sql.rstrip().endswith("ORDER BY time"), title


def test_panels_cover_every_builtin_panel_and_fit_the_grid(dashboard: dict[str, Any]) -> None:
    keys = {re.match(r"\((\w)\) ", p["title"]).group(1) for p in dashboard["panels"]}  # type: ignore[union-attr]
    assert keys == set(PANEL_TITLES)
    for p in dashboard["panels"]:
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
