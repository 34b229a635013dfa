"""Stage 1: join an impression with its clicks and dwells, by request_id, in an event-time window.

Semantics (docs/streams.md has the full table):

* An impression at event time T opens the window [T, T + window). Feedback (click, dwell) whose
  event time is before T + window counts; later feedback is rejected as ``outside_window``.
* The window is emitted ("closed") once the watermark of its partition reaches
  T + window + lateness: the list outcome carries, per position, the click (0/1) and the summed
  dwell, zero for what never came (the default negative).
* Feedback for a request with no impression yet is held until a window opened by an impression
  at or before its event time would have closed (feedback time + window + lateness); if the
  impression has not arrived by then, the feedback is rejected as ``unknown_request``.
* Exact duplicates are ignored and counted: a second impression for a request, a second click on
  a position, the same dwell event (position, time, duration) twice. Distinct dwells on one
  position add up (capped at a day).
* A closed request is remembered for ``closed_retention_ms`` of event time: feedback for it is
  rejected as ``late``, a repeated impression ignored as a duplicate. An impression that arrives
  after its own window would have closed is ``late`` too.

The class is pure: time comes in as arguments (``now_ms``, the injectable wall clock), and output
is returned. Every state change marks its request dirty; ``take_changes`` returns the changelog
records (request_id -> encoded entry, or None to delete) for the Faust table.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from schemas import MAX_DWELL_MS, Click, Dwell, SchemaError, decode
from streams.decoding import ImpressionView, decode_impression
from streams.types import (
    STAGE_BAD_POSITION,
    STAGE_LATE,
    STAGE_MISMATCH,
    STAGE_OUTSIDE_WINDOW,
    STAGE_UNKNOWN_REQUEST,
    Rejected,
    Source,
)
from streams.watermark import OUTAGE_GRACE_MS, Watermarks

log = logging.getLogger(__name__)

Feedback = Click | Dwell

ENTRY = b"e:"  # changelog key prefix of a request's entry (open, held or closed)
IMPRESSION = b"i:"  # changelog key prefix of an open request's impression
# Changelog key prefix of a partition's progress (``w:<partition>``): its watermark and, per input,
# the offset after the last record applied, written with the state they produced. A new owner (a
# restart, or another worker after a rebalance) starts the partition's watermark from exactly
# there, and tells re-read feedback of a list closed meanwhile (below those offsets: counted in
# the outcome) from feedback that really came after the close (late). Seeding the watermark from
# the largest event time the state holds instead was wrong while catching up on a backlog: Kafka
# fetches by bytes, so held clicks and dwells run far ahead of the impressions, and the re-read
# impressions were all late; and the replayed feedback was dead-lettered as late (both found by
# benchmarks/scale.py join).
WATERMARK = b"w:"


@dataclass(frozen=True, slots=True)
class JoinConfig:
    window_ms: int
    lateness_ms: int
    closed_retention_ms: int
    idle_ms: int
    max_future_ms: int
    outage_grace_ms: int = OUTAGE_GRACE_MS  # watermarks held this long after a broker outage

    @classmethod
    def from_settings(cls, s: Any) -> JoinConfig:
        return cls(
            window_ms=s.join_window_ms,
            lateness_ms=s.join_lateness_ms,
            closed_retention_ms=s.join_closed_retention_ms,
            idle_ms=s.streams_idle_ms,
            max_future_ms=s.streams_max_future_ms,
            outage_grace_ms=s.streams_outage_grace_ms,
        )


class ClosedList(NamedTuple):
    """A closed window: what stage 1 emits as a schemas ListOutcome. (Tuples here and below:
    made once per record or request, they are the cheapest immutable objects to build.)"""

    partition: int
    impression: ImpressionView
    impression_raw: bytes  # as received (validated): embedded as is in the list outcome
    clicks: tuple[int, ...]
    dwell_ms: tuple[int, ...]
    complete: bool
    closed_at_ms: int


@dataclass(slots=True)
class _Open:
    partition: int
    impression: ImpressionView
    raw: bytes
    clicks: dict[int, int] = field(default_factory=dict)  # position -> click time
    dwell: dict[int, int] = field(default_factory=dict)  # position -> summed dwell ms
    dwell_seen: set[tuple[int, int, int]] = field(default_factory=set)  # (position, ts, dwell) seen


class _HeldOne(NamedTuple):
    feedback: Feedback
    raw: bytes
    source: Source


@dataclass(slots=True)
class _Held:
    partition: int
    items: list[_HeldOne] = field(default_factory=list)
    keys: set[tuple[Any, ...]] = field(default_factory=set)  # _feedback_key of the items


class _Closed(NamedTuple):
    partition: int
    expires_ms: int


def _feedback_key(fb: Feedback) -> tuple[Any, ...]:
    if type(fb) is Dwell:
        return ("dwell", fb.position, fb.ts_ms, fb.dwell_ms)
    return ("click", fb.position)


class RequestJoin:
    """The stage-1 join state of the partitions one worker owns."""

    def __init__(self, config: JoinConfig) -> None:
        self.config = config
        self.watermarks = Watermarks(
            config.idle_ms, config.max_future_ms, outage_grace_ms=config.outage_grace_ms
        )
        self._open: dict[str, _Open] = {}
        self._held: dict[str, _Held] = {}
        self._closed: dict[str, _Closed] = {}
        # Per partition min-heaps of (due event time, request_id); entries are checked against
        # the current state when popped (lazy deletion), so stale ones are harmless.
        self._due: dict[int, list[tuple[int, str]]] = {}
        self._dirty: dict[str, int] = {}  # request_id -> partition, changed since take_changes
        self._dirty_imp: dict[str, int] = {}  # request_id -> partition, impression written/deleted
        self._taken_progress: dict[int, dict[str, Any]] = {}  # partition -> progress last taken
        self._next_offset: dict[tuple[int, str], int] = {}  # (partition, topic) -> after the last applied
        self._replay_below: dict[tuple[int, str], int] = {}  # restored: records below were applied
        self.counts: Counter[tuple[str, str]] = Counter()

    # ------------------------------------------------------------------------------- input
    def add_impression(self, imp: ImpressionView, raw: bytes, src: Source, now_ms: int) -> list[Rejected]:
        cfg = self.config
        p = src.partition
        self._note(src)
        self.watermarks.observe(p, src.topic, imp.ts_ms, now_ms)
        rid = imp.request_id
        if rid in self._open or rid in self._closed:
            self.counts["duplicates", "impression"] += 1
            return []
        deadline = imp.ts_ms + cfg.window_ms + cfg.lateness_ms
        wm = self.watermarks.last(p)  # as of the last close_due: cheap, and never ahead
        if wm is not None and deadline <= wm:
            rejects = [
                Rejected(src, raw, STAGE_LATE, f"impression window closed at watermark {deadline} < {wm}")
            ]
            held = self._held.pop(rid, None)
            if held is not None:
                self._dirty[rid] = p
                rejects += [
                    Rejected(h.source, h.raw, STAGE_LATE, f"its impression {rid!r} arrived after its window")
                    for h in held.items
                ]
            return rejects
        entry = _Open(p, imp, raw)
        self._open[rid] = entry
        self._dirty[rid] = self._dirty_imp[rid] = p
        self._push(p, deadline, rid)
        rejects = []
        held = self._held.pop(rid, None)
        if held is not None:
            for h in held.items:
                reject = self._apply(entry, h.feedback, h.raw, h.source)
                if reject is not None:
                    rejects.append(reject)
        return rejects

    def add_feedback(self, fb: Feedback, raw: bytes, src: Source, now_ms: int) -> Rejected | None:
        cfg = self.config
        p = src.partition
        self._note(src)
        self.watermarks.observe(p, src.topic, fb.ts_ms, now_ms)
        rid = fb.request_id
        entry = self._open.get(rid)
        if entry is not None:
            return self._apply(entry, fb, raw, src)
        if rid in self._closed:
            if src.offset < self._replay_below.get((p, src.topic), 0):
                # read again after a restart or rebalance: the closed list's outcome counted it
                self.counts["replayed", fb.TYPE or ""] += 1
                return None
            return Rejected(src, raw, STAGE_LATE, f"window of request {rid!r} already closed")
        expires = fb.ts_ms + cfg.window_ms + cfg.lateness_ms
        wm = self.watermarks.last(p)
        if wm is not None and expires <= wm:
            return Rejected(src, raw, STAGE_UNKNOWN_REQUEST, f"no impression for request {rid!r}")
        held = self._held.get(rid)
        if held is None:
            held = self._held[rid] = _Held(p)
        key = _feedback_key(fb)
        if key in held.keys:
            self.counts["duplicates", fb.TYPE or ""] += 1
            return None
        held.keys.add(key)
        held.items.append(_HeldOne(fb, raw, src))
        self._dirty[rid] = p
        self._push(p, expires, rid)
        return None

    def _apply(self, entry: _Open, fb: Feedback, raw: bytes, src: Source) -> Rejected | None:
        imp = entry.impression
        end = imp.ts_ms + self.config.window_ms
        if fb.ts_ms >= end:
            return Rejected(
                src, raw, STAGE_OUTSIDE_WINDOW, f"event time {fb.ts_ms} >= window end {end}", "ts_ms"
            )
        pos = fb.position
        item_ids = imp.item_ids
        if pos >= len(item_ids):
            return Rejected(
                src,
                raw,
                STAGE_BAD_POSITION,
                f"position {pos} but the list has {len(item_ids)} items",
                "position",
            )
        if fb.user_id != imp.user_id:
            return Rejected(
                src, raw, STAGE_MISMATCH, f"user_id {fb.user_id!r} != impression's {imp.user_id!r}", "user_id"
            )
        if fb.item_id != item_ids[pos]:
            return Rejected(
                src,
                raw,
                STAGE_MISMATCH,
                f"item_id {fb.item_id!r} != {item_ids[pos]!r} at position {pos}",
                "item_id",
            )
        if type(fb) is Dwell:
            key = (pos, fb.ts_ms, fb.dwell_ms)
            if key in entry.dwell_seen:
                self.counts["duplicates", "dwell"] += 1
                return None
            entry.dwell_seen.add(key)
            entry.dwell[pos] = min(MAX_DWELL_MS, entry.dwell.get(pos, 0) + fb.dwell_ms)
        else:
            if pos in entry.clicks:
                self.counts["duplicates", "click"] += 1
                return None
            entry.clicks[pos] = fb.ts_ms
        self._dirty[imp.request_id] = entry.partition
        return None

    def closed_through(self, partition: int, now_ms: int) -> int | None:
        """Every list of ``partition`` with ts <= this time has been closed (None: no
        watermark yet). Stage 2 links outcomes up to the minimum of this over all partitions."""
        wm = self.watermarks.get(partition)
        return None if wm is None else wm - self.config.window_ms - self.config.lateness_ms

    # ------------------------------------------------------------------------------- closing
    def close_due(self, now_ms: int) -> tuple[list[ClosedList], list[Rejected]]:
        """Close every window and expire every held feedback and closed marker whose time has
        come by its partition's watermark. Returns the closed lists and the rejects."""
        closed: list[ClosedList] = []
        rejects: list[Rejected] = []
        retention = self.config.closed_retention_ms
        for p, heap in self._due.items():
            wm = self.watermarks.get(p)
            if wm is None:
                continue
            while heap and heap[0][0] <= wm:
                due, rid = heapq.heappop(heap)
                entry = self._open.get(rid)
                if entry is not None:
                    if self._deadline(entry) != due:
                        continue  # a stale heap entry
                    del self._open[rid]
                    closed.append(self._result(entry, now_ms))
                    self._closed[rid] = _Closed(p, wm + retention)
                    heapq.heappush(heap, (wm + retention, rid))
                    self._dirty[rid] = self._dirty_imp[rid] = p
                    continue
                held = self._held.get(rid)
                if held is not None:
                    rejects += self._expire_held(rid, held, wm)
                    continue
                mark = self._closed.get(rid)
                if mark is not None and mark.expires_ms <= wm:
                    del self._closed[rid]
                    self._dirty[rid] = p
        return closed, rejects

    def _expire_held(self, rid: str, held: _Held, wm: int) -> list[Rejected]:
        hold_ms = self.config.window_ms + self.config.lateness_ms
        keep, rejects = [], []
        for h in held.items:
            if h.feedback.ts_ms + hold_ms <= wm:
                rejects.append(
                    Rejected(h.source, h.raw, STAGE_UNKNOWN_REQUEST, f"no impression for request {rid!r}")
                )
            else:
                keep.append(h)
        if rejects:
            self._dirty[rid] = held.partition
            if keep:
                held.items = keep
                held.keys = {_feedback_key(h.feedback) for h in keep}
            else:
                del self._held[rid]
        return rejects

    def _result(self, entry: _Open, now_ms: int) -> ClosedList:
        n = entry.impression.n_items
        clicks = [0] * n
        for pos in entry.clicks:
            clicks[pos] = 1
        dwell = [0] * n
        for pos, ms in entry.dwell.items():
            dwell[pos] = ms
        # "complete": every clicked item also reported its dwell before the window closed.
        complete = all(pos in entry.dwell for pos in entry.clicks)
        return ClosedList(
            entry.partition, entry.impression, entry.raw, tuple(clicks), tuple(dwell), complete, now_ms
        )

    def _deadline(self, entry: _Open) -> int:
        return entry.impression.ts_ms + self.config.window_ms + self.config.lateness_ms

    def _push(self, partition: int, due: int, rid: str) -> None:
        heap = self._due.get(partition)
        if heap is None:
            heap = self._due[partition] = []
        heapq.heappush(heap, (due, rid))

    # ------------------------------------------------------------------------------- state
    def __len__(self) -> int:
        return len(self._open) + len(self._held) + len(self._closed)

    def sizes(self) -> dict[str, int]:
        return {"open": len(self._open), "held": len(self._held), "closed": len(self._closed)}

    def take_changes(self) -> list[tuple[bytes, int, bytes | None]]:
        """(changelog key, partition, value or None for a delete) of everything changed since the
        last call; the caller writes them to the changelog. A request has an entry under
        ``e:<request_id>``; an open one also its impression, as received, under
        ``i:<request_id>``, written once: feedback updates rewrite only the small entry. A
        partition's watermark, when it moved, under ``w:<partition>`` (see :data:`WATERMARK`)."""
        out = [(ENTRY + rid.encode(), p, self._encoded(rid)) for rid, p in self._dirty.items()]
        for rid, p in self._dirty_imp.items():
            entry = self._open.get(rid)
            out.append((IMPRESSION + rid.encode(), p, None if entry is None else entry.raw))
        for p, progress in self._progress_now().items():
            if self._taken_progress.get(p) != progress:
                self._taken_progress[p] = progress
                out.append((_watermark_key(p), p, orjson.dumps(progress)))
        self._dirty.clear()
        self._dirty_imp.clear()
        return out

    def _note(self, src: Source) -> None:
        """Remember the offset after the last record applied, per input partition (written with
        the state, see :data:`WATERMARK`)."""
        tp = (src.partition, src.topic)
        if src.offset >= self._next_offset.get(tp, 0):
            self._next_offset[tp] = src.offset + 1

    def _progress_now(self) -> dict[int, dict[str, Any]]:
        """Per partition: its watermark as of the last ``get`` (what closed the state's lists;
        None: none yet) and per input topic the offset after the last record applied."""
        out: dict[int, dict[str, Any]] = {}
        for p in self.watermarks.partitions():
            wm = self.watermarks.last(p)
            if wm is not None:
                out[p] = {"w": wm, "o": {}}
        for (p, topic), offset in self._next_offset.items():
            out.setdefault(p, {"w": None, "o": {}})["o"][topic] = offset
        return out

    def _encoded(self, rid: str) -> bytes | None:
        entry = self._open.get(rid)
        if entry is not None:
            return orjson.dumps(
                {
                    "s": "open",
                    "p": entry.partition,
                    "c": list(entry.clicks.items()),
                    "d": list(entry.dwell.items()),
                    "ds": list(entry.dwell_seen),
                }
            )
        held = self._held.get(rid)
        if held is not None:
            return orjson.dumps(
                {
                    "s": "held",
                    "p": held.partition,
                    "fb": [
                        {
                            "t": h.source.topic,
                            "o": h.source.offset,
                            "k": _text(h.source.key),
                            "r": orjson.Fragment(h.raw),
                        }
                        for h in held.items
                    ],
                }
            )
        mark = self._closed.get(rid)
        if mark is not None:
            return orjson.dumps({"s": "closed", "p": mark.partition, "x": mark.expires_ms})
        return None  # deleted

    def state_dict(self) -> dict[bytes, bytes]:
        """The whole state in its changelog form (changelog key -> value)."""
        out = {}
        for rid in (*self._open, *self._held, *self._closed):
            value = self._encoded(rid)
            assert value is not None
            out[ENTRY + rid.encode()] = value
        for rid, entry in self._open.items():
            out[IMPRESSION + rid.encode()] = entry.raw
        for p, progress in self._progress_now().items():
            out[_watermark_key(p)] = orjson.dumps(progress)
        return out

    def load_state_dict(
        self, entries: dict[bytes, bytes], now_ms: int, partitions: set[int] | None = None
    ) -> None:
        """Replace the state by ``entries`` (as written by ``take_changes``), e.g. after recovery,
        keeping only the given partitions (None: all). A partition's watermark restarts from the
        one written with its state (``w:<partition>``), and feedback of a closed list below the
        offsets written with it is a replay, not late; a changelog written before that key
        existed gives a lower bound instead: the latest close of its closed markers, else its
        oldest open impression's event time (never the held feedback's, which runs ahead in a
        backlog)."""
        old = self.watermarks
        self.__init__(self.config)  # type: ignore[misc]
        self.watermarks.inherit(old)  # an outage that revoked the partitions still holds them
        impressions = {k[len(IMPRESSION) :]: v for k, v in entries.items() if k.startswith(IMPRESSION)}
        progress: dict[int, dict[str, Any]] = {}
        closes: dict[int, int] = {}
        opens: dict[int, int] = {}
        for key, value in entries.items():
            if key.startswith(WATERMARK):
                try:
                    wp, d = int(key[len(WATERMARK) :]), orjson.loads(value)
                    wm = None if d["w"] is None else int(d["w"])
                    offsets = {str(topic): int(o) for topic, o in d["o"].items()}
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    log.error("dropping unreadable join progress %r: %s", key, exc)
                    continue
                if partitions is None or wp in partitions:
                    progress[wp] = {"w": wm, "o": offsets}
                continue
            if not key.startswith(ENTRY):
                continue
            rid = key[len(ENTRY) :].decode()
            try:
                d = orjson.loads(value)
                if partitions is not None and d["p"] not in partitions:
                    continue
                p, kind, ts = self._load_entry(rid, d, impressions.get(key[len(ENTRY) :]))
            except (SchemaError, ValueError, KeyError, TypeError) as exc:
                log.error("dropping unreadable join state for request %r: %s", rid, exc)
                continue
            if kind == "closed":
                closes[p] = max(ts, closes.get(p, ts))
            elif kind == "open":
                opens[p] = min(ts, opens.get(p, ts))
        written = {p: d["w"] for p, d in progress.items() if d["w"] is not None}
        for p, ts in {**opens, **closes, **written}.items():
            self.watermarks.seed(p, ts, now_ms)
            self.watermarks.get(p)  # the floor: where the partition restarts, never below
        self._taken_progress = progress
        self._next_offset = {(p, topic): o for p, d in progress.items() for topic, o in d["o"].items()}
        self._replay_below = dict(self._next_offset)

    def _load_entry(self, rid: str, d: dict[str, Any], imp_raw: bytes | None) -> tuple[int, str, int]:
        """Restore one entry; (its partition, its kind, its event time: the impression's, the
        latest held feedback's, or when a closed one closed)."""
        cfg = self.config
        p = int(d["p"])
        if d["s"] == "open":
            if imp_raw is None:
                raise KeyError("its impression is missing")
            imp = decode_impression(imp_raw)
            entry = _Open(p, imp, imp_raw, dict(d["c"]), dict(d["d"]), {tuple(x) for x in d["ds"]})
            self._open[rid] = entry
            self._push(p, self._deadline(entry), rid)
            return p, "open", imp.ts_ms
        if d["s"] == "held":
            held = _Held(p)
            for h in d["fb"]:
                raw = orjson.dumps(h["r"])
                fb = decode(raw)
                if not isinstance(fb, Click | Dwell):
                    raise SchemaError("type", "held feedback is not a click or dwell")
                key = None if h["k"] is None else h["k"].encode()
                held.items.append(_HeldOne(fb, raw, Source(h["t"], p, h["o"], key)))
                held.keys.add(_feedback_key(fb))
                self._push(p, fb.ts_ms + cfg.window_ms + cfg.lateness_ms, rid)
            self._held[rid] = held
            return p, "held", max(h.feedback.ts_ms for h in held.items)
        if d["s"] == "closed":
            mark = _Closed(p, int(d["x"]))
            self._closed[rid] = mark
            self._push(p, mark.expires_ms, rid)
            return p, "closed", mark.expires_ms - cfg.closed_retention_ms
        raise ValueError(f"unknown entry kind {d['s']!r}")

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop the state of partitions this worker no longer owns (no changelog writes)."""
        for table in (self._open, self._held, self._closed):
            for rid in [rid for rid, e in table.items() if e.partition in partitions]:
                del table[rid]
        for p in partitions:
            self._due.pop(p, None)
            self._taken_progress.pop(p, None)
        for positions in (self._next_offset, self._replay_below):
            for tp in [tp for tp in positions if tp[0] in partitions]:
                del positions[tp]
        self.watermarks.forget(partitions)


def _watermark_key(partition: int) -> bytes:
    return WATERMARK + str(partition).encode()


def _text(key: bytes | None) -> str | None:
    return None if key is None else key.decode("utf-8", "replace")
