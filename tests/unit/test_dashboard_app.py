"""The dashboard's web app and page without ClickHouse: a fake data source behind FastAPI's
test client. The page is self-contained (no scripts, nothing fetched from elsewhere)."""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

with warnings.catch_warnings():  # starlette's TestClient warns about its httpx dependency
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from paperec.cli import build_parser
from paperec.dashboard.app import create_app
from paperec.dashboard.model import Dashboard, LineChart, Series
from paperec.dashboard.queries import PANEL_TITLES, build_dashboard
from paperec.dashboard.svg import NO_DATA

T0 = 1_800_000_000


def _filled() -> Dashboard:
    results: dict[str, list[tuple[Any, ...]]] = {
        "outcomes_over_time": [(T0, 10, 100, 8, 50_000), (T0 + 60, 10, 100, 9, 60_000)],
        "outcomes_per_snapshot": [(1, 10, 100, 8, 50_000)],
        "learner_series": [(T0, "reward", "", -0.2), (T0 + 60, "reward", "", -0.1)],
    }
    return build_dashboard(results, {}, window_minutes=60, step_s=60, database="paperec", now=T0)


def _sections(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section class="panel" id="panel-(\w)">(.*?)</section>', html, re.S))


def test_page_has_every_panel_refreshes_and_loads_nothing_external() -> None:
    client = TestClient(create_app(_filled, refresh_s=7))
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert '<meta http-equiv="refresh" content="7">' in html
    for title in PANEL_TITLES.values():
        assert title in html
    assert "<script" not in html and "<link" not in html and " src=" not in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html
    sections = _sections(html)
    assert sorted(sections) == sorted(PANEL_TITLES)
    assert NO_DATA not in sections["a"] and NO_DATA not in sections["b"]
    assert NO_DATA in sections["e"]  # no serving rows given


def test_json_has_the_same_panels() -> None:
    client = TestClient(create_app(_filled))
    data = client.get("/api/panels.json").json()
    assert [p["key"] for p in data["panels"]] == list(PANEL_TITLES)
    ctr = data["panels"][0]["charts"][0]
    assert ctr["kind"] == "line" and ctr["series"][0]["points"] == [[T0, 0.08], [T0 + 60, 0.09]]


def test_non_finite_values_become_null_in_json() -> None:
    def source() -> Dashboard:
        d = _filled()
        d.panels[0].charts[0] = LineChart("x", "y", [Series("s", [(1.0, math.inf)])])
        return d

    data = TestClient(create_app(source)).get("/api/panels.json").json()
    assert data["panels"][0]["charts"][0]["series"][0]["points"] == [[1.0, None]]


def test_unreachable_clickhouse_is_a_503_page_with_the_reason() -> None:
    def source() -> Dashboard:
        d = build_dashboard({}, {}, window_minutes=60, step_s=60, database="paperec")
        d.error = "ClickHouse at 127.0.0.1:1 unreachable: <refused>"
        return d

    client = TestClient(create_app(source))
    r = client.get("/")
    assert r.status_code == 503
    assert "unreachable: &lt;refused&gt;" in r.text
    assert r.text.count(NO_DATA) >= len(PANEL_TITLES)
    assert client.get("/api/panels.json").status_code == 503
    assert client.get("/healthz").text == "ok\n"


def test_query_errors_show_on_their_panel() -> None:
    def source() -> Dashboard:
        return build_dashboard(
            {}, {"serving_series": "serving_series: boom"}, window_minutes=60, step_s=60, database="p"
        )

    html = TestClient(create_app(source)).get("/").text
    assert "query failed: serving_series: boom" in _sections(html)["e"]


def test_cli_flags() -> None:
    args = build_parser(["dashboard"]).parse_args(["dashboard", "--port", "1234", "--minutes", "5"])
    assert (args.host, args.port, args.minutes, args.step, args.refresh) == ("127.0.0.1", 1234, 5, None, 10)
    assert args._module == "paperec.dashboard.app"
