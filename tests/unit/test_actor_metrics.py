"""The serving node's metrics on prometheus_client: /metrics text, scrape-time gauges, one
registry per node, the flat rows and interval quantiles exported to ClickHouse."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from actor_service.instruments import ClickHouseExporter, Instruments, NodeState
from actor_service.metrics import ScrapeGauge, ScrapeGauges, quantile, samples

NOW = datetime(2026, 1, 1)


def exposition(m: Instruments) -> list[str]:
    return m.render().decode().splitlines()


def test_node_metrics_render_in_prometheus_text_format() -> None:
    m = Instruments(NodeState(snapshot_version=lambda: 7, ready=lambda: True))
    m.requests.labels("/rank", "200").inc()
    m.requests.labels("/rank", "200").inc(2)
    m.errors.labels('4"22\n').inc()
    m.in_flight.set(3)
    for v in (0.0005, 0.004, 0.3):
        m.latency.labels("/rank").observe(v)
    lines = exposition(m)
    assert "# TYPE paperec_serving_requests_total counter" in lines
    assert 'paperec_serving_requests_total{route="/rank",status="200"} 3.0' in lines
    assert 'paperec_serving_errors_total{kind="4\\"22\\n"} 1.0' in lines  # escaped label value
    assert "paperec_serving_rank_in_flight 3.0" in lines
    assert "paperec_serving_snapshot_version 7.0" in lines and "paperec_serving_ready 1.0" in lines
    assert "# TYPE paperec_serving_request_latency_seconds histogram" in lines
    latency = "paperec_serving_request_latency_seconds"
    assert f'{latency}_bucket{{le="0.001",route="/rank"}} 1.0' in lines
    assert f'{latency}_bucket{{le="0.005",route="/rank"}} 2.0' in lines
    assert f'{latency}_bucket{{le="+Inf",route="/rank"}} 3.0' in lines
    assert f'{latency}_count{{route="/rank"}} 3.0' in lines
    assert m.value(f"{latency}_sum", route="/rank") == pytest.approx(0.3045)


def test_scrape_time_gauges_without_a_value_have_no_sample() -> None:
    created: list[int | None] = [None]
    m = Instruments(NodeState(snapshot_created_at_ms=lambda: created[0]))
    age = "paperec_serving_snapshot_age_seconds"
    assert not any(ln.startswith(age) for ln in exposition(m))  # no snapshot: no sample, not 0
    assert f"# TYPE {age} gauge" in exposition(m)
    created[0] = 1_000  # created in 1970: computed at the scrape, so tens of years old
    assert m.value(age) > 1e9
    assert "paperec_serving_cold_start" not in {ln.split(" ")[0] for ln in exposition(m)}


def test_scrape_gauges_are_not_read_when_registered() -> None:
    def not_yet() -> float:
        raise AssertionError("read at registration")

    r = CollectorRegistry()
    r.register(ScrapeGauges([ScrapeGauge("g", "read at scrape", not_yet)]))
    with pytest.raises(ValueError, match="Duplicated"):
        r.register(ScrapeGauges([ScrapeGauge("g", "again", not_yet)]))


def test_every_node_has_its_own_registry() -> None:
    a, b = Instruments(), Instruments()  # the same names twice in one process
    a.snapshots_loaded.inc()
    assert a.value("paperec_serving_snapshots_loaded_total") == 1
    assert b.value("paperec_serving_snapshots_loaded_total") == 0
    assert b.value("paperec_serving_impressions_total", outcome="sent") == 0.0  # never counted


class Recorder:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    def execute(self, query: str, params: Any = None) -> Any:
        self.rows.extend(params or [])


def by_series(rows: list[tuple[object, ...]]) -> dict[tuple[str, str], float]:
    """``serving_metrics`` rows ``(ts, source, name, label, value)`` by (name, label)."""
    return {(str(name), str(label)): float(str(value)) for _, _, name, label, value in rows}


def test_clickhouse_rows_are_flat_samples_plus_interval_quantiles() -> None:
    m = Instruments(NodeState(snapshot_version=lambda: 3))
    exporter = ClickHouseExporter(m, Recorder, "serving_metrics", "actor:n1", interval_s=60.0)
    try:
        m.requests.labels("/rank", "200").inc()
        for _ in range(10):
            m.latency.labels("/rank").observe(0.004)  # (0.0025, 0.005]
        rows = by_series(exporter.rows(NOW))
        assert rows[("paperec_serving_requests_total", 'route="/rank",status="200"')] == 1.0
        assert rows[("paperec_serving_snapshot_version", "")] == 3.0
        assert rows[("paperec_serving_request_latency_seconds_count", 'route="/rank"')] == 10.0
        assert not any(n.endswith(("_bucket", "_created")) for n, _ in rows)
        p50 = rows[("paperec_serving_request_latency_seconds_p50", 'route="/rank"')]
        assert 0.0025 < p50 <= 0.005
        assert ("paperec_serving_snapshot_publish_to_served_seconds_p50", "") not in rows  # no data

        for _ in range(10):
            m.latency.labels("/rank").observe(0.7)  # (0.5, 1.0]
        rows = by_series(exporter.rows(NOW))
        # this interval only: the ten earlier observations are not in it
        assert 0.5 < rows[("paperec_serving_request_latency_seconds_p50", 'route="/rank"')] <= 1.0
        rows = by_series(exporter.rows(NOW))
        assert ("paperec_serving_request_latency_seconds_p50", 'route="/rank"') not in rows  # idle
    finally:
        exporter.writer.close(1.0)


def test_samples_leave_out_buckets_and_created_timestamps() -> None:
    m = Instruments()
    m.publish_to_served.observe(0.2)
    names = {s.name for s in samples(m.registry)}
    assert "paperec_serving_snapshot_publish_to_served_seconds_sum" in names
    assert not any(n.endswith(("_bucket", "_created")) for n in names)


def test_quantile_interpolates_within_buckets() -> None:
    buckets = (1.0, 2.0, 4.0)
    assert quantile(buckets, [0, 0, 0, 0], 0.5) is None
    assert quantile(buckets, [10, 10, 10, 10], 0.5) == pytest.approx(0.5)
    assert quantile(buckets, [0, 10, 10, 10], 0.5) == pytest.approx(1.5)
    assert quantile(buckets, [0, 0, 0, 10], 0.99) == 4.0  # +Inf bucket: highest finite bound
    assert not math.isnan(quantile(buckets, [5, 5, 10, 10], 0.99) or math.nan)
