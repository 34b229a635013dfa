"""A small, thread-safe metrics registry that renders the Prometheus text format (0.0.4).

Hand-written rather than ``prometheus_client``: the serving node needs counters, gauges (some
computed at scrape time, e.g. the age of the snapshot) and one latency histogram, plus a flat
list of samples for the ClickHouse exporter; that is a hundred lines, not a dependency.

Every update takes one registry lock: request handlers run on the event loop, but the snapshot
loader and the scoring worker are threads, and ``d[k] += 1`` is not atomic across threads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

Labels = tuple[str, ...]

# Request latency buckets (seconds): sub-millisecond to seconds, dense where /rank lives.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_text(names: Sequence[str], values: Sequence[str]) -> str:
    """``a="1",b="x"`` (no braces); empty for no labels."""
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclass
class Sample:
    """One flat sample: metric name (with _bucket/_sum/_count suffix), label text, value."""

    name: str
    labels: str
    value: float


@dataclass
class _Metric:
    name: str
    help: str
    labelnames: tuple[str, ...]
    lock: threading.Lock

    kind = "untyped"

    def _check(self, labels: Labels) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {labels}")

    def samples(self) -> Iterator[Sample]:
        raise NotImplementedError


@dataclass
class Counter(_Metric):
    kind = "counter"
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, labels: Labels = ()) -> None:
        self._check(labels)
        with self.lock:
            self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, labels: Labels = ()) -> float:
        with self.lock:
            return self.values.get(labels, 0.0)

    def samples(self) -> Iterator[Sample]:
        with self.lock:
            items = sorted(self.values.items())
        for labels, value in items:
            yield Sample(self.name, label_text(self.labelnames, labels), value)


@dataclass
class Gauge(_Metric):
    """A set value, or (``fn``) a value computed at each scrape."""

    kind = "gauge"
    values: dict[Labels, float] = field(default_factory=dict)
    fn: Callable[[], float | None] | None = None

    def set(self, value: float, labels: Labels = ()) -> None:
        self._check(labels)
        with self.lock:
            self.values[labels] = float(value)

    def get(self, labels: Labels = ()) -> float:
        if self.fn is not None:
            v = self.fn()
            return math.nan if v is None else float(v)
        with self.lock:
            return self.values.get(labels, math.nan)

    def samples(self) -> Iterator[Sample]:
        if self.fn is not None:
            v = self.fn()
            if v is not None:  # None: no value yet (e.g. no snapshot): omit the sample
                yield Sample(self.name, "", float(v))
            return
        with self.lock:
            items = sorted(self.values.items())
        for labels, value in items:
            yield Sample(self.name, label_text(self.labelnames, labels), value)


@dataclass
class HistogramState:
    bucket_counts: list[int]  # per bucket, not cumulative; last is +Inf
    total: float = 0.0
    count: int = 0


@dataclass
class Histogram(_Metric):
    kind = "histogram"
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    states: dict[Labels, HistogramState] = field(default_factory=dict)

    def observe(self, value: float, labels: Labels = ()) -> None:
        self._check(labels)
        i = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
        with self.lock:
            st = self.states.get(labels)
            if st is None:
                st = self.states[labels] = HistogramState([0] * (len(self.buckets) + 1))
            st.bucket_counts[i] += 1
            st.total += value
            st.count += 1

    def cumulative(self, labels: Labels = ()) -> tuple[list[int], float, int]:
        """(cumulative counts per bucket incl. +Inf, sum, count)."""
        with self.lock:
            st = self.states.get(labels)
            if st is None:
                return [0] * (len(self.buckets) + 1), 0.0, 0
            counts, total, count = list(st.bucket_counts), st.total, st.count
        acc, out = 0, []
        for c in counts:
            acc += c
            out.append(acc)
        return out, total, count

    def samples(self) -> Iterator[Sample]:
        with self.lock:
            keys = sorted(self.states)
        for labels in keys:
            cum, total, count = self.cumulative(labels)
            base = label_text(self.labelnames, labels)
            for bound, c in zip((*self.buckets, math.inf), cum, strict=True):
                le = f'le="{_fmt(bound)}"'
                yield Sample(f"{self.name}_bucket", f"{base},{le}" if base else le, c)
            yield Sample(f"{self.name}_sum", base, total)
            yield Sample(f"{self.name}_count", base, count)


def quantile(buckets: Sequence[float], cumulative: Sequence[int], q: float) -> float | None:
    """Estimate the q-quantile from cumulative bucket counts (Prometheus' histogram_quantile:
    linear interpolation inside the bucket). None when there are no observations."""
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0
    for bound, c in zip(buckets, cumulative, strict=False):
        if c >= rank:
            if c == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (c - lower_count)
        lower_bound, lower_count = bound, c
    return buckets[-1] if buckets else None  # in the +Inf bucket: the highest finite bound


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: list[_Metric] = []

    def _add(self, metric: _Metric) -> _Metric:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"duplicate metric {metric.name}")
        self._metrics.append(metric)
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        c = Counter(name, help, tuple(labelnames), self._lock)
        self._add(c)
        return c

    def gauge(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        fn: Callable[[], float | None] | None = None,
    ) -> Gauge:
        g = Gauge(name, help, tuple(labelnames), self._lock, fn=fn)
        self._add(g)
        return g

    def histogram(
        self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        h = Histogram(name, help, tuple(labelnames), self._lock, buckets=tuple(buckets))
        self._add(h)
        return h

    @property
    def metrics(self) -> list[_Metric]:
        return list(self._metrics)

    def samples(self) -> list[Sample]:
        return [s for m in self._metrics for s in m.samples()]

    def render(self) -> str:
        """The Prometheus text exposition format."""
        lines: list[str] = []
        for m in self._metrics:
            lines.append(f"# HELP {m.name} {m.help}")
            lines.append(f"# TYPE {m.name} {m.kind}")
            for s in m.samples():
                lines.append(
                    f"{s.name}{{{s.labels}}} {_fmt(s.value)}" if s.labels else f"{s.name} {_fmt(s.value)}"
                )
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
