"""Stream metrics rows: one list_outcomes row per closed list, counters as per-interval deltas."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from base.metrics_store import LIST_OUTCOMES_COLUMNS
from streams import fixtures as fx
from streams.decoding import decode_impression
from streams.join import ClosedList
from streams.metrics import OUTCOME_COLUMNS, SAMPLE_COLUMNS, StreamMetrics, outcome_row_id


class Rows:
    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def add(self, row: tuple[Any, ...]) -> None:
        self.rows.append(row)


def test_outcome_rows_match_the_table_and_counters_are_deltas() -> None:
    columns = [line.split()[0] for line in LIST_OUTCOMES_COLUMNS.strip().splitlines()]
    assert [*OUTCOME_COLUMNS, "row_id"] == columns  # the writer appends the row id
    samples, outcomes = Rows(), Rows()
    m = StreamMetrics("streams:test", samples, outcomes, clock=lambda: 1_700_000_000.0)
    raw = fx.dumps(fx.impression("r1", "u1", 1_700_000_000_123, n_items=3))
    m.list_outcome(ClosedList(0, decode_impression(raw), raw, (1, 0, 1), (500, 0, 0), False, 1))
    (row,) = outcomes.rows
    assert len(row) == len(OUTCOME_COLUMNS)
    assert row[0] == datetime.fromtimestamp(1_700_000_000) and row[1:3] == ("r1", "u1")
    assert row[-6:] == (3, 2, 500, 0, "", None)  # a version-1 impression: no arm, no propensity
    assert outcome_row_id(row) == "r1"  # re-emitted after a restart: the same row id
    # issue 18: the impression's rollout arm and log-propensity are columns of the row
    imp = {**fx.impression("r2", "u1", 1_700_000_000_123, n_items=3), "arm": "holdout", "log_propensity": -2}
    raw = fx.dumps(imp)
    m.list_outcome(ClosedList(0, decode_impression(raw), raw, (0, 0, 0), (0, 0, 0), True, 1))
    row = outcomes.rows[-1]
    assert row[OUTCOME_COLUMNS.index("arm")] == "holdout"
    assert row[OUTCOME_COLUMNS.index("log_propensity")] == -2.0
    assert type(row[OUTCOME_COLUMNS.index("log_propensity")]) is float

    m.count("events_in", "t.clicks", 3)
    m.count_all(Counter({("duplicates", "click"): 2}))
    m.gauge("lag", "t.clicks:0", 7)
    m.flush()
    m.count("events_in", "t.clicks")
    m.flush()
    got = [(name, label, value) for _, _, name, label, value in samples.rows]
    assert got == [
        ("events_in", "t.clicks", 3.0),
        ("duplicates", "click", 2.0),
        ("lag", "t.clicks:0", 7.0),
        ("events_in", "t.clicks", 1.0),
        ("lag", "t.clicks:0", 7.0),
    ]
    assert all(len(r) == len(SAMPLE_COLUMNS) and r[1] == "streams:test" for r in samples.rows)
    assert m.totals["events_in", "t.clicks"] == 4
