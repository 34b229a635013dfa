"""Stream metrics to ClickHouse: one ``list_outcomes`` row per closed list, and stream health
samples (events in, dead letters by stage, duplicates, outputs, lag, state sizes) in the long
``stream_metrics`` table. Both go through base.metrics_writer.MetricsWriter: ``add`` never
blocks, a ClickHouse outage is retried in the background with a bounded buffer (oldest rows are
dropped and counted), so the join never waits on ClickHouse.

Counters are written as per-interval deltas (sum them over time); gauges as their current value.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from base.metrics_store import METRIC_COLUMNS, MetricRow, init_tables, sample_writer
from base.metrics_store import client as clickhouse_client
from base.metrics_writer import MetricsWriter
from base.settings import Settings
from streams.join import ClosedList

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = METRIC_COLUMNS  # stream_metrics rows are base.metrics_store.MetricRow
OUTCOME_COLUMNS = (
    "ts",
    "request_id",
    "user_id",
    "snapshot_version",
    "objectives",
    "weights",
    "noise",
    "n_items",
    "clicks",
    "dwell_ms",
    "complete",
    "arm",
    "log_propensity",
)


def outcome_row_id(row: tuple[Any, ...]) -> str:
    """The row id of a list_outcomes row: its request id (one list, one outcome)."""
    return str(row[OUTCOME_COLUMNS.index("request_id")])


class RowSink(Protocol):
    def add(self, row: tuple[Any, ...]) -> None: ...


class StreamMetrics:
    def __init__(
        self,
        source: str,
        samples: RowSink | None = None,
        outcomes: RowSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self._samples = samples
        self._outcomes = outcomes
        self._clock = clock
        self.counters: Counter[tuple[str, str]] = Counter()
        self.totals: Counter[tuple[str, str]] = Counter()  # since start, for logs and tests
        self.gauges: dict[tuple[str, str], float] = {}
        self._writers: list[MetricsWriter] = []

    @classmethod
    def to_clickhouse(cls, settings: Settings, source: str) -> StreamMetrics:
        """Metrics written to the settings' ClickHouse (tables created if missing), or only kept
        in memory when ``streams_metrics_clickhouse`` is off."""
        if not settings.streams_metrics_clickhouse:
            return cls(source)
        try:
            init_tables(settings)
        except Exception as exc:  # ClickHouse down at start: the writers retry later
            log.warning("could not create the ClickHouse metric tables (will retry inserts): %s", exc)
        db = settings.clickhouse_database

        def connect() -> Any:
            return clickhouse_client(settings, database=db)

        samples = sample_writer(settings, "stream_metrics")
        # A list outcome re-emitted after a restart (the uncommitted tail is replayed) has the
        # same request id: it is the row id, so the table keeps one copy.
        outcomes = MetricsWriter(connect, f"{db}.list_outcomes", OUTCOME_COLUMNS, row_id=outcome_row_id)
        metrics = cls(source, samples, outcomes)
        metrics._writers = [samples, outcomes]
        return metrics

    def count(self, name: str, label: str = "", n: int = 1) -> None:
        self.counters[name, label] += n
        self.totals[name, label] += n

    def count_all(self, counts: Counter[tuple[str, str]]) -> None:
        for key, n in counts.items():
            self.counters[key] += n
            self.totals[key] += n
        counts.clear()

    def gauge(self, name: str, label: str, value: float) -> None:
        self.gauges[name, label] = value

    def list_outcome(self, c: ClosedList) -> None:
        if self._outcomes is None:
            return
        imp = c.impression
        self._outcomes.add(
            (
                datetime.fromtimestamp(imp.ts_ms // 1000),
                imp.request_id,
                imp.user_id,
                imp.snapshot_version,
                list(imp.objectives),
                [float(w) for w in imp.weights],  # as received: an integer weight is valid
                [float(x) for x in imp.noise],
                imp.n_items,
                sum(c.clicks),
                sum(c.dwell_ms),
                int(c.complete),
                imp.arm or "",  # '' = served without a guarded rollout
                None if imp.log_propensity is None else float(imp.log_propensity),
            )
        )

    def flush(self) -> None:
        """Write the counters accumulated since the last flush and the gauges as samples."""
        now = self._clock()
        if self._samples is not None:
            ts = datetime.fromtimestamp(int(now))
            for (name, label), n in self.counters.items():
                self._samples.add(MetricRow(ts, self.source, name, label, float(n)))
            for (name, label), value in self.gauges.items():
                self._samples.add(MetricRow(ts, self.source, name, label, float(value)))
        self.counters.clear()

    def close(self) -> None:
        self.flush()
        for w in self._writers:
            w.close()
