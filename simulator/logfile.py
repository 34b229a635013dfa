"""Recorded event logs: JSON Lines of impression, click and dwell records in the schemas'
encoding (``schemas.encode``), one record per line, in non-decreasing ``ts_ms`` order.

Reading never fails on content: a line that does not decode (bad JSON, a schema violation, a
record type that has no place in an event log) is yielded as a :class:`BadLine` with its line
number and reason, and the reader goes on. See docs/simulator.md, "Recorded logs".
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from schemas import Click, Dwell, Impression, SchemaError, decode, encode

log = logging.getLogger(__name__)

Event = Impression | Click | Dwell
EVENT_TYPES = ("impression", "click", "dwell")


@dataclass(frozen=True)
class LogLine:
    line_no: int  # 1-based line number in the file
    event: Event


@dataclass(frozen=True)
class BadLine:
    line_no: int
    reason: str


def parse_line(line_no: int, raw: bytes) -> LogLine | BadLine:
    try:
        record = decode(raw)
    except SchemaError as e:
        return BadLine(line_no, str(e))
    if not isinstance(record, Impression | Click | Dwell):
        return BadLine(line_no, f"type: record type {record.type!r} does not belong in an event log")
    return LogLine(line_no, record)


def read_lines(lines: Iterable[bytes]) -> Iterator[LogLine | BadLine]:
    """Parse raw lines (with or without their newline); blank lines are skipped."""
    for line_no, raw in enumerate(lines, 1):
        raw = raw.strip()
        if raw:
            yield parse_line(line_no, raw)


def read_log(path: Path) -> Iterator[LogLine | BadLine]:
    with open(path, "rb") as f:
        yield from read_lines(f)


def in_time_order(items: Iterable[LogLine | BadLine], window: int = 10_000) -> Iterator[LogLine | BadLine]:
    """Re-order by ``ts_ms`` within a window of ``window`` events (bad lines pass straight
    through). A log written by :class:`LogWriter` is already in order; this guards logs
    assembled by other tools, whose events may be slightly out of order. Ties keep file order."""
    heap: list[tuple[int, int, LogLine]] = []
    for item in items:
        if isinstance(item, BadLine):
            yield item
            continue
        heapq.heappush(heap, (item.event.ts_ms, item.line_no, item))
        if len(heap) > window:
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


@dataclass
class LogStats:
    events: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.events.values())


class LogWriter:
    """Writes events as JSON lines. Events must come in non-decreasing ``ts_ms`` order: that is
    the format's contract, which lets a reader replay a log without sorting it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()/__exit__
        self._last_ts = -1
        self.stats = LogStats()

    def write(self, event: Event) -> None:
        if event.ts_ms < self._last_ts:
            raise ValueError(
                f"event at ts_ms={event.ts_ms} after one at {self._last_ts}: logs are time-ordered"
            )
        self._last_ts = event.ts_ms
        self._file.write(encode(event) + b"\n")
        self.stats.events[event.type] += 1

    def write_all(self, events: Iterable[Event]) -> None:
        for e in events:
            self.write(e)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EventSorter:
    """Collects events from concurrently simulated sessions and yields them in time order
    (ties: order of arrival). Holds everything in memory (about 1.5 kB per list of 10 items)."""

    def __init__(self) -> None:
        self._items: list[tuple[int, int, Event]] = []

    def add(self, events: Iterable[Event]) -> None:
        for e in events:
            self._items.append((e.ts_ms, len(self._items), e))

    def __len__(self) -> int:
        return len(self._items)

    def sorted(self) -> Iterator[Event]:
        self._items.sort(key=lambda t: (t[0], t[1]))
        return (e for _, _, e in self._items)
