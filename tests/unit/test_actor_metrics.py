"""The hand-written Prometheus registry: text format, histograms, quantile estimates."""

from __future__ import annotations

import math

import pytest

from actor_service.metrics import Registry, quantile


def test_counter_gauge_and_histogram_render_in_prometheus_text_format() -> None:
    r = Registry()
    c = r.counter("requests_total", "requests", ["route", "status"])
    g = r.gauge("version", "served version")
    f = r.gauge("computed", "computed at scrape", fn=lambda: 2.5)
    h = r.histogram("latency_seconds", "latency", ["route"], buckets=(0.01, 0.1))
    c.inc(labels=("/rank", "200"))
    c.inc(2, labels=("/rank", "200"))
    c.inc(labels=("/rank", '4"22\n'))
    g.set(7)
    for v in (0.005, 0.05, 0.5):
        h.observe(v, labels=("/rank",))
    text = r.render()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert "# TYPE requests_total counter" in lines
    assert 'requests_total{route="/rank",status="200"} 3' in lines
    assert 'requests_total{route="/rank",status="4\\"22\\n"} 1' in lines  # escaped label value
    assert "version 7" in lines and "computed 2.5" in lines
    assert "# TYPE latency_seconds histogram" in lines
    assert 'latency_seconds_bucket{route="/rank",le="0.01"} 1' in lines
    assert 'latency_seconds_bucket{route="/rank",le="0.1"} 2' in lines
    assert 'latency_seconds_bucket{route="/rank",le="+Inf"} 3' in lines
    assert 'latency_seconds_count{route="/rank"} 3' in lines
    assert any(ln.startswith('latency_seconds_sum{route="/rank"} 0.555') for ln in lines)
    assert f.get() == 2.5


def test_gauge_without_value_is_omitted() -> None:
    r = Registry()
    r.gauge("age_seconds", "no snapshot yet", fn=lambda: None)
    samples = [ln for ln in r.render().splitlines() if not ln.startswith("#")]
    assert samples == []


def test_labels_must_match_and_names_are_unique() -> None:
    r = Registry()
    c = r.counter("x_total", "x", ["a"])
    with pytest.raises(ValueError):
        c.inc(labels=())
    with pytest.raises(ValueError):
        r.counter("x_total", "again")


def test_quantile_interpolates_within_buckets() -> None:
    buckets = (1.0, 2.0, 4.0)
    assert quantile(buckets, [0, 0, 0, 0], 0.5) is None
    assert quantile(buckets, [10, 10, 10, 10], 0.5) == pytest.approx(0.5)
    assert quantile(buckets, [0, 10, 10, 10], 0.5) == pytest.approx(1.5)
    assert quantile(buckets, [0, 0, 0, 10], 0.99) == 4.0  # +Inf bucket: highest finite bound
    assert not math.isnan(quantile(buckets, [5, 5, 10, 10], 0.99) or math.nan)
