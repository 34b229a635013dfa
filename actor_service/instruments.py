"""The serving node's metrics, and their export in batches to ClickHouse ``serving_metrics``.

One :class:`Instruments` object per node, ``prometheus_client`` metrics in a registry of its
own; the HTTP layer, the impression logger and the snapshot consumer update it,
``GET /metrics`` renders it (``generate_latest``), and :class:`ClickHouseExporter`
copies a sample of every series to ClickHouse every few seconds through the bounded,
non-blocking :class:`base.metrics_writer.MetricsWriter` (ClickHouse being down never slows
a request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from actor_service.metrics import (
    LATENCY_BUCKETS,
    HistogramSeries,
    ScrapeGauge,
    ScrapeGauges,
    histograms,
    label_text,
    quantile,
    samples,
)
from base.metrics_store import METRIC_COLUMNS, MetricRow
from base.metrics_writer import InsertClient, MetricsWriter

log = logging.getLogger(__name__)

P = "paperec_serving_"

# Seconds from a snapshot's publication (Kafka record timestamp) to the node serving it.
PUBLISH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)
# Seconds from a rollout decision (its decided_at_ms) to this node applying it.
DECISION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)


@dataclass(frozen=True)
class NodeState:
    """Scrape-time views of the node (gauges computed when read, never stale)."""

    snapshot_version: Callable[[], int | None] = lambda: None
    snapshot_created_at_ms: Callable[[], int | None] = lambda: None
    ready: Callable[[], bool] = lambda: False
    cold_start: Callable[[], bool | None] = lambda: None
    candidate_version: Callable[[], int | None] = lambda: None
    canary_share: Callable[[], float | None] = lambda: None
    snapshots_held: Callable[[], int | None] = lambda: None


class Instruments:
    """The node's metrics, in a registry of its own (never ``prometheus_client``'s global one:
    tests and benchmarks run several nodes in one process). Update them with the
    ``prometheus_client`` API (``m.errors.labels("validation").inc()``); read them back with
    :meth:`value`."""

    def __init__(self, state: NodeState | None = None) -> None:
        st = state or NodeState()
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            P + "requests_total", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.errors = Counter(P + "errors_total", "failed /rank requests by kind", ["kind"], registry=r)
        self.latency = Histogram(
            P + "request_latency_seconds",
            "end-to-end HTTP latency (request in to response out)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.candidates = Counter(P + "candidates_total", "candidate items ranked", registry=r)
        self.in_flight = Gauge(
            P + "rank_in_flight", "/rank requests admitted and not yet answered", registry=r
        )
        self.snapshots_loaded = Counter(
            P + "snapshots_loaded_total", "snapshots verified and swapped in", registry=r
        )
        self.snapshots_rejected = Counter(
            P + "snapshots_rejected_total", "invalid snapshots ignored, by reason", ["reason"], registry=r
        )
        self.snapshots_skipped = Counter(
            P + "snapshots_skipped_total",
            "snapshots not newer than the served one (replays, duplicates)",
            registry=r,
        )
        self.snapshot_load_seconds = Gauge(
            P + "snapshot_load_seconds", "time to verify and build the last loaded snapshot", registry=r
        )
        self.publish_to_served = Histogram(
            P + "snapshot_publish_to_served_seconds",
            "Kafka record timestamp of a snapshot to the moment this node serves it",
            buckets=PUBLISH_BUCKETS,
            registry=r,
        )
        self.arm_requests = Counter(
            P + "arm_requests_total",
            "ranked lists by the rollout arm that served them (holdout, personalized, canary)",
            ["arm"],
            registry=r,
        )
        self.canary_fallback = Counter(
            P + "canary_fallback_total",
            "lists of canary users served by the incumbent: the candidate's snapshot was not held",
            registry=r,
        )
        self.decisions_applied = Counter(
            P + "rollout_decisions_total",
            "rollout decisions applied, by decision (canary, promote, rollback, reject_ope, bootstrap)",
            ["decision"],
            registry=r,
        )
        self.decisions_rejected = Counter(
            P + "rollout_decisions_rejected_total",
            "control-topic records rejected (forged, unsigned, malformed), by reason",
            ["reason"],
            registry=r,
        )
        self.decisions_ignored = Counter(
            P + "rollout_decisions_ignored_total",
            "valid decisions not applied: duplicate, or stale (decided before the applied one)",
            ["reason"],
            registry=r,
        )
        self.decision_unheld = Counter(
            P + "rollout_unheld_total",
            "decisions naming a snapshot this node did not hold yet, by role (incumbent, candidate)",
            ["role"],
            registry=r,
        )
        self.decision_to_applied = Histogram(
            P + "rollout_decision_to_applied_seconds",
            "a rollout decision's decided_at_ms to the moment this node applied it",
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.impressions = Counter(
            P + "impressions_total",
            "impressions by outcome (sent, retried, dropped_*)",
            ["outcome"],
            registry=r,
        )
        self.impressions_buffered = Gauge(
            P + "impressions_buffered", "impressions waiting for Kafka", registry=r
        )
        self.impressions_buffered_bytes = Gauge(
            P + "impressions_buffered_bytes", "bytes waiting for Kafka", registry=r
        )
        self.producer_connected = Gauge(
            P + "impression_producer_connected", "1 when the producer is up", registry=r
        )
        r.register(
            ScrapeGauges(
                [
                    ScrapeGauge(
                        P + "snapshot_version",
                        "version of the served snapshot (0: cold-start model)",
                        lambda: _float(st.snapshot_version()),
                    ),
                    ScrapeGauge(
                        P + "snapshot_age_seconds",
                        "seconds since the served snapshot was created by the learner",
                        lambda: _age_s(st.snapshot_created_at_ms()),
                    ),
                    ScrapeGauge(
                        P + "ready",
                        "1 when /rank serves (snapshot loaded, or cold-start policy)",
                        lambda: float(st.ready()),
                    ),
                    ScrapeGauge(
                        P + "cold_start",
                        "1 while the cold-start model serves",
                        lambda: _float(st.cold_start()),
                    ),
                    ScrapeGauge(
                        P + "candidate_version",
                        "version of the snapshot serving the canary arm (absent: no canary)",
                        lambda: _float(st.candidate_version()),
                    ),
                    ScrapeGauge(
                        P + "canary_share",
                        "share of non-holdout users in the canary arm (guarded rollout)",
                        lambda: _float(st.canary_share()),
                    ),
                    ScrapeGauge(
                        P + "snapshots_held",
                        "verified snapshots held for the guarded rollout",
                        lambda: _float(st.snapshots_held()),
                    ),
                ]
            )
        )

    def value(self, sample: str, **labels: str) -> float:
        """One sample's current value, e.g. ``value("paperec_serving_impressions_total",
        outcome="sent")``; 0.0 when there is no such sample (a label value never counted, a
        scrape-time gauge without a value), as ``devtools.metric_value`` reads ``/metrics``."""
        found = self.registry.get_sample_value(sample, labels)
        return 0.0 if found is None else found

    def render(self) -> bytes:
        """``GET /metrics``: the Prometheus text format (``actor_service.metrics.CONTENT_TYPE``)."""
        return generate_latest(self.registry)


def _float(value: float | bool | None) -> float | None:
    return None if value is None else float(value)


def _age_s(created_at_ms: int | None) -> float | None:
    if created_at_ms is None:
        return None
    return max(0.0, time.time() - created_at_ms / 1000.0)


class ClickHouseExporter:
    """Every ``interval_s``, one row per sample into ``serving_metrics(ts, source, name, label,
    value)``, plus interval p50/p99 of each latency histogram (from the bucket deltas, so the
    dashboard does not need to difference cumulative buckets)."""

    COLUMNS = METRIC_COLUMNS  # rows are base.metrics_store.MetricRow

    def __init__(
        self,
        instruments: Instruments,
        connect: Callable[[], InsertClient],
        table: str,
        source: str,
        interval_s: float,
    ) -> None:
        self.instruments = instruments
        self.source = source
        self.interval_s = interval_s
        self.writer = MetricsWriter(connect, table, list(self.COLUMNS), flush_interval_s=min(1.0, interval_s))
        # cumulative bucket counts at the last export, per series: quantiles are of the interval
        self._previous: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[int, ...]] = {}

    def rows(self, now: datetime) -> list[tuple[object, ...]]:
        registry = self.instruments.registry
        out: list[tuple[object, ...]] = [
            MetricRow(now, self.source, s.name, s.labels, s.value) for s in samples(registry)
        ]
        for h in histograms(registry):
            out.extend(self._interval_quantiles(h, now))
        return out

    def _interval_quantiles(self, h: HistogramSeries, now: datetime) -> list[tuple[object, ...]]:
        prev = self._previous.get((h.name, h.labels), (0,) * len(h.cumulative))
        self._previous[(h.name, h.labels)] = h.cumulative
        delta = [c - p for c, p in zip(h.cumulative, prev, strict=True)]
        label = label_text(dict(h.labels))
        out: list[tuple[object, ...]] = []
        for q, suffix in ((0.5, "_p50"), (0.99, "_p99")):
            v = quantile(h.bounds, delta, q)
            if v is not None:
                out.append(MetricRow(now, self.source, h.name + suffix, label, float(v)))
        return out

    def export_once(self) -> int:
        rows = self.rows(datetime.fromtimestamp(int(time.time())))
        for row in rows:
            self.writer.add(row)
        return len(rows)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.export_once()
            except Exception:  # never let metrics export take the node down
                log.exception("metrics export failed")

    def close(self, timeout_s: float = 2.0) -> None:
        try:
            self.export_once()
        finally:
            self.writer.close(timeout_s)
