"""The dashboard's ClickHouse queries and how their rows become panels.

``fetch`` runs every query of ``SQL`` over the last ``window_s`` seconds in buckets of
``step_s`` seconds; ``build_dashboard`` turns the rows into panels and is pure, so it is
unit-tested with hand-written rows. The SQL runs on ClickHouse 18.16 (the dev stack) and current
ClickHouse (docker-compose): time buckets are ``intDiv(toUInt32(ts), step) * step`` epoch seconds
(no toStartOfInterval / WITH FILL), and no alias reuses a column name (18.16 would resolve
``sum(clicks)`` to an alias ``clicks``). Ratios are computed here, not in SQL, so a bucket without
impressions is a gap instead of a division by zero. Every table is read with ``FINAL``: rows are
inserted at least once and deduplicated by row id (base.metrics_store), so without it a
replayed or retried insert would count twice until a background merge collapsed it.

Panel (g), the rollout, is paperec.dashboard.rollout: the lift of personalized vs holdout with
its interval is computed in SQL (``lift_sql``), since docs/rollout.md documents that same query.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from paperec.dashboard.model import Bar, BarChart, Dashboard, LineChart, Panel, Series
from paperec.dashboard.rollout import ROLLOUT_SQL, rollout_charts
from paperec.dashboard.rollout import lift_sql as lift_sql  # THE lift query (docs/rollout.md)

log = logging.getLogger(__name__)

Rows = list[tuple[Any, ...]]

PANEL_TITLES: dict[str, str] = {
    "a": "CTR and dwell per impression over time",
    "b": "CTR and dwell per snapshot version",
    "c": "Per-user objective weights",
    "d": "Learner reward and losses",
    "e": "Serving latency and snapshot age",
    "f": "Stream health",
    "g": "Rollout: lift of personalization vs holdout, arms, decisions",
}

HIST_BINS = 20  # dwell-weight histogram bins over [0, 1]
MAX_NODES = 6  # serving nodes drawn (the busiest); more would make the legend unreadable
SERVING_P50 = "paperec_serving_request_latency_seconds_p50"
SERVING_P99 = "paperec_serving_request_latency_seconds_p99"
SERVING_AGE = "paperec_serving_snapshot_age_seconds"
SERVING_REJECTED = "paperec_serving_snapshots_rejected_total"
LEARNER_NAMES = (
    "reward", "reward_best", "loss", "actor_loss", "critic_loss",
    "weight_mean", "weight_std", "consumer_lag",
)  # fmt: skip

_BUCKET = "intDiv(toUInt32(ts), {step}) * {step} AS t"
_WINDOW = "ts >= now() - {window}"

# name -> SQL; placeholders: {db}, {step} (bucket seconds), {window} (seconds).
SQL: dict[str, str] = {
    "outcomes_over_time": f"""
        SELECT {_BUCKET}, count() AS lists, sum(n_items) AS impressions,
               sum(clicks) AS total_clicks, sum(dwell_ms) AS total_dwell_ms
        FROM {{db}}.list_outcomes FINAL WHERE {_WINDOW} GROUP BY t ORDER BY t
    """,
    "outcomes_per_snapshot": f"""
        SELECT snapshot_version, count() AS lists, sum(n_items) AS impressions,
               sum(clicks) AS total_clicks, sum(dwell_ms) AS total_dwell_ms
        FROM {{db}}.list_outcomes FINAL WHERE {_WINDOW}
        GROUP BY snapshot_version ORDER BY snapshot_version
    """,
    # The dwell weight is found by objective name rather than assumed at index 2.
    "dwell_weight_histogram": f"""
        SELECT least(floor(weights[indexOf(objectives, 'dwell')] * {HIST_BINS}), {HIST_BINS - 1}) AS bin,
               count() AS lists
        FROM {{db}}.list_outcomes FINAL WHERE {_WINDOW} AND indexOf(objectives, 'dwell') > 0
        GROUP BY bin ORDER BY bin
    """,
    # Learner samples are already per-interval means; several learners (sources) are averaged.
    "learner_series": f"""
        SELECT {_BUCKET}, name, label, avg(value) AS v
        FROM {{db}}.learner_metrics FINAL
        WHERE {_WINDOW} AND name IN ({", ".join(f"'{n}'" for n in LEARNER_NAMES)})
        GROUP BY t, name, label ORDER BY name, label, t
    """,
    # The worst (max) value each node reported in the bucket: a p99 is not averageable anyway.
    "serving_series": f"""
        SELECT {_BUCKET}, source, name, max(value) AS v
        FROM {{db}}.serving_metrics FINAL
        WHERE {_WINDOW} AND (name = '{SERVING_AGE}'
              OR (name IN ('{SERVING_P50}', '{SERVING_P99}') AND label = 'route="/rank"'))
        GROUP BY t, source, name ORDER BY source, name, t
    """,
    # lag is a gauge per topic:partition: mean per partition within the bucket, then summed.
    "stream_lag": f"""
        SELECT t, sum(v) AS total_lag FROM (
            SELECT {_BUCKET}, source, label, avg(value) AS v
            FROM {{db}}.stream_metrics FINAL WHERE {_WINDOW} AND name = 'lag'
            GROUP BY t, source, label
        ) GROUP BY t ORDER BY t
    """,
    # events_in are per-interval counts labelled with the full topic name; the prefix is dropped
    # so that runs with different topic prefixes add up per topic.
    "stream_events_in": f"""
        SELECT {_BUCKET}, replaceRegexpOne(label, '^.*[.]', '') AS topic, sum(value) AS n
        FROM {{db}}.stream_metrics FINAL WHERE {_WINDOW} AND name = 'events_in'
        GROUP BY t, topic ORDER BY topic, t
    """,
    # Stream dead letters are per-interval counts (label = the stage that rejected the record).
    "stream_dead_letters": f"""
        SELECT name, label, sum(value) AS n
        FROM {{db}}.stream_metrics FINAL WHERE {_WINDOW} AND name LIKE '%dead%'
        GROUP BY name, label ORDER BY name, label
    """,
    # Learner and serving counters are totals since process start: their increase in the
    # window is max - min per source.
    "counter_increases": f"""
        SELECT 'learner' AS origin, name, label, sum(d) AS n FROM (
            SELECT source, name, label, max(value) - min(value) AS d
            FROM {{db}}.learner_metrics FINAL WHERE {_WINDOW} AND name LIKE '%dead_letter%'
            GROUP BY source, name, label
        ) GROUP BY name, label
        UNION ALL
        SELECT 'serving' AS origin, name, label, sum(d) AS n FROM (
            SELECT source, name, label, max(value) - min(value) AS d
            FROM {{db}}.serving_metrics FINAL WHERE {_WINDOW} AND name = '{SERVING_REJECTED}'
            GROUP BY source, name, label
        ) GROUP BY name, label
    """,
    # Panel (g): lift of personalized vs holdout with intervals, per arm and version, decisions
    # (paperec.dashboard.rollout; the lift SQL is also docs/rollout.md's).
    **ROLLOUT_SQL,
}

# which queries feed which panel (a failed query is reported on its panels)
PANEL_QUERIES: dict[str, tuple[str, ...]] = {
    "a": ("outcomes_over_time",),
    "b": ("outcomes_per_snapshot",),
    "c": ("dwell_weight_histogram", "learner_series"),
    "d": ("learner_series",),
    "e": ("serving_series",),
    "f": ("stream_lag", "stream_events_in", "stream_dead_letters", "counter_increases", "learner_series"),
    "g": tuple(ROLLOUT_SQL),
}


class QueryClient(Protocol):
    def execute(self, query: str) -> Any: ...


# Bucket sizes a reader can add up in their head.
NICE_STEPS = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


def step_for(window_minutes: int) -> int:
    """The smallest nice bucket giving at most ~60 buckets per window: one minute for the
    default hour, 10 s for 10 minutes."""
    target = window_minutes * 60 / 60
    return next((s for s in NICE_STEPS if s >= target), NICE_STEPS[-1])


def fetch(
    client: QueryClient, database: str, window_s: int, step_s: int
) -> tuple[dict[str, Rows], dict[str, str]]:
    """Run every query; returns (rows by query, error by query). A failing query (e.g. a table
    not created yet) costs only its panels, not the page."""
    results: dict[str, Rows] = {}
    errors: dict[str, str] = {}
    for name, template in SQL.items():
        sql = template.format(db=database, step=step_s, window=window_s)
        try:
            results[name] = [tuple(r) for r in client.execute(sql)]
        except Exception as exc:
            log.warning("dashboard query %s failed: %s", name, exc)
            errors[name] = f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            results[name] = []
    return results, errors


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _drop_nan(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x, y) for x, y in points if math.isfinite(y)]


def _panel_a(rows: Rows, gap: float) -> list[LineChart]:
    # Buckets without impressions are dropped (NaN is not JSON); max_gap then shows the gap.
    ctr = _drop_nan((float(t), _ratio(c, n)) for t, _, n, c, _ in rows)
    dwell = _drop_nan((float(t), _ratio(d / 1000, n)) for t, _, n, _, d in rows)
    return [
        LineChart(
            "CTR per bucket", "clicks / impression", [Series("CTR", ctr)], max_gap=gap, y_from_zero=True
        ),
        LineChart(
            "Dwell per impression per bucket",
            "dwell s / impression",
            [Series("dwell s / impression", dwell)],
            max_gap=gap,
            y_from_zero=True,
        ),
    ]


def _panel_b(rows: Rows) -> list[BarChart]:
    ctr, dwell = [], []
    for version, lists, n, c, d in rows:
        detail = f"{lists} lists, {n} impressions"
        if n:
            ctr.append(Bar(f"v{version}", c / n, detail))
            dwell.append(Bar(f"v{version}", d / 1000 / n, detail))
    return [
        BarChart("CTR per snapshot version", "snapshot version", "clicks / impression", ctr),
        BarChart(
            "Dwell per impression per snapshot version", "snapshot version", "dwell s / impression", dwell
        ),
    ]


def _learner(rows: Rows) -> dict[tuple[str, str], list[tuple[float, float]]]:
    by_key: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for t, name, label, v in rows:
        if math.isfinite(v):  # a diverged step's NaN loss must not break the chart or the JSON
            by_key[name, label].append((float(t), float(v)))
    return by_key


def _key_name(name: str, label: str) -> str:
    return f"{name}[{label}]" if label else name


def _panel_c(
    hist_rows: Rows, learner: Mapping[tuple[str, str], list[tuple[float, float]]], gap: float
) -> list:
    counts = {int(b): int(n) for b, n in hist_rows}
    bars = (
        [
            Bar(
                f"{i / HIST_BINS:.2f}",
                float(counts.get(i, 0)),
                f"[{i / HIST_BINS:.2f}, {(i + 1) / HIST_BINS:.2f})",
            )
            for i in range(HIST_BINS)
        ]
        if counts
        else []
    )
    series = []
    for (name, label), points in sorted(learner.items()):
        if name != "weight_mean":
            continue
        std = dict(learner.get(("weight_std", label), []))
        band = [(x, y - std[x], y + std[x]) for x, y in points if x in std]
        series.append(Series(f"mean weight[{label}] ± std", points, band=band or None))
    return [
        BarChart("Dwell weight of served lists (histogram)", "dwell weight (bin start)", "lists", bars),
        LineChart("Learner weight generator: mean ± std over users", "weight", series, max_gap=gap),
    ]


def _panel_d(learner: Mapping[tuple[str, str], list[tuple[float, float]]], gap: float) -> list[LineChart]:
    def pick(*names: str) -> list[Series]:
        keys = sorted(k for k in learner if k[0] in names)
        return [Series(_key_name(*k), learner[k], dashed=k[0].endswith("_best")) for k in keys]

    return [
        LineChart("Reward (PAPERec: -‖Σ w·g‖)", "reward", pick("reward", "reward_best"), max_gap=gap),
        LineChart("Ranker loss (weighted and per objective)", "loss", pick("loss"), max_gap=gap),
        LineChart("Actor and critic losses", "loss", pick("actor_loss", "critic_loss"), max_gap=gap),
    ]


def _panel_e(rows: Rows, gap: float) -> list[LineChart]:
    by_node: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    samples: dict[str, int] = defaultdict(int)
    for t, source, name, v in rows:
        if not math.isfinite(v):
            continue
        by_node[source][name].append((float(t), float(v)))
        samples[source] += 1
    nodes = sorted(sorted(by_node, key=lambda s: -samples[s])[:MAX_NODES])
    latency, age = [], []
    for i, node in enumerate(nodes):  # one color per node across both charts
        short = node.removeprefix("actor:")
        metrics = by_node[node]
        if metrics.get(SERVING_P50):
            latency.append(Series(f"{short} p50", [(x, y * 1000) for x, y in metrics[SERVING_P50]], color=i))
        if metrics.get(SERVING_P99):
            p99 = [(x, y * 1000) for x, y in metrics[SERVING_P99]]
            latency.append(Series(f"{short} p99", p99, dashed=True, color=i))
        if metrics.get(SERVING_AGE):
            age.append(Series(short, metrics[SERVING_AGE], color=i))
    return [
        LineChart("/rank latency per node (p50 solid, p99 dashed)", "latency ms", latency, max_gap=gap),
        LineChart("Snapshot age per node", "age s", age, max_gap=gap, y_from_zero=True),
    ]


def _panel_f(
    results: Mapping[str, Rows],
    learner: Mapping[tuple[str, str], list[tuple[float, float]]],
    step_s: int,
    gap: float,
) -> list:
    lag = [Series("streams: input lag", [(float(t), float(v)) for t, v in results["stream_lag"]])]
    if learner.get(("consumer_lag", "")):
        lag.append(Series("learner: transitions lag", learner["consumer_lag", ""]))
    events: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t, topic, n in results["stream_events_in"]:
        events[topic].append((float(t), float(n) / step_s))
    dead = [Bar(f"streams {_key_name(n, lbl)}", float(v)) for n, lbl, v in results["stream_dead_letters"]]
    for origin, name, label, v in sorted(results["counter_increases"]):
        short = name.removeprefix("paperec_serving_").removesuffix("_total")
        reason = label.replace("reason=", "").strip('"')
        dead.append(Bar(f"{origin} {_key_name(short, reason)}", float(v)))
    return [
        LineChart("Consumer lag", "records behind", lag, max_gap=gap, y_from_zero=True),
        LineChart(
            "Events in per topic",
            "events / s",
            [Series(topic, pts) for topic, pts in sorted(events.items())],
            max_gap=gap,
            y_from_zero=True,
        ),
        BarChart(
            "Dead letters and rejected snapshots in the window",
            "origin, reason",
            "count",
            dead,
            horizontal=True,
        ),
    ]


def _align_time_axes(charts: Sequence[LineChart]) -> None:
    """One time range for every time chart (the extent of all their data), so that a moment
    lines up across panels; the data's extent rather than the whole window, so a short run is
    not squeezed into a corner of an hour."""
    xs = [p[0] for c in charts if c.x_is_time for s in c.series for p in s.points]
    if len(set(xs)) < 2:
        return
    for c in charts:
        if c.x_is_time:
            c.x_range = (min(xs), max(xs))


def build_dashboard(
    results: Mapping[str, Rows],
    errors: Mapping[str, str],
    *,
    window_minutes: int,
    step_s: int,
    database: str,
    now: float | None = None,
) -> Dashboard:
    """Panels (a)..(g) from the rows of ``fetch`` (pure: no ClickHouse)."""
    rows = {name: list(results.get(name, [])) for name in SQL}
    gap = 2.5 * step_s  # a missing bucket or two is drawn as a gap, not bridged
    learner = _learner(rows["learner_series"])
    charts: dict[str, Sequence[Any]] = {
        "a": _panel_a(rows["outcomes_over_time"], gap),
        "b": _panel_b(rows["outcomes_per_snapshot"]),
        "c": _panel_c(rows["dwell_weight_histogram"], learner, gap),
        "d": _panel_d(learner, gap),
        "e": _panel_e(rows["serving_series"], gap),
        "f": _panel_f(rows, learner, step_s, gap),
        "g": rollout_charts(rows, gap),
    }
    notes = {
        "a": f"list_outcomes summed per {step_s} s bucket: clicks / impressions, dwell seconds / impressions",
        "b": "list_outcomes in the window grouped by the snapshot version that ranked the list",
        "c": "weights sent with each served list (incl. exploration noise); learner: weight generator",
        "d": f"learner_metrics, mean per {step_s} s bucket over all learners",
        "e": f"serving_metrics, worst value per node per {step_s} s bucket",
        "f": "stream_metrics (lag, events in, dead letters by stage); learner/serving counter increase",
        "g": f"list_outcomes by arm, users as units (delta method on ratios of sums), {step_s} s buckets and "
        "the whole window; rollout_decisions of the controller (docs/rollout.md: Watching a rollout)",
    }
    _align_time_axes([c for cs in charts.values() for c in cs if isinstance(c, LineChart)])
    panels = [
        Panel(
            key,
            title,
            list(charts[key]),
            note=notes[key],
            errors=[errors[q] for q in PANEL_QUERIES[key] if q in errors],
        )
        for key, title in PANEL_TITLES.items()
    ]
    return Dashboard(
        window_minutes=window_minutes,
        step_s=step_s,
        generated_at=time.time() if now is None else now,
        database=database,
        panels=panels,
    )
