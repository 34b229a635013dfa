"""MetricsWriter buffering logic with an in-process insert target (ClickHouse is tested in
tests/integration/test_metrics_store.py)."""

from __future__ import annotations

import threading
from typing import Any

from paperec.metrics_writer import MetricsWriter


class FlakyTarget:
    """Records inserted rows; fails while `down` is set."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.down = threading.Event()

    def execute(self, query: str, params: Any = None) -> None:
        if self.down.is_set():
            raise ConnectionError("clickhouse unreachable")
        assert query.startswith("INSERT INTO t (a, b) VALUES")
        self.rows.extend(params)


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
