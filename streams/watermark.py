"""Event-time progress: stage-1 watermarks per partition, and stage 2's view of stage 1.

Stage 1 (``Watermarks``). The join of partition p reads three inputs (impressions, clicks and
dwells partition p). Each input's clock is the largest event time read from it. Kafka fetches
the three topics at different speeds (by bytes, not by event time), so while catching up on a
backlog one input can run seconds ahead of another; the partition's watermark is therefore the
*minimum* over its inputs (as in Flink or Kafka Streams), kept monotonic:

* an input that has records waiting on the broker but none read yet holds the watermark back
  (otherwise the first fetch of clicks would make the not-yet-fetched impressions "late");
* an input that has read everything there is and got nothing for ``idle_ms`` of wall time
  advances with the wall time since its last record, so quiet partitions still close windows;
* event times more than ``max_future_ms`` ahead of the wall clock are clamped, so one record
  from a broken clock cannot close every open window.

Stage 2 (``UpstreamProgress``). Stage 1 tells every list-outcomes partition, after the outcomes
it covers, how far each stage-1 partition has closed: "every list with ts <= T is emitted". An
outcome can be linked once all stage-1 partitions have passed its time, whatever their relative
speed; a stage-1 partition that never saw a record and has none waiting reports itself idle and
does not hold the others back.

Pure: the wall clock is passed in (``now_ms``), never read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RESTORED = "<restored>"
"""Pseudo input holding a partition's restored clock until its real inputs are read again."""


@dataclass(slots=True)
class _Input:
    event_ms: int | None  # largest (clamped) event time read; None: records waiting, none read
    seen_at_ms: int  # wall time of the last record (or of the last sign of a backlog)


@dataclass(slots=True)
class _Partition:
    inputs: dict[str, _Input] = field(default_factory=dict)
    floor: int | None = None  # the watermark never goes below what it already was


@dataclass(slots=True)
class Watermarks:
    idle_ms: int
    max_future_ms: int
    _parts: dict[int, _Partition] = field(default_factory=dict)

    def observe(self, partition: int, source: str, event_ms: int, now_ms: int) -> None:
        """A record with event time ``event_ms`` was read from input ``source`` of ``partition``."""
        event_ms = min(event_ms, now_ms + self.max_future_ms)
        part = self._part(partition)
        inp = part.inputs.get(source)
        if inp is None or inp.event_ms is None:
            part.inputs[source] = _Input(event_ms, now_ms)
            part.inputs.pop(RESTORED, None)  # real inputs take over from the restored clock
            return
        # Keep the idle advance already granted: a record with an older event time must not
        # move this input's clock back.
        inp.event_ms = max(self._current(inp, now_ms), event_ms)
        inp.seen_at_ms = now_ms

    def backlog(self, partition: int, source: str, now_ms: int) -> None:
        """Input ``source`` of ``partition`` has records waiting on the broker: it is not idle,
        and until one of them is read it holds the watermark back."""
        part = self._part(partition)
        inp = part.inputs.get(source)
        if inp is None:
            part.inputs[source] = _Input(None, now_ms)
        else:
            inp.seen_at_ms = now_ms

    def caught_up(self, partition: int, source: str) -> None:
        """Input ``source`` of ``partition`` has nothing left to read: if nothing was ever read
        from it, it stops holding the watermark (it has no clock to offer)."""
        part = self._parts.get(partition)
        if part is not None:
            inp = part.inputs.get(source)
            if inp is not None and inp.event_ms is None:
                del part.inputs[source]

    def seed(self, partition: int, event_ms: int, now_ms: int) -> None:
        """Start ``partition`` from restored state (the largest event time it holds); the
        restored clock advances when idle like an input, so restored windows close even if the
        partition never gets another record."""
        part = self._part(partition)
        if not part.inputs:
            part.inputs[RESTORED] = _Input(min(event_ms, now_ms + self.max_future_ms), now_ms)

    def get(self, partition: int, now_ms: int) -> int | None:
        """The watermark of ``partition`` (None until something was read from it)."""
        part = self._parts.get(partition)
        if part is None:
            return None
        clocks = [self._current(inp, now_ms) for inp in part.inputs.values() if inp.event_ms is not None]
        if clocks and all(inp.event_ms is not None for inp in part.inputs.values()):
            low = min(clocks)
            if part.floor is None or low > part.floor:
                part.floor = low
        return part.floor

    def last(self, partition: int) -> int | None:
        """The watermark as of the last ``get`` (cheap; for per-record checks within a batch)."""
        part = self._parts.get(partition)
        return None if part is None else part.floor

    def input_clock(self, partition: int, source: str) -> int | None:
        """The largest event time read from one input (None: nothing read yet)."""
        part = self._parts.get(partition)
        inp = None if part is None else part.inputs.get(source)
        return None if inp is None else inp.event_ms

    def partitions(self) -> list[int]:
        return list(self._parts)

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self._parts.pop(p, None)

    def _part(self, partition: int) -> _Partition:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Partition()
        return part

    def _current(self, inp: _Input, now_ms: int) -> int:
        assert inp.event_ms is not None
        idle = now_ms - inp.seen_at_ms
        return inp.event_ms + idle if idle >= self.idle_ms else inp.event_ms


@dataclass(slots=True)
class UpstreamProgress:
    """What stage 2 knows of stage 1: per list-outcomes partition, the latest "closed through"
    time announced by each of the ``upstream`` stage-1 partitions (None: idle, never saw data)."""

    upstream: int
    _marks: dict[int, dict[int, int | None]] = field(default_factory=dict)

    def announce(self, partition: int, upstream_partition: int, closed_through_ms: int | None) -> None:
        marks = self._marks.setdefault(partition, {})
        old = marks.get(upstream_partition)
        if closed_through_ms is None:
            if upstream_partition not in marks:
                marks[upstream_partition] = None
        elif old is None or closed_through_ms > old:
            marks[upstream_partition] = closed_through_ms

    def get(self, partition: int) -> int | None:
        """Every list with ts <= this time that any stage-1 partition will emit has arrived in
        ``partition`` (None: not known yet, some stage-1 partition has not announced itself)."""
        marks = self._marks.get(partition)
        if marks is None or len(marks) < self.upstream:
            return None
        times = [t for t in marks.values() if t is not None]
        return min(times) if times else None

    def partitions(self) -> list[int]:
        return list(self._marks)

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self._marks.pop(p, None)
