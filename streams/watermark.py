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
* a gap in the answers to any input of a partition, backlogged or not (``backlog`` and
  ``caught_up`` both take the latest answer), also *holds* the partition's watermark where it
  was until the broker has answered ``outage_grace_ms`` after the first answer after the gap:
  records read meanwhile move their inputs' clocks but close nothing. Why: the producers
  (serving nodes, clients) buffered events through the outage and deliver them after it, each
  on its own reconnect and flush, so one input's records arrive out of event-time order by up to the
  outage's length (one node's buffer after another's), and feedback can come seconds after the
  broker is back. The hold is bounded (a producer that never comes back cannot stall the join;
  one that delivers later than the grace can be late), and a new gap during it extends it;
* event times more than ``max_future_ms`` ahead of the wall clock are clamped, so one record
  from a broken clock cannot close every open window.

Principle: event-time progress must not outrun what the producers could have delivered.

Stage 2 (``UpstreamProgress``). Stage 1 tells every list-outcomes partition, after the outcomes
it covers, how far each stage-1 partition has closed: "every list with ts <= T is emitted". An
outcome can be linked once all stage-1 partitions have passed its time, whatever their relative
speed; a stage-1 partition that never saw a record and has none waiting reports itself idle and
does not hold the others back.

Pure: the wall clock (``now_ms``) and the broker's answers (``answered_ms``) are passed in,
never read here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

RESTORED = "<restored>"
"""Pseudo input holding a partition's restored clock until its real inputs are read again. It
idles on the answers to the partition's real inputs (it has no fetches of its own)."""

ANSWER_GAP_MS = 5_000
"""Default ``Watermarks.answer_gap_ms``. Faust's consumer long-polls for up to 1.5 s
(``fetch_max_wait_ms``), and an input whose records were just delivered is fetched again only
after the fetch in flight returns: on a live broker a caught-up input gets an answer at least
every ~3 s. Keep it below ``join_window_ms + join_lateness_ms``: an outage shorter than this is
not seen as one."""

OUTAGE_GRACE_MS = 30_000
"""Default ``Watermarks.outage_grace_ms`` (setting ``streams_outage_grace_ms``)."""


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
    # After an outage the floor stays put until the broker answered at or after this time.
    hold_until_ms: int | None = None
    # Per input, read or not, backlogged or not: the latest broker answer the stage saw, or the
    # wall time it started listening (absent: not listening, e.g. paused). Gaps start a hold.
    heard: dict[str, int] = field(default_factory=dict)
    answered_ms: int | None = None  # the latest answer heard for any input


@dataclass(slots=True)
class Watermarks:
    idle_ms: int
    max_future_ms: int
    answer_gap_ms: int = ANSWER_GAP_MS
    outage_grace_ms: int = OUTAGE_GRACE_MS
    _parts: dict[int, _Partition] = field(default_factory=dict)
    # What forgotten partitions heard of the broker (heard, latest answer, hold): an outage
    # often revokes partitions (the group coordinator is gone too), and its gap must still hold
    # them when they come back, here or in the stage's next state (``inherit``).
    _hearing: dict[int, tuple[dict[str, int], int | None, int | None]] = field(default_factory=dict)

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

    def backlog(self, partition: int, source: str, now_ms: int, answered_ms: int | None = None) -> None:
        """Input ``source`` of ``partition`` has records waiting on the broker: it is not idle,
        and until one of them is read it holds the watermark back. ``answered_ms``: the latest
        answer of the broker the stage saw for it (None: none, or not fetched), for the hold."""
        part = self._part(partition)
        inp = part.inputs.get(source)
        if inp is None:
            part.inputs[source] = _Input(None)
        else:
            self._end_run(inp)
        self._hear(partition, part, source, answered_ms, now_ms)

    def caught_up(
        self, partition: int, source: str, answered_ms: int | None, now_ms: int | None = None
    ) -> None:
        """Input ``source`` of ``partition`` has nothing left to read, as of the broker's latest
        successful answer to its fetches at wall time ``answered_ms`` (None: no answer yet, or
        not fetched). If nothing was ever read from it, it stops holding the watermark (it has
        no clock to offer); otherwise the answer extends its idle run (see the module
        docstring). A gap before the answer holds the partition's watermark. ``now_ms``: the
        stage's wall time (default ``answered_ms``)."""
        part = self._part(partition)  # even with nothing read: the hold's gaps
        self._hear(partition, part, source, answered_ms, answered_ms if now_ms is None else now_ms)
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

    def get(self, partition: int) -> int | None:
        """The watermark of ``partition`` (None until something was read from it)."""
        part = self._parts.get(partition)
        if part is None:
            return None
        if part.hold_until_ms is not None:
            if part.answered_ms is None or part.answered_ms < part.hold_until_ms:
                return part.floor  # after an outage: the producers are still delivering
            part.hold_until_ms = None
            log.info("partition %d: watermark hold after a broker outage ended", partition)
        clocks = [self._current(inp) for inp in part.inputs.values() if inp.event_ms is not None]
        if clocks and all(inp.event_ms is not None for inp in part.inputs.values()):
            low = min(clocks)
            if part.floor is None or low > part.floor:
                part.floor = low
        return part.floor

    def held(self, partition: int) -> bool:
        """Whether ``partition``'s watermark is held after an outage (as of the last ``get``)."""
        part = self._parts.get(partition)
        return part is not None and part.hold_until_ms is not None

    def unheld(self, partition: int) -> int | None:
        """The watermark of ``partition`` as it would be without a hold (``last`` when there is
        none). For pacing the inputs against each other: paced against a held watermark, an
        input would be paused during the hold and deliver its outage records only after it."""
        part = self._parts.get(partition)
        if part is None:
            return None
        inputs = part.inputs.values()
        if part.hold_until_ms is None or not inputs or any(inp.event_ms is None for inp in inputs):
            return part.floor
        low = min(self._current(inp) for inp in inputs)
        return low if part.floor is None else max(low, part.floor)

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
            part = self._parts.pop(p, None)
            if part is not None:
                self._hearing[p] = (part.heard, part.answered_ms, part.hold_until_ms)

    def inherit(self, old: Watermarks) -> None:
        """Take over what ``old`` heard of the broker, per partition (on a state reload)."""
        self._hearing.update(old._hearing)
        for p, part in old._parts.items():
            self._hearing[p] = (part.heard, part.answered_ms, part.hold_until_ms)

    def _part(self, partition: int) -> _Partition:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Partition()
            hearing = self._hearing.pop(partition, None)
            if hearing is not None:
                part.heard, part.answered_ms, part.hold_until_ms = hearing
        return part

    def _hear(
        self, partition: int, part: _Partition, source: str, answered_ms: int | None, now_ms: int | None
    ) -> None:
        """The broker's latest answer to ``source`` is ``answered_ms``: after a gap, hold ``part``."""
        if answered_ms is None:
            part.heard.pop(source, None)  # not listening: the next answer starts afresh, no gap
            return
        if part.answered_ms is None or answered_ms > part.answered_ms:
            part.answered_ms = answered_ms
        heard = part.heard.get(source)
        if heard is None:
            # Listening from now: an answer older than now (a stamp from before a pause) must
            # not make the next one look like the end of a gap.
            part.heard[source] = answered_ms if now_ms is None else max(answered_ms, now_ms)
        elif answered_ms - heard > self.answer_gap_ms:
            until = answered_ms + self.outage_grace_ms
            if self.outage_grace_ms > 0 and (part.hold_until_ms is None or until > part.hold_until_ms):
                if part.hold_until_ms is None:
                    log.info(
                        "partition %d: no broker answer for %d ms, watermark held at %s for %d ms",
                        partition,
                        answered_ms - heard,
                        part.floor,
                        self.outage_grace_ms,
                    )
                part.hold_until_ms = until
            part.heard[source] = answered_ms
        elif answered_ms > heard:
            part.heard[source] = answered_ms

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
