"""MetricsWriter buffering logic with an in-process insert target (ClickHouse is tested in
tests/integration/test_metrics_store.py)."""

from __future__ import annotations

import threading
from typing import Any

from base.metrics_writer import MetricsWriter


class FlakyTarget:
    """Records inserted rows; fails while `down` is set."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.ids: list[str] = []
        self.down = threading.Event()

    def execute(self, query: str, params: Any = None) -> None:
        if self.down.is_set():
            raise ConnectionError("clickhouse unreachable")
        assert query.startswith("INSERT INTO t (a, b, row_id) VALUES")
        self.rows.extend(row[:-1] for row in params)
        self.ids.extend(row[-1] for row in params)


def test_rows_are_written_in_order() -> None:
    target = FlakyTarget()
    writer = MetricsWriter(lambda: target, "t", ["a", "b"], batch_size=7, flush_interval_s=0.01)
    for i in range(50):
        writer.add((i, str(i)))
    assert writer.flush(5)
    writer.close()
    assert target.rows == [(i, str(i)) for i in range(50)]
    assert writer.stats.written == 50 and writer.stats.dropped == 0


def test_outage_keeps_rows_bounded_and_recovers() -> None:
    target = FlakyTarget()
    target.down.set()
    writer = MetricsWriter(
        lambda: target, "t", ["a", "b"], max_buffer=20, flush_interval_s=0.01, max_backoff_s=0.05
    )
    for i in range(30):
        writer.add((i, "x"))  # must not block although the target is down
    assert writer.pending() == 20
    assert writer.stats.dropped == 10
    assert not writer.flush(0.2)
    target.down.clear()
    assert writer.flush(5)
    writer.close()
    # the oldest rows were dropped, the newest 20 survive in order
    assert [r[0] for r in target.rows] == list(range(10, 30))
    assert writer.stats.failed_flushes >= 1


class LostAnswerTarget(FlakyTarget):
    """The first insert lands but its answer is lost (the client sees an error): at-least-once."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def execute(self, query: str, params: Any = None) -> None:
        self.calls += 1
        super().execute(query, params)
        if self.calls == 1:
            raise TimeoutError("no answer from clickhouse")


def test_a_retried_insert_sends_the_same_row_ids() -> None:
    target = LostAnswerTarget()
    writer = MetricsWriter(lambda: target, "t", ["a", "b"], flush_interval_s=0.01, max_backoff_s=0.05)
    for i in range(5):
        writer.add((i, "x"))
    assert writer.flush(5)
    writer.close()
    assert len(target.rows) == 10  # sent twice ...
    assert target.ids[:5] == target.ids[5:]  # ... with the same ids, which the table collapses
    assert len(set(target.ids)) == 5


def test_row_ids_are_unique_per_writer_or_from_the_natural_key() -> None:
    first, second = FlakyTarget(), FlakyTarget()
    for target in (first, second):
        writer = MetricsWriter(lambda t=target: t, "t", ["a", "b"], flush_interval_s=0.01)  # type: ignore[misc]
        writer.add((1, "x"))
        writer.add((1, "x"))
        assert writer.flush(5)
        writer.close()
    assert len(set(first.ids + second.ids)) == 4  # equal rows are still distinct rows
    keyed = FlakyTarget()
    writer = MetricsWriter(lambda: keyed, "t", ["a", "b"], flush_interval_s=0.01, row_id=lambda r: f"k{r[0]}")
    writer.add((7, "x"))
    writer.add((7, "y"))  # the same logical row emitted again
    assert writer.flush(5)
    writer.close()
    assert keyed.ids == ["k7", "k7"]
