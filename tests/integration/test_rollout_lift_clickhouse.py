"""The rollout panel's SQL on the real ClickHouse (the dev stack's 18.16), in a database of its
own: the lift of personalized vs holdout with its interval equals the formula computed in Python
(paperec.dashboard.rollout.ratio_of_sums / lift_interval) on the same rows, for the whole window
and per bucket, through FINAL (rows inserted twice count once); Grafana's lift panels give the
same numbers; the per-arm table and the decisions reach panel (g)."""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from base.metrics_store import ROLLOUT_DECISION_FIELDS, client, init_tables
from base.settings import Settings
from paperec.dashboard.grafana import PANELS as GRAFANA_PANELS
from paperec.dashboard.model import LineChart, Table
from paperec.dashboard.queries import build_dashboard, fetch, lift_sql
from paperec.dashboard.rollout import ARMS_PER_VERSION_SQL, LIFT_COLUMNS, lift_interval, ratio_of_sums

pytestmark = pytest.mark.integration

WINDOW_S, STEP_S = 3600, 60
COLUMNS = (
    "ts, request_id, user_id, snapshot_version, objectives, weights, noise, n_items, clicks, dwell_ms, "
    "complete, arm, log_propensity"
)


@pytest.fixture
def db(settings: Settings) -> Iterator[tuple[Settings, str]]:
    name = f"test_rollout_dash_{uuid.uuid4().hex[:8]}"
    s = settings.replace(clickhouse_database=name)
    init_tables(s)
    yield s, name
    ch = client(s)
    ch.execute(f"DROP DATABASE IF EXISTS {name}")
    ch.disconnect()


def _rows(now: datetime) -> list[tuple]:
    """Seeded lists over the last ~8 minutes: 60 users, a tenth in the holdout (lower CTR and
    dwell), some canary and arm-less lists, one list too old for the window."""
    rng = random.Random(18)
    rows = []
    for i in range(900):
        u = rng.randrange(60)
        arm = "holdout" if u < 8 else "canary" if u < 14 else "" if u < 16 else "personalized"
        ctr = (0.06 if arm == "holdout" else 0.09) * (0.5 + (u % 5) / 4)  # heterogeneous users
        n = rng.randint(5, 12)
        clicks = sum(rng.random() < ctr for _ in range(n))
        ts = now - timedelta(seconds=rng.randrange(480))
        rows.append(
            (ts, f"r{i}", f"u{u}", 3 if arm == "canary" else 2, ["click", "dwell"], [0.6, 0.4], [0.0, 0.0],
             n, clicks, clicks * rng.randint(2_000, 40_000), 1, arm, None if arm == "holdout" else -1.5)
        )  # fmt: skip
    rows.append(
        (now - timedelta(hours=2), "old", "u20", 2, ["click"], [1.0], [0.0], 10, 9, 1, 1, "holdout", None)
    )
    return rows


def _reference(rows: list[tuple], epochs: dict[str, int], bucket_of) -> dict[int, dict[str, float]]:
    """Per bucket: users and lists per arm, both arms' means and the lift with its interval, by
    the Python formula on per-user sums."""
    per_user: dict[tuple[int, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for r in rows:
        if r[1] not in epochs or r[11] not in ("personalized", "holdout"):
            continue
        acc = per_user[bucket_of(epochs[r[1]]), r[11], r[2]]
        acc[0] += 1
        acc[1] += r[7]
        acc[2] += r[8]
        acc[3] += r[9] / 1000
    out: dict[int, dict[str, float]] = {}
    for t in sorted({k[0] for k in per_user}):
        arms = {
            a: [v for k, v in per_user.items() if k[0] == t and k[1] == a]
            for a in ("personalized", "holdout")
        }
        row: dict[str, float] = {"t": t}
        for a, suffix in (("personalized", "p"), ("holdout", "h")):
            row[f"users_{suffix}"] = len(arms[a])
            row[f"lists_{suffix}"] = sum(v[0] for v in arms[a])
        for key, col in (("ctr", 2), ("dwell", 3)):
            p = ratio_of_sums([v[col] for v in arms["personalized"]], [v[1] for v in arms["personalized"]])
            h = ratio_of_sums([v[col] for v in arms["holdout"]], [v[1] for v in arms["holdout"]])
            row[f"{key}_p"], row[f"{key}_h"] = p[0], h[0]
            row[f"{key}_lift"], row[f"{key}_low"], row[f"{key}_high"] = lift_interval(p, h)
        out[t] = row
    return out


def _same(sql_row: dict[str, float], ref: dict[str, float], skip: tuple[str, ...] = ()) -> None:
    for c in LIFT_COLUMNS:
        if c in skip:
            continue
        a, b = sql_row[c], ref[c]
        if isinstance(b, float) and not math.isfinite(b):
            assert not math.isfinite(a), (c, a, b)
        else:
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (c, a, b)


def test_lift_sql_matches_the_formula_on_the_same_rows(db: tuple[Settings, str]) -> None:
    s, name = db
    ch = client(s, name)
    try:
        now = datetime.now().replace(microsecond=0) - timedelta(seconds=5)
        rows = _rows(now)
        insert = f"INSERT INTO {name}.list_outcomes ({COLUMNS}) VALUES"
        ch.execute(insert, rows)
        ch.execute(insert, rows[:200])  # at-least-once: a retried batch; FINAL keeps one copy
        epochs = {
            rid: ts
            for rid, ts in ch.execute(
                f"SELECT request_id, toUInt32(ts) FROM {name}.list_outcomes FINAL "
                f"WHERE ts >= now() - {WINDOW_S}"
            )
        }
        assert "old" not in epochs and len(epochs) == 900

        window = ch.execute(lift_sql(name, WINDOW_S))
        started = int(time.time()) - WINDOW_S
        (whole,) = [dict(zip(LIFT_COLUMNS, r, strict=True)) for r in window]
        (ref,) = _reference(rows, epochs, lambda _: 0).values()
        assert abs(whole["t"] - started) <= 5  # the window's start
        _same(whole, ref, skip=("t",))
        assert whole["users_h"] == 8 and whole["users_p"] == 44  # every user lists in 8 minutes
        assert whole["ctr_low"] < whole["ctr_lift"] < whole["ctr_high"]
        assert whole["dwell_low"] < whole["dwell_lift"] < whole["dwell_high"]

        buckets = [
            dict(zip(LIFT_COLUMNS, r, strict=True)) for r in ch.execute(lift_sql(name, WINDOW_S, STEP_S))
        ]
        refs = _reference(rows, epochs, lambda e: e // STEP_S * STEP_S)
        assert [b["t"] for b in buckets] == sorted(refs) and len(buckets) >= 8
        for b in buckets:
            _same(b, refs[b["t"]])
        assert sum(math.isfinite(b["ctr_low"]) for b in buckets) >= 4  # intervals, not only NaNs

        # Grafana's lift panels: the same query with its macros expanded as the plugin does
        for _, title, _, _, _, sql, _ in GRAFANA_PANELS:
            if not title.startswith("Lift of"):
                continue
            objective = "ctr" if title.endswith("CTR") else "dwell"
            expanded = sql.replace("$__timeFilter(ts)", f"ts >= now() - {WINDOW_S}")
            got = ch.execute(expanded.replace("$__interval_s", str(STEP_S)))
            assert len(got) == len(buckets)
            for (_, *lift), b in zip(got, buckets, strict=True):  # both in time order
                expected = [b[f"{objective}_{c}"] for c in ("lift", "low", "high")]
                assert lift == pytest.approx(expected, rel=1e-9, nan_ok=True)

        arms = {(r[0], r[1]): r for r in ch.execute(ARMS_PER_VERSION_SQL.format(db=name, window=WINDOW_S))}
        assert set(arms) == {("", 2), ("canary", 3), ("holdout", 2), ("personalized", 2)}
        canary = [r for r in rows if r[11] == "canary"]
        users: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for r in canary:
            users[r[2]][0] += r[8]
            users[r[2]][1] += r[7]
        mean, var = ratio_of_sums([v[0] for v in users.values()], [v[1] for v in users.values()])
        assert arms["canary", 3][2:5] == (len(users), len(canary), sum(r[7] for r in canary))
        assert arms["canary", 3][5] == pytest.approx(mean) and arms["canary", 3][6] == pytest.approx(var)
    finally:
        ch.disconnect()


def test_panel_g_from_clickhouse(db: tuple[Settings, str]) -> None:
    """fetch + build_dashboard on the real server: the lift chart has points with a band, the
    window table both objectives, the decisions table the decision with its reason and evidence."""
    s, name = db
    ch = client(s, name)
    try:
        now = datetime.now().replace(microsecond=0) - timedelta(seconds=5)
        ch.execute(f"INSERT INTO {name}.list_outcomes ({COLUMNS}) VALUES", _rows(now))
        evidence = json.dumps({"ctr_upper": -0.31, "lists_canary": 412})
        decisions = [
            (now - timedelta(seconds=60), "d1", "canary", 3, 2, 3, 0.2, "OPE within bounds", "{}"),
            (now, "d2", "rollback", 3, 2, None, 0.0, "ctr upper bound -31% < -5%", evidence),
        ]
        cols = ", ".join(ROLLOUT_DECISION_FIELDS)
        ch.execute(f"INSERT INTO {name}.rollout_decisions ({cols}) VALUES", decisions)
        ch.execute(f"INSERT INTO {name}.rollout_decisions ({cols}) VALUES", decisions[1:])  # retried
        results, errors = fetch(ch, name, WINDOW_S, STEP_S)
    finally:
        ch.disconnect()
    assert not errors, errors
    d = build_dashboard(results, errors, window_minutes=60, step_s=STEP_S, database=name)
    (g,) = [p for p in d.panels if p.key == "g"]
    ctr, dwell, window, per_arm, table = g.charts
    assert isinstance(ctr, LineChart) and isinstance(dwell, LineChart)
    assert len(ctr.series[0].points) >= 8 and ctr.series[0].band
    assert isinstance(window, Table) and [r[0] for r in window.rows] == [
        "CTR (clicks / impression)",
        "dwell s / impression",
    ]
    assert isinstance(per_arm, Table) and len(per_arm.rows) == 4
    assert isinstance(table, Table) and [r[1] for r in table.rows] == ["rollback", "canary"]
    assert table.rows[0][3] == "v2 / -" and table.rows[0][5] == "ctr upper bound -31% < -5%"
    assert table.rows[0][6] == "ctr_upper=-0.31, lists_canary=412"
