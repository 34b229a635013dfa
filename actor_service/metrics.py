"""What the serving node needs from ``prometheus_client`` beyond its metric types.

``prometheus_client`` keeps the metrics (thread-safe: request handlers run on the event loop,
the snapshot loader and the scoring worker are threads) and renders ``/metrics``. Three things
it does not do are here:

- :class:`ScrapeGauges`: gauges computed when scraped (the age of the served snapshot) whose
  sample is left out while there is no value (no snapshot yet), not reported as 0;
- :func:`samples`: the registry as flat ``(name, label text, value)`` rows for the ClickHouse
  exporter (``serving_metrics``);
- :func:`histograms` and :func:`quantile`: cumulative bucket counts read back from the
  registry, and a quantile estimate from them (Prometheus' ``histogram_quantile``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# ``generate_latest`` writes the text format 0.0.4 (the format a scraper gets without asking for
# another); CONTENT_TYPE_LATEST names 1.0.0.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Request latency buckets (seconds): sub-millisecond to seconds, dense where /rank lives.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


@dataclass(frozen=True)
class ScrapeGauge:
    """A gauge read from ``fn`` at each scrape; ``fn`` returns None while there is no value."""

    name: str
    help: str
    fn: Callable[[], float | None]


class ScrapeGauges(Collector):
    """Unlabelled gauges computed when scraped, never stale; one without a value has no sample."""

    def __init__(self, gauges: Iterable[ScrapeGauge]) -> None:
        self.gauges = tuple(gauges)

    def describe(self) -> Iterable[Metric]:
        # Names only, so that registering does not call every ``fn`` (the node is not built yet).
        return [GaugeMetricFamily(g.name, g.help) for g in self.gauges]

    def collect(self) -> Iterable[Metric]:
        for g in self.gauges:
            family = GaugeMetricFamily(g.name, g.help)
            value = g.fn()
            if value is not None:
                family.add_metric([], float(value))
            yield family


def label_text(labels: Mapping[str, str]) -> str:
    """``a="1",b="x"`` (no braces), in the metric's label order; empty for no labels."""
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(frozen=True)
class Sample:
    """One flat sample: name (with its ``_total``/``_sum``/``_count`` suffix), label text, value."""

    name: str
    labels: str
    value: float


def samples(registry: CollectorRegistry) -> Iterator[Sample]:
    """Every sample but histogram buckets (summarized as quantiles instead) and the ``_created``
    timestamps ``prometheus_client`` adds to counters and histograms."""
    for family in registry.collect():
        for s in family.samples:
            if s.name.endswith(("_bucket", "_created")):
                continue
            yield Sample(s.name, label_text(s.labels), float(s.value))


@dataclass(frozen=True)
class HistogramSeries:
    """One labelled series of a histogram: finite bucket bounds and cumulative counts (one more,
    the +Inf bucket, which is the count)."""

    name: str
    labels: tuple[tuple[str, str], ...]  # without ``le``
    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]


def histograms(registry: CollectorRegistry) -> Iterator[HistogramSeries]:
    """The histogram series of the registry, read back through ``collect``."""
    for family in registry.collect():
        if family.type != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], list[tuple[float, int]]] = {}
        for s in family.samples:
            if s.name == family.name + "_bucket":
                key = tuple((k, v) for k, v in s.labels.items() if k != "le")
                series.setdefault(key, []).append((float(s.labels["le"]), int(s.value)))
        for key, buckets in series.items():
            buckets.sort()
            bounds = tuple(b for b, _ in buckets if not math.isinf(b))
            yield HistogramSeries(family.name, key, bounds, tuple(c for _, c in buckets))


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
