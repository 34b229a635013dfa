"""The Grafana dashboard (deploy/grafana/dashboards/paperec.json), generated from this module.

Same panels (a)..(g) as the built-in page, as SQL for the provisioned ClickHouse data source
(uid ``paperec-clickhouse``, grafana-clickhouse-datasource, default database ``paperec``).
Grafana talks to the docker-compose ClickHouse (current version), but the SQL also runs on the dev
stack's 18.16 once the macros are expanded (buckets by ``intDiv`` instead of ``toStartOfInterval``,
no alias reusing a column name), so the integration tests check every query on a real server.

Regenerate after editing: ``python -m paperec.dashboard.grafana > deploy/grafana/dashboards/paperec.json``
(a unit test fails while the file and this module disagree).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from paperec.dashboard.queries import (
    HIST_BINS,
    PANEL_TITLES,
    SERVING_AGE,
    SERVING_P50,
    SERVING_P99,
    SERVING_REJECTED,
)
from paperec.dashboard.rollout import MAX_DECISIONS, lift_template

DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "paperec-clickhouse"}
UID = "paperec"
SCHEMA_VERSION = 39

# Grafana macros: $__timeFilter(ts) limits to the dashboard's range, $__interval_s is the bucket.
TIME_BUCKET = "toDateTime(intDiv(toUInt32(ts), $__interval_s) * $__interval_s)"
TIME = f"{TIME_BUCKET} AS time"
TIME_FILTER = "$__timeFilter(ts)"

FORMAT_TIME_SERIES = 0  # long rows (time, series name, value) become one series per name
FORMAT_TABLE = 1


def _learner_sql(names: str) -> str:
    return (
        f"SELECT {TIME}, if(label = '', name, concat(name, '[', label, ']')) AS series, "
        "avg(value) AS avg_value "
        f"FROM learner_metrics FINAL WHERE {TIME_FILTER} AND name IN ({names}) "
        "GROUP BY time, series ORDER BY time"
    )


def _lift_sql(objective: str) -> str:
    """One objective's lift with its interval, from the built-in page's (and docs/rollout.md's)
    lift query with Grafana's bucket and time filter."""
    lift = lift_template(TIME_BUCKET, "list_outcomes", TIME_FILTER, t="time")
    columns = ", ".join(f"{objective}_{c}" for c in ("lift", "low", "high"))
    return f"SELECT time, {columns} FROM (\n{lift}\n) ORDER BY time"


# Lift panels: the interval's bounds drawn as a shaded band (Grafana's fillBelowTo), not lines.
BANDS: dict[str, tuple[str, str]] = {
    "Lift of personalized vs holdout: CTR": ("ctr_low", "ctr_high"),
    "Lift of personalized vs holdout: dwell per impression": ("dwell_low", "dwell_high"),
}

# (panel key, title, type, unit, format, SQL, description)
PANELS: list[tuple[str, str, str, str, int, str, str]] = [
    (
        "a", "CTR per bucket", "timeseries", "percentunit", FORMAT_TIME_SERIES,
        f"SELECT {TIME}, sum(clicks) / sum(n_items) AS ctr FROM list_outcomes FINAL "
        f"WHERE {TIME_FILTER} GROUP BY time ORDER BY time",
        "Clicks per impression of the served lists (list_outcomes).",
    ),
    (
        "a", "Dwell per impression per bucket", "timeseries", "s", FORMAT_TIME_SERIES,
        f"SELECT {TIME}, sum(dwell_ms) / 1000 / sum(n_items) AS dwell_s_per_impression FROM list_outcomes "
        f"FINAL WHERE {TIME_FILTER} GROUP BY time ORDER BY time",
        "Dwell seconds per impression of the served lists (list_outcomes).",
    ),
    (
        "b", "CTR per snapshot version", "barchart", "percentunit", FORMAT_TABLE,
        "SELECT toString(snapshot_version) AS version, sum(clicks) / sum(n_items) AS ctr FROM list_outcomes "
        f"FINAL WHERE {TIME_FILTER} GROUP BY snapshot_version ORDER BY snapshot_version",
        "Lists grouped by the actor snapshot version that ranked them.",
    ),
    (
        "b", "Dwell per impression per snapshot version", "barchart", "s", FORMAT_TABLE,
        "SELECT toString(snapshot_version) AS version, sum(dwell_ms) / 1000 / sum(n_items) AS dwell_s "
        f"FROM list_outcomes FINAL WHERE {TIME_FILTER} GROUP BY snapshot_version ORDER BY snapshot_version",
        "Lists grouped by the actor snapshot version that ranked them.",
    ),
    (
        "c", "Dwell weight of served lists (histogram)", "barchart", "short", FORMAT_TABLE,
        f"SELECT toString(floor(weights[indexOf(objectives, 'dwell')] * {HIST_BINS}) / {HIST_BINS}) "
        "AS bin_start, count() AS lists FROM list_outcomes FINAL "
        f"WHERE {TIME_FILTER} AND indexOf(objectives, 'dwell') > 0 "
        "GROUP BY bin_start ORDER BY toFloat64(bin_start)",
        "Per-user dwell weight sent with each served list (including exploration noise).",
    ),
    (
        "c", "Learner weight generator: mean and std over users", "timeseries", "short", FORMAT_TIME_SERIES,
        _learner_sql("'weight_mean', 'weight_std'"),
        "The weight generator's weights over the users of a sampled batch.",
    ),
    (
        "d", "Reward", "timeseries", "short", FORMAT_TIME_SERIES,
        _learner_sql("'reward', 'reward_best'"),
        "PAPERec reward -||sum_k w_k g_k|| of the logged weights; reward_best: of the min-norm weights.",
    ),
    (
        "d", "Ranker loss (weighted and per objective)", "timeseries", "short", FORMAT_TIME_SERIES,
        _learner_sql("'loss'"),
        "Weighted ranker loss and the per-objective losses.",
    ),
    (
        "d", "Actor and critic losses", "timeseries", "short", FORMAT_TIME_SERIES,
        _learner_sql("'actor_loss', 'critic_loss'"),
        "Losses of the weight generator (actor) and the critic.",
    ),
    (
        "e", "/rank latency per node", "timeseries", "ms", FORMAT_TIME_SERIES,
        f"SELECT {TIME}, concat(source, if(name = '{SERVING_P50}', ' p50', ' p99')) AS series, "
        "max(value) * 1000 AS latency_ms FROM serving_metrics FINAL "
        f"WHERE {TIME_FILTER} AND name IN ('{SERVING_P50}', '{SERVING_P99}') AND label = 'route=\"/rank\"' "
        "GROUP BY time, series ORDER BY time",
        "Latency quantiles each serving node reports (worst value in the bucket).",
    ),
    (
        "e", "Snapshot age per node", "timeseries", "s", FORMAT_TIME_SERIES,
        f"SELECT {TIME}, source AS node, max(value) AS age_s FROM serving_metrics FINAL "
        f"WHERE {TIME_FILTER} AND name = '{SERVING_AGE}' GROUP BY time, node ORDER BY time",
        "Seconds since the served snapshot was published.",
    ),
    (
        "f", "Consumer lag", "timeseries", "short", FORMAT_TIME_SERIES,
        "SELECT time, series, records FROM ("
        "SELECT time, 'streams: input lag' AS series, sum(v) AS records FROM ("
        f"SELECT {TIME}, source, label, avg(value) AS v FROM stream_metrics FINAL "
        f"WHERE {TIME_FILTER} AND name = 'lag' GROUP BY time, source, label) GROUP BY time "
        "UNION ALL "
        f"SELECT {TIME}, 'learner: transitions lag' AS series, avg(value) AS records FROM learner_metrics "
        f"FINAL WHERE {TIME_FILTER} AND name = 'consumer_lag' GROUP BY time"
        ") ORDER BY time",
        "Records behind: the stream join's input topics (summed over partitions) and the learner's "
        "transitions topic.",
    ),
    (
        "f", "Events in per topic", "timeseries", "short", FORMAT_TIME_SERIES,
        f"SELECT {TIME}, replaceRegexpOne(label, '^.*[.]', '') AS topic, sum(value) / $__interval_s AS per_s "
        f"FROM stream_metrics FINAL WHERE {TIME_FILTER} AND name = 'events_in' "
        "GROUP BY time, topic ORDER BY time",
        "Events per second the stream join reads, per topic (topic prefix dropped).",
    ),
    (
        "f", "Dead letters by stage", "timeseries", "short", FORMAT_TIME_SERIES,
        f"SELECT {TIME}, concat(name, ' ', label) AS reason, sum(value) AS records FROM stream_metrics FINAL "
        f"WHERE {TIME_FILTER} AND name LIKE '%dead%' GROUP BY time, reason ORDER BY time",
        "Records the stream join sent to the dead-letter topic, by the stage that rejected them.",
    ),
    (
        "f", "Learner dead letters and rejected snapshots", "bargauge", "short", FORMAT_TABLE,
        "SELECT concat(origin, ' ', name, ' ', label) AS counter, sum(d) AS increase FROM ("
        "SELECT 'learner' AS origin, source, name, label, max(value) - min(value) AS d FROM learner_metrics "
        f"FINAL WHERE {TIME_FILTER} AND name LIKE '%dead_letter%' GROUP BY source, name, label "
        "UNION ALL "
        "SELECT 'serving' AS origin, source, name, label, max(value) - min(value) AS d FROM serving_metrics "
        f"FINAL WHERE {TIME_FILTER} AND name = '{SERVING_REJECTED}' GROUP BY source, name, label"
        ") GROUP BY counter ORDER BY counter",
        "Increase of the learner's and serving nodes' counters (totals since process start) in the range.",
    ),
    (
        "g", "Lift of personalized vs holdout: CTR", "timeseries", "percentunit", FORMAT_TIME_SERIES,
        _lift_sql("ctr"),
        "CTR of personalized lists over holdout lists (fixed global weights, same ranker) minus 1, with "
        "its 95% interval (delta method, users as units; docs/rollout.md: Watching a rollout).",
    ),
    (
        "g", "Lift of personalized vs holdout: dwell per impression", "timeseries", "percentunit",
        FORMAT_TIME_SERIES, _lift_sql("dwell"),
        "Dwell seconds per impression of personalized lists over holdout lists minus 1, with its 95% "
        "interval (delta method, users as units; docs/rollout.md: Watching a rollout).",
    ),
    (
        "g", "Rollout decisions", "table", "short", FORMAT_TABLE,
        "SELECT ts, decision, version, incumbent, candidate, canary_share, reason, evidence_json "
        f"FROM rollout_decisions FINAL WHERE {TIME_FILTER} ORDER BY ts DESC LIMIT {MAX_DECISIONS}",
        "The rollout controller's decisions (canary, promote, rollback, reject_ope, bootstrap), newest "
        "first: the candidate version, the serving state after it, why, and the evidence.",
    ),
]  # fmt: skip


def _panel(panel_id: int, spec: tuple[str, str, str, str, int, str, str], x: int, y: int) -> dict[str, Any]:
    key, title, kind, unit, fmt, sql, description = spec
    panel: dict[str, Any] = {
        "id": panel_id,
        "type": kind,
        "title": f"({key}) {title}",
        "description": f"{PANEL_TITLES[key]}: {description}",
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {
                "refId": "A",
                "datasource": DATASOURCE,
                "editorType": "sql",
                "format": fmt,
                "queryType": "timeseries" if fmt == FORMAT_TIME_SERIES else "table",
                "rawSql": sql,
            }
        ],
    }
    if kind == "timeseries":
        panel["fieldConfig"]["defaults"]["custom"] = {
            "lineWidth": 2,
            "showPoints": "auto",
            "spanNulls": False,
        }
        panel["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if title in BANDS:
            low, high = BANDS[title]
            panel["fieldConfig"]["overrides"] = [
                {
                    "matcher": {"id": "byName", "options": high},
                    "properties": [
                        {"id": "custom.fillBelowTo", "value": low},
                        {"id": "custom.lineWidth", "value": 0},
                        {"id": "custom.fillOpacity", "value": 20},
                    ],
                },
                {
                    "matcher": {"id": "byName", "options": low},
                    "properties": [{"id": "custom.lineWidth", "value": 0}],
                },
            ]
    elif kind == "table":
        panel["options"] = {"showHeader": True, "cellHeight": "sm"}
        panel["fieldConfig"]["defaults"]["custom"] = {"align": "auto", "inspect": True}
    elif kind == "barchart":
        panel["options"] = {"orientation": "vertical", "xField": "", "showValue": "never"}
    else:
        panel["options"] = {"orientation": "horizontal", "displayMode": "basic"}
        panel["options"]["reduceOptions"] = {"values": True, "calcs": [], "fields": ""}
    return panel


def dashboard() -> dict[str, Any]:
    panels = [_panel(i + 1, spec, (i % 2) * 12, (i // 2) * 8) for i, spec in enumerate(PANELS)]
    return {
        "id": None,
        "uid": UID,
        "title": "paperec",
        "description": "PAPERec streaming recommender: objectives, learner, serving and stream health.",
        "tags": ["paperec"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "timezone": "browser",
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
