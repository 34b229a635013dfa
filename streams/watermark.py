"""Event-time progress: stage-1 watermarks per partition, and stage 2's view of stage 1.

Stage 1 (``Watermarks``). The join of partition p reads three inputs (impressions, clicks and
dwells partition p). Each input's clock is the largest event time read from it. Kafka fetches
the three topics at different speeds (by bytes, not by event time), so while catching up on a
backlog one input can run seconds ahead of another; the partition's watermark is therefore the
*minimum* over its inputs (as in Flink or Kafka Streams), kept monotonic:

* an input that has records waiting on the broker but none read yet holds the watermark back
  (otherwise the first fetch of clicks would make the not-yet-fetched impressions "late");
* an input that has read everything there is advances by wall time only on the broker's word:
  ``caught_up`` passes the wall time of the latest successful fetch response for the input
  (``answered_ms``; aiokafka's ``last_poll_timestamp``, updated by empty responses too). An idle
  run starts at the first such answer after the input's last record (or backlog) and lasts
  while answers keep coming; once it is ``idle_ms`` long the input's clock advances by the run's
  length, measured up to the latest answer, never to the local wall clock, so quiet partitions
  still close windows;
* two answers more than ``answer_gap_ms`` apart (as the stage saw them) are a gap: the broker
  did not answer, or the stage could not tell. The run ends there, keeping the clock it had
  reached by the last answer before the gap, and restarts at the first answer after it. So a
  broker outage does not advance any input, and after it an input stays put for ``idle_ms``
  while the producers deliver what they buffered meanwhile (events of the outage, which must
  not find their windows closed), then moves on from where it stopped;
* event times more than ``max_future_ms`` ahead of the wall clock are clamped, so one record
  from a broken clock cannot close every open window.

Stage 2 (``UpstreamProgress``). Stage 1 tells every list-outcomes partition, after the outcomes
it covers, how far each stage-1 partition has closed: "every list with ts <= T is emitted". An
outcome can be linked once all stage-1 partitions have passed its time, whatever their relative
speed; a stage-1 partition that never saw a record and has none waiting reports itself idle and
does not hold the others back.

Pure: the wall clock (``now_ms``) and the broker's answers (``answered_ms``) are passed in,
never read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RESTORED = "<restored>"
"""Pseudo input holding a partition's restored clock until its real inputs are read again. It
idles on the answers to the partition's real inputs (it has no fetches of its own)."""

ANSWER_GAP_MS = 5_000
"""Default ``Watermarks.answer_gap_ms``. Faust's consumer long-polls for up to 1.5 s
(``fetch_max_wait_ms``), and an input whose records were just delivered is fetched again only
after the fetch in flight returns: on a live broker a caught-up input gets an answer at least
every ~3 s. Keep it below ``join_window_ms + join_lateness_ms``: an outage shorter than this is
not seen as one."""


@dataclass(slots=True)
class _Input:
    event_ms: int | None  # largest (clamped) event time read; None: records waiting, none read
    # The idle run: wall time of its first and of its latest broker answer (None: no run, the
    # input read records or had a backlog since the last answer).
    idle_from_ms: int | None = None
    answered_ms: int | None = None


@dataclass(slots=True)
class _Partition:
    inputs: dict[str, _Input] = field(default_factory=dict)
    floor: int | None = None  # the watermark never goes below what it already was


@dataclass(slots=True)
class Watermarks:
    idle_ms: int
    max_future_ms: int
    answer_gap_ms: int = ANSWER_GAP_MS
    _parts: dict[int, _Partition] = field(default_factory=dict)

    def observe(self, partition: int, source: str, event_ms: int, now_ms: int) -> None:
        """A record with event time ``event_ms`` was read from input ``source`` of ``partition``."""
        event_ms = min(event_ms, now_ms + self.max_future_ms)
        part = self._part(partition)
        inp = part.inputs.get(source)
        if inp is None or inp.event_ms is None:
            part.inputs[source] = _Input(event_ms)
            part.inputs.pop(RESTORED, None)  # real inputs take over from the restored clock
            return
        # Keep the idle advance already granted: a record with an older event time must not
        # move this input's clock back.
        inp.event_ms = max(self._current(inp), event_ms)
        inp.idle_from_ms = inp.answered_ms = None

    def backlog(self, partition: int, source: str, now_ms: int) -> None:
        """Input ``source`` of ``partition`` has records waiting on the broker: it is not idle,
        and until one of them is read it holds the watermark back."""
        part = self._part(partition)
        inp = part.inputs.get(source)
        if inp is None:
            part.inputs[source] = _Input(None)
        else:
            self._end_run(inp)

    def caught_up(self, partition: int, source: str, answered_ms: int | None) -> None:
        """Input ``source`` of ``partition`` has nothing left to read, as of the broker's latest
        successful answer to its fetches at wall time ``answered_ms`` (None: no answer yet). If
        nothing was ever read from it, it stops holding the watermark (it has no clock to
        offer); otherwise the answer extends its idle run (see the module docstring)."""
        part = self._parts.get(partition)
        if part is None:
            return
        inp = part.inputs.get(source)
        if inp is not None:
            if inp.event_ms is None:
                del part.inputs[source]
            else:
                self._answer(inp, answered_ms)
        restored = part.inputs.get(RESTORED)
        if restored is not None:
            self._answer(restored, answered_ms)  # the broker answers for this partition

    def seed(self, partition: int, event_ms: int, now_ms: int) -> None:
        """Start ``partition`` from restored state (the largest event time it holds); the
        restored clock advances when idle like an input (on the answers to the partition's
        inputs), so restored windows close even if the partition never gets another record."""
        part = self._part(partition)
        if not part.inputs:
            part.inputs[RESTORED] = _Input(min(event_ms, now_ms + self.max_future_ms))

    def get(self, partition: int, now_ms: int) -> int | None:
        """The watermark of ``partition`` (None until something was read from it)."""
        part = self._parts.get(partition)
        if part is None:
            return None
        clocks = [self._current(inp) for inp in part.inputs.values() if inp.event_ms is not None]
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

    def _answer(self, inp: _Input, answered_ms: int | None) -> None:
        """The broker answered ``inp``'s fetches at ``answered_ms`` with nothing new."""
        if answered_ms is None:
            self._end_run(inp)  # no answer yet: no evidence that the broker is there
        elif inp.idle_from_ms is None or inp.answered_ms is None:
            inp.idle_from_ms = inp.answered_ms = answered_ms
        elif answered_ms - inp.answered_ms > self.answer_gap_ms:
            # The broker did not answer in between (or we could not tell): the gap does not
            # count as idle time, the run restarts at this answer.
            self._end_run(inp)
            inp.idle_from_ms = inp.answered_ms = answered_ms
        elif answered_ms > inp.answered_ms:
            inp.answered_ms = answered_ms

    def _end_run(self, inp: _Input) -> None:
        """End ``inp``'s idle run, keeping the clock it reached (a clock never goes back)."""
        if inp.event_ms is not None:
            inp.event_ms = self._current(inp)
        inp.idle_from_ms = inp.answered_ms = None

    def _current(self, inp: _Input) -> int:
        assert inp.event_ms is not None
        if inp.idle_from_ms is None or inp.answered_ms is None:
            return inp.event_ms
        idle = inp.answered_ms - inp.idle_from_ms
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
