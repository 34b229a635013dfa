"""The dashboard's rollout view: lift of personalized vs holdout with intervals, per-arm and
per-version means, and the rollout decisions with their reasons.

The lift SQL (:func:`lift_sql`) is the one the page, Grafana (paperec.dashboard.grafana) and
docs/rollout.md ("Watching a rollout") run; a unit test holds the doc's copy to it.

The unit is the user. Arms are assigned by a hash of the user id (actor_service/arms.py), so a
user's lists are all in one arm and are correlated (the same tastes); treating each list as an
independent unit would understate the variance whenever users contribute several lists. So the
lists are first summed per user (and bucket), and the ratio-of-sums estimator's variance is the
delta method over users. For arm a with users i = 1..k, impressions n_i and outcome y_i (clicks,
or dwell seconds) summed over the user's lists in the bucket::

    R_a     = sum y_i / sum n_i                       (CTR, or dwell seconds per impression)
    Var R_a = k / (k - 1) * sum (y_i - R_a n_i)^2 / (sum n_i)^2
            = k / (k - 1) * (sum y^2 - 2 R_a sum y n + R_a^2 sum n^2) / (sum n)^2

(the expanded form is what SQL computes from sums of squares and cross-products). The arms hold
disjoint users, so they are independent; the ratio Q = R_p / R_h (personalized over holdout) has
Var Q = (Var R_p + Q^2 Var R_h) / R_h^2 (delta method), the lift is Q - 1 and its 95% interval
Q - 1 +- 1.96 sqrt(Var Q). A bucket where an arm has fewer than 2 users has no interval, one
where an arm has no impressions no mean (NaN or inf in SQL, whose float division does not fail:
a gap on the page). These are fixed-horizon intervals for watching, not the controller's
always-valid test (rollout/sequential.py): peeking at them every 10 s inflates their error rate.

ClickHouse 18.16 (the dev stack) runs all of it: nested subqueries, ``-If`` aggregates, ``nan``;
no alias reuses a column name (see paperec.dashboard.queries).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from paperec.dashboard.model import LineChart, Series, Table

Rows = list[tuple[Any, ...]]

Z95 = 1.959963984540054  # two-sided 95% normal quantile
MAX_DECISIONS = 50  # newest decisions shown
MISSING = "-"  # a cell without a value (an arm without lists or users)
OBJECTIVES = (("ctr", "CTR (clicks / impression)"), ("dwell", "dwell s / impression"))

# Columns of a lift row, in order (the SQL's final SELECT).
LIFT_COLUMNS = (
    "t", "users_p", "users_h", "lists_p", "lists_h",
    "ctr_p", "ctr_h", "ctr_lift", "ctr_low", "ctr_high",
    "dwell_p", "dwell_h", "dwell_lift", "dwell_low", "dwell_high",
)  # fmt: skip


def _arm_stats(objective: str, y: str) -> str:
    """Mean and delta-method variance of one objective's ratio of sums over users (see the
    module docstring): ``y`` is the per-user outcome column."""
    m = f"{objective}_mean"
    return (
        f"sum({y}) / impressions AS {m},\n"
        f"               if(users > 1, users / (users - 1) / (impressions * impressions)\n"
        f"                  * (sum({y} * {y}) - 2 * {m} * sum({y} * user_n)\n"
        f"                     + {m} * {m} * sum(user_n * user_n)), nan) AS {objective}_var"
    )


def _lift(objective: str) -> str:
    """The final columns of one objective: both means, the lift and its 95% interval."""
    p, h, q = f"{objective}_p", f"{objective}_h", f"{objective}_ratio"
    half = f"{Z95} * sqrt({objective}_var_p + {q} * {q} * {objective}_var_h) / {h}"
    return (
        f"{p}, {h}, {q} - 1 AS {objective}_lift,\n"
        f"       {q} - 1 - {half} AS {objective}_low,\n"
        f"       {q} - 1 + {half} AS {objective}_high"
    )


def lift_template(bucket: str, source: str, where: str, t: str = "t") -> str:
    """The lift query with the time bucket expression ``bucket`` (named ``t``), reading
    ``source`` (a list_outcomes table) rows that pass ``where``: one row per bucket with
    both arms' means, the relative lift and its 95% interval per objective (LIFT_COLUMNS)."""
    return f"""SELECT {t}, users_p, users_h, lists_p, lists_h,
       {_lift("ctr")},
       {_lift("dwell")}
FROM (
    -- one row per bucket: the two arms side by side (avgIf of an arm's one row: NaN without one)
    SELECT {t},
           sumIf(users, arm = 'personalized') AS users_p, sumIf(users, arm = 'holdout') AS users_h,
           sumIf(lists, arm = 'personalized') AS lists_p, sumIf(lists, arm = 'holdout') AS lists_h,
           avgIf(ctr_mean, arm = 'personalized') AS ctr_p, avgIf(ctr_mean, arm = 'holdout') AS ctr_h,
           avgIf(ctr_var, arm = 'personalized') AS ctr_var_p, avgIf(ctr_var, arm = 'holdout') AS ctr_var_h,
           avgIf(dwell_mean, arm = 'personalized') AS dwell_p, avgIf(dwell_mean, arm = 'holdout') AS dwell_h,
           avgIf(dwell_var, arm = 'personalized') AS dwell_var_p,
           avgIf(dwell_var, arm = 'holdout') AS dwell_var_h,
           ctr_p / ctr_h AS ctr_ratio, dwell_p / dwell_h AS dwell_ratio
    FROM (
        -- per bucket and arm: ratio of sums over users and its delta-method variance
        SELECT {t}, arm, count() AS users, sum(user_lists) AS lists, sum(user_n) AS impressions,
               {_arm_stats("ctr", "user_clicks")},
               {_arm_stats("dwell", "user_dwell_s")}
        FROM (
            -- per bucket, arm and user: the user's lists summed (the user is the unit)
            SELECT {bucket} AS {t}, arm, user_id, count() AS user_lists, sum(n_items) AS user_n,
                   sum(clicks) AS user_clicks, sum(dwell_ms) / 1000 AS user_dwell_s
            FROM {source} FINAL
            WHERE {where} AND arm IN ('personalized', 'holdout') AND n_items > 0
            GROUP BY {t}, arm, user_id
        )
        GROUP BY {t}, arm
    )
    GROUP BY {t}
)
ORDER BY {t}"""


# Placeholders {db}, {step}, {window} as in paperec.dashboard.queries.SQL.
_WINDOW = "ts >= now() - {window}"
LIFT_OVER_TIME_SQL = lift_template("intDiv(toUInt32(ts), {step}) * {step}", "{db}.list_outcomes", _WINDOW)
LIFT_IN_WINDOW_SQL = lift_template("toUInt32(now()) - {window}", "{db}.list_outcomes", _WINDOW)


def lift_sql(database: str, window_s: int, step_s: int | None = None) -> str:
    """THE lift query: personalized vs holdout per objective with 95% intervals over the last
    ``window_s`` seconds, per ``step_s``-second bucket (``t`` = bucket start, epoch seconds) or,
    with ``step_s`` None, one row for the whole window (``t`` = the window's start)."""
    if step_s is None:
        return LIFT_IN_WINDOW_SQL.format(db=database, window=int(window_s))
    return LIFT_OVER_TIME_SQL.format(db=database, window=int(window_s), step=int(step_s))


# Per arm and snapshot version in the window: the same per-user ratio of sums and variance.
ARMS_PER_VERSION_SQL = f"""
    SELECT arm, snapshot_version, count() AS users, sum(user_lists) AS lists, sum(user_n) AS impressions,
               {_arm_stats("ctr", "user_clicks")},
               {_arm_stats("dwell", "user_dwell_s")}
    FROM (
        SELECT arm, snapshot_version, user_id, count() AS user_lists, sum(n_items) AS user_n,
               sum(clicks) AS user_clicks, sum(dwell_ms) / 1000 AS user_dwell_s
        FROM {{db}}.list_outcomes FINAL WHERE {_WINDOW} AND n_items > 0
        GROUP BY arm, snapshot_version, user_id
    )
    GROUP BY arm, snapshot_version ORDER BY snapshot_version, arm
"""

DECISIONS_SQL = f"""
    SELECT toUInt32(ts) AS decided_s, decision, version, incumbent, candidate, canary_share, reason,
           evidence_json
    FROM {{db}}.rollout_decisions FINAL WHERE {_WINDOW}
    ORDER BY ts DESC, decision_id DESC LIMIT {MAX_DECISIONS}
"""

# name -> SQL template, merged into paperec.dashboard.queries.SQL
ROLLOUT_SQL: dict[str, str] = {
    "lift_over_time": LIFT_OVER_TIME_SQL,
    "lift_in_window": LIFT_IN_WINDOW_SQL,
    "arms_per_version": ARMS_PER_VERSION_SQL,
    "rollout_decisions": DECISIONS_SQL,
}


def ratio_of_sums(y: Sequence[float], n: Sequence[float]) -> tuple[float, float]:
    """(R, Var R) of ``sum y / sum n`` over units (users): the formula the SQL computes, in its
    centered form (tests hold the SQL to it). Var is NaN with fewer than 2 units."""
    k, total = len(y), float(sum(n))
    mean = sum(y) / total if total else math.nan
    if k < 2 or not total:
        return mean, math.nan
    return mean, k / (k - 1) * sum((yi - mean * ni) ** 2 for yi, ni in zip(y, n, strict=True)) / total**2


def lift_interval(
    personalized: tuple[float, float], holdout: tuple[float, float]
) -> tuple[float, float, float]:
    """(lift, low, high): R_p / R_h - 1 and its 95% delta-method interval, from each arm's
    (R, Var R) of :func:`ratio_of_sums`."""
    (rp, vp), (rh, vh) = personalized, holdout
    q = rp / rh if rh else math.nan
    half = Z95 * math.sqrt(vp + q * q * vh) / rh if rh and vp + q * q * vh >= 0 else math.nan
    return q - 1, q - 1 - half, q - 1 + half


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _pct(v: Any) -> str:
    return f"{v * 100:+.1f}%" if _finite(v) else MISSING


def _num(v: Any) -> str:
    return f"{v:.4g}" if _finite(v) else MISSING


def _lift_rows(rows: Rows) -> list[dict[str, Any]]:
    return [dict(zip(LIFT_COLUMNS, row, strict=True)) for row in rows]


def _lift_charts(rows: Rows, gap: float) -> list[LineChart]:
    """Per objective, the lift in % per bucket with its 95% interval as a band; buckets without
    a finite lift (an arm without impressions) are gaps."""
    charts = []
    for key, label in OBJECTIVES:
        points, band = [], []
        for r in _lift_rows(rows):
            lift, low, high = r[f"{key}_lift"], r[f"{key}_low"], r[f"{key}_high"]
            if not _finite(lift):
                continue
            points.append((float(r["t"]), 100 * lift))
            if _finite(low) and _finite(high):
                band.append((float(r["t"]), 100 * low, 100 * high))
        series = Series(f"{key} lift, 95% interval", points, band=band or None)
        charts.append(
            LineChart(
                f"Lift of personalized vs holdout: {label}",
                "lift % (personalized / holdout - 1)",
                [series],
                max_gap=gap,
                y_from_zero=True,
            )
        )
    return charts


def _lift_table(rows: Rows) -> Table:
    table = Table(
        "Lift of personalized vs holdout in the window",
        ["objective", "personalized", "holdout", "lift", "95% interval", "users p / h", "lists p / h"],
        [],
    )
    for r in _lift_rows(rows):
        if not (r["users_p"] or r["users_h"]):
            continue
        for key, label in OBJECTIVES:
            table.rows.append(
                [
                    label,
                    _num(r[f"{key}_p"]),
                    _num(r[f"{key}_h"]),
                    _pct(r[f"{key}_lift"]),
                    f"[{_pct(r[f'{key}_low'])}, {_pct(r[f'{key}_high'])}]",
                    f"{r['users_p']} / {r['users_h']}",
                    f"{r['lists_p']} / {r['lists_h']}",
                ]
            )
    return table


def _with_interval(mean: Any, var: Any) -> str:
    if not _finite(mean):
        return MISSING
    return f"{mean:.4g} ± {Z95 * math.sqrt(var):.2g}" if _finite(var) and var >= 0 else f"{mean:.4g}"


def _arms_table(rows: Rows) -> Table:
    table = Table(
        "Per snapshot version and arm in the window (mean ± 95% half-width, users as units)",
        ["version", "arm", "users", "lists", "impressions", "CTR", "dwell s / impression"],
        [],
    )
    for arm, version, users, lists, impressions, ctr, ctr_var, dwell, dwell_var in rows:
        table.rows.append(
            [
                f"v{version}",
                arm or "(none)",  # lists logged before arms existed, or in direct mode
                str(users),
                str(lists),
                str(impressions),
                _with_interval(ctr, ctr_var),
                _with_interval(dwell, dwell_var),
            ]
        )
    return table


def format_evidence(evidence_json: str, limit: int = 400) -> str:
    """``key=value`` pairs of a decision's evidence (per-objective estimates and bounds), sorted;
    a value that is not JSON is shown as it is, truncated."""
    try:
        evidence = json.loads(evidence_json) if evidence_json else {}
    except ValueError:
        evidence = None
    if not isinstance(evidence, dict):
        return evidence_json[:limit]
    text = ", ".join(
        f"{k}={_num(v) if isinstance(v, int | float) else v}" for k, v in sorted(evidence.items())
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _version(v: Any) -> str:
    return MISSING if v is None else f"v{v}"


def _decisions_table(rows: Rows) -> Table:
    table = Table(
        "Rollout decisions (newest first)",
        ["time", "decision", "about", "serving after: incumbent / candidate", "canary share", "reason",
         "evidence"],
        [],
    )  # fmt: skip
    for decided_s, decision, version, incumbent, candidate, share, reason, evidence in rows:
        table.rows.append(
            [
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(decided_s)),
                decision,
                _version(version),
                f"{_version(incumbent)} / {_version(candidate)}",
                _num(share),
                reason,
                format_evidence(evidence),
            ]
        )
    return table


def rollout_charts(results: Mapping[str, Rows], gap: float) -> list[LineChart | Table]:
    """Panel (g) from the rows of the ROLLOUT_SQL queries (pure)."""
    return [
        *_lift_charts(results.get("lift_over_time", []), gap),
        _lift_table(results.get("lift_in_window", [])),
        _arms_table(results.get("arms_per_version", [])),
        _decisions_table(results.get("rollout_decisions", [])),
    ]
