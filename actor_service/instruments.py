"""The serving node's metrics, and their export in batches to ClickHouse ``serving_metrics``.

One :class:`Instruments` object per node; the HTTP layer, the impression logger and the
snapshot consumer update it, ``GET /metrics`` renders it, and :class:`ClickHouseExporter`
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

from actor_service.metrics import Histogram, Registry, quantile
from base.metrics_writer import InsertClient, MetricsWriter

log = logging.getLogger(__name__)

P = "paperec_serving_"

# Seconds from a snapshot's publication (Kafka record timestamp) to the node serving it.
PUBLISH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class NodeState:
    """Scrape-time views of the node (gauges computed when read, never stale)."""

    snapshot_version: Callable[[], int | None] = lambda: None
    snapshot_created_at_ms: Callable[[], int | None] = lambda: None
    ready: Callable[[], bool] = lambda: False
    cold_start: Callable[[], bool | None] = lambda: None


class Instruments:
    def __init__(self, state: NodeState | None = None) -> None:
        st = state or NodeState()
        r = self.registry = Registry()
        self.requests = r.counter(
            P + "requests_total", "HTTP requests by route and status", ["route", "status"]
        )
        self.errors = r.counter(P + "errors_total", "failed /rank requests by kind", ["kind"])
        self.latency = r.histogram(
            P + "request_latency_seconds", "end-to-end HTTP latency (request in to response out)", ["route"]
        )
        self.candidates = r.counter(P + "candidates_total", "candidate items ranked")
        self.in_flight = r.gauge(P + "rank_in_flight", "/rank requests admitted and not yet answered")
        self.snapshot_version = r.gauge(
            P + "snapshot_version",
            "version of the served snapshot (0: cold-start model)",
            fn=lambda: _float(st.snapshot_version()),
        )
        self.snapshot_age = r.gauge(
            P + "snapshot_age_seconds",
            "seconds since the served snapshot was created by the learner",
            fn=lambda: _age_s(st.snapshot_created_at_ms()),
        )
        self.snapshots_loaded = r.counter(P + "snapshots_loaded_total", "snapshots verified and swapped in")
        self.snapshots_rejected = r.counter(
            P + "snapshots_rejected_total", "invalid snapshots ignored, by reason", ["reason"]
        )
        self.snapshots_skipped = r.counter(
            P + "snapshots_skipped_total", "snapshots not newer than the served one (replays, duplicates)"
        )
        self.snapshot_load_seconds = r.gauge(
            P + "snapshot_load_seconds", "time to verify and build the last loaded snapshot"
        )
        self.publish_to_served = r.histogram(
            P + "snapshot_publish_to_served_seconds",
            "Kafka record timestamp of a snapshot to the moment this node serves it",
            buckets=PUBLISH_BUCKETS,
        )
        self.ready = r.gauge(
            P + "ready",
            "1 when /rank serves (snapshot loaded, or cold-start policy)",
            fn=lambda: float(st.ready()),
        )
        self.cold_start = r.gauge(
            P + "cold_start", "1 while the cold-start model serves", fn=lambda: _float(st.cold_start())
        )
        self.impressions = r.counter(
            P + "impressions_total", "impressions by outcome (sent, retried, dropped_*)", ["outcome"]
        )
        self.impressions_buffered = r.gauge(P + "impressions_buffered", "impressions waiting for Kafka")
        self.impressions_buffered_bytes = r.gauge(P + "impressions_buffered_bytes", "bytes waiting for Kafka")
        self.producer_connected = r.gauge(P + "impression_producer_connected", "1 when the producer is up")


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

    COLUMNS = ("ts", "source", "name", "label", "value")

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
        self._previous: dict[tuple[str, tuple[str, ...]], list[int]] = {}

    def rows(self, now: datetime) -> list[tuple[object, ...]]:
        out: list[tuple[object, ...]] = []
        for s in self.instruments.registry.samples():
            if s.name.endswith("_bucket"):
                continue  # buckets are summarized below; keep the table small
            out.append((now, self.source, s.name, s.labels, float(s.value)))
        for m in self.instruments.registry.metrics:
            if isinstance(m, Histogram):
                out.extend(self._interval_quantiles(m, now))
        return out

    def _interval_quantiles(self, h: Histogram, now: datetime) -> list[tuple[object, ...]]:
        out: list[tuple[object, ...]] = []
        with h.lock:
            keys = sorted(h.states)
        for labels in keys:
            cum, _, _ = h.cumulative(labels)
            prev = self._previous.get((h.name, labels), [0] * len(cum))
            self._previous[(h.name, labels)] = cum
            delta = [c - p for c, p in zip(cum, prev, strict=True)]
            label = ",".join(f'{n}="{v}"' for n, v in zip(h.labelnames, labels, strict=True))
            for q, suffix in ((0.5, "_p50"), (0.99, "_p99")):
                v = quantile(h.buckets, delta, q)
                if v is not None:
                    out.append((now, self.source, h.name + suffix, label, float(v)))
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
