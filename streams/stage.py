"""The two stages: batches in, pure state step, durable outputs, acks. A stage sees the stream
processor only through ``streams.stage_io.StageIO`` (Faust in production: streams.faust_io;
in-memory fakes in the tests) and reads its input from a ``BatchSink``.

One step of a stage, always in this order (the at-least-once argument in docs/streams.md rests
on it):

1. decode the batch: valid records go to the pure state, the others become dead letters;
2. close what the watermarks allow (windows, sessions);
3. publish outputs and dead letters, then (in the stage's committer task, in step order) wait for
   the broker's acknowledgement;
4. only then write the changed state entries to the changelog and wait for the acknowledgement;
5. ack the input records, so Faust may commit their offsets.

A crash anywhere before 5 leaves the input uncommitted: it is replayed on restart against the
state of the last completed step 4 (or a newer one), which repeats outputs (same ids, so
downstream deduplicates) but never loses one. Step 3 before 4 matters: a closed list is
recorded as closed only after its outcome is durable.

Step 4 is coalesced over ``flush_interval_s`` (the commit interval), like Kafka Streams' record
caches: the state's changed entries accumulate across steps and are written once per interval,
each with its latest value, and an entry created and deleted within one interval is never
written. Steps without a flush make only their outputs durable (step 3) and keep their inputs
unacked; the next flush writes their changes too, and then their inputs are acked with its own.
So the argument above holds per flush, and a crash replays at most one interval more.

Steps 3-5 of a step overlap with the processing of the next steps (at most ``PIPELINE`` steps
ahead): the in-memory state runs ahead, durability and acks follow in step order. Changelog
records of flush n are handed to the producer before those of flush n+1 and aiokafka keeps one
batch in flight per partition, so the changelog keeps the order of the flushes.

Each stage runs in a single task, so its pure state has one writer; a lock keeps rebalances
from dropping state under a running step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from schemas import Click, Dwell, SchemaError
from streams.batching import BatchSink
from streams.decoding import ImpressionView, decode_feedback, decode_impression
from streams.join import RequestJoin
from streams.link import UserLinker
from streams.metrics import StreamMetrics
from streams.publisher import BatchPublisher, partition_for
from streams.records import (
    encode_dead_letter,
    encode_list_outcome,
    encode_transition,
    read_outcome,
)
from streams.stage_io import InputRecord, StageIO, StageState, TopicPartition
from streams.types import (
    STAGE_BAD_KEY,
    STAGE_DECODE,
    STAGE_LINK_DECODE,
    STAGE_TOO_LARGE,
    Rejected,
    Source,
)

PROGRESS_HEADER = "paperec-streams-progress"
"""Header of stage 1's progress announcements on the list-outcomes topic (see watermark.py)."""
PROGRESS_REFRESH_MS = 1_000
"""Announcements are repeated this often even when unchanged (stage 2 may have restarted)."""
YIELD_EVERY = 500
"""Records decoded and joined between two returns to the event loop within a step."""
PIPELINE = 16
"""Steps processed ahead of the one whose outputs and state are being made durable."""


@dataclass
class _Durable:
    """What remains to do for one step once its outputs are sent: wait for them, write the
    state changes, wait for those, ack the inputs."""

    outputs: list[asyncio.Future[Any]]
    changes: list[tuple[bytes, int, bytes | None]] | None  # None: not a flush step
    messages: list[InputRecord]
    now_ms: int


log = logging.getLogger(__name__)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _header(headers: Any, name: str) -> bytes | None:
    if isinstance(headers, dict):
        return headers.get(name)
    return next((v for k, v in headers if k == name), None)


def source_of(m: InputRecord) -> Source:
    return Source(m.topic, m.partition, m.offset, m.key)


class Stage(ABC):
    """Shared loop of the join and the link stage: ``run`` takes steps of at most ``max_batch``
    records from ``sink`` (waiting at most ``tick_s``), ``step`` applies one to the pure
    ``state`` and queues its outputs, the committer task makes them durable and acks."""

    name: str
    input_topics: list[str]

    def __init__(
        self,
        io: StageIO,
        metrics: StreamMetrics,
        dead_letter_topic: str,
        tick_s: float,
        max_batch: int,
        max_message_bytes: int,
        flush_interval_s: float = 0.0,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.io = io
        self.publisher = BatchPublisher(io.producer)  # outputs and dead letters
        self._changelog = BatchPublisher(io.producer)  # state changes, sent by the committer task
        self.metrics = metrics
        self.dead_letter_topic = dead_letter_topic
        self.tick_s = tick_s
        self.max_batch = max_batch
        self.max_message_bytes = max_message_bytes
        self.clock = clock
        self.flush_interval_ms = int(flush_interval_s * 1000)
        self._last_flush_ms: int | None = None
        # Up to four steps fetched ahead: the impressions partitions' fetches arrive in bursts, and
        # with two steps queued the join waited for input a fifth of the time.
        self.sink = BatchSink(max_queued=4 * max_batch)
        self.lock = asyncio.Lock()
        self.ready = False  # state loaded from the table (after recovery)
        self.steps = 0
        self.waited_input_s = 0.0  # in the loop, waiting for input records
        self.waited_durable_s = 0.0  # in the loop, waiting for earlier steps to become durable
        # input partition -> offset after the last record stepped
        self._processed: dict[TopicPartition, int] = {}
        self._durable: asyncio.Queue[_Durable] = asyncio.Queue(PIPELINE)
        self._committer: asyncio.Task[None] | None = None

    @property
    @abstractmethod
    def state(self) -> StageState: ...

    def prepare(self, now_ms: int) -> None:  # noqa: B027 - an optional hook
        """Hook run at the start of every step, with or without input."""

    @abstractmethod
    def consume(self, messages: list[InputRecord], now_ms: int) -> list[Rejected]:
        """Feed valid records to the pure state; return the rejected ones."""

    @abstractmethod
    async def emit(self, now_ms: int) -> list[Rejected]:
        """Close what is due and add the outputs to the publisher; return new rejects."""

    # ------------------------------------------------------------------------- the loop
    async def run(self) -> None:
        self._committer = asyncio.ensure_future(self._commit_loop())
        try:
            while True:
                t0 = time.perf_counter()
                batch = await self.sink.get(self.tick_s, self.max_batch)
                self.waited_input_s += time.perf_counter() - t0
                if self._committer.done():
                    self._committer.result()  # a delivery failed: raise it, the worker stops
                if not self.ready:
                    continue  # before recovery finished: Faust refetches from the committed offset
                async with self.lock:
                    await self.step(batch)
        finally:
            self._committer.cancel()

    async def step(self, messages: list[InputRecord]) -> None:
        now = self.clock()
        current = [m for m in messages if self.io.is_current(m)]
        self.prepare(now)
        processed = self._processed
        for m in current:
            if m.offset >= processed.get(m.tp, 0):
                processed[m.tp] = m.offset + 1
        rejects: list[Rejected] = []
        for i in range(0, len(current), YIELD_EVERY):
            rejects += self.consume(current[i : i + YIELD_EVERY], now)
            await asyncio.sleep(0)  # let heartbeats, commits and the fetcher run
        rejects += await self.emit(now)
        for r in rejects:
            self.metrics.count("dead_letters", r.stage)
            self.publisher.add(self.dead_letter_topic, 0, r.source.key, encode_dead_letter(r, now), now)
        outputs = await self.publisher.send()
        last = self._last_flush_ms
        changes = None
        if last is None or now - last >= self.flush_interval_ms:
            changes = self.take_changes(now)
        t0 = time.perf_counter()
        await self._durable.put(_Durable(outputs, changes, current, now))  # back-pressure
        self.waited_durable_s += time.perf_counter() - t0
        self.steps += 1
        self.metrics.count_all(self.state.counts)

    def take_changes(self, now_ms: int) -> list[tuple[bytes, int, bytes | None]]:
        """The state's changes since the last flush, as changelog records, for a flush at
        ``now_ms``; the table mirrors them (Faust recovers into it). A delete of an entry the
        table does not hold (created and deleted since the last flush, so never written) is
        dropped."""
        self._last_flush_ms = now_ms
        data = self.io.table
        out = []
        for change in self.state.take_changes():
            key, _, value = change
            if value is None:
                if data.pop(key, None) is None:
                    continue
            else:
                data[key] = value
            out.append(change)
        return out

    async def _commit_loop(self) -> None:
        changelog = self.io.changelog_topic
        unacked: list[InputRecord] = []  # inputs of steps whose changes wait for the next flush
        while True:
            d = await self._durable.get()
            try:
                await asyncio.gather(*d.outputs)  # outputs durable before the state says they happened
                unacked += d.messages
                if d.changes is None:
                    self._durable.task_done()
                    continue
                for key, partition, value in d.changes:
                    self._changelog.add(changelog, partition, key, value, d.now_ms)
                await self._changelog.flush()  # state durable before its inputs may be committed
            except Exception as exc:
                # Delivery failed after aiokafka's retries. The in-memory state is now ahead of
                # what is durable: stop the worker; a restart rebuilds it from the changelog and
                # replays the unacked input.
                log.exception("%s: could not make a step durable; stopping the worker", self.name)
                self._durable.task_done()
                await self.io.crash(exc)
                raise
            self.io.ack([m for m in unacked if self.io.is_current(m)])
            unacked = []
            self._durable.task_done()

    async def drain(self) -> None:
        """Flush the state's changes and wait until every processed step is durable and acked."""
        if self._committer is not None and not self._committer.done():
            now = self.clock()
            await self._durable.put(_Durable([], self.take_changes(now), [], now))
            await self._durable.join()

    def add_output(
        self,
        topic: str,
        partition: int,
        key: bytes,
        value: bytes,
        now: int,
        src: Source,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> bool:
        """Queue one output record; an over-size one becomes a dead letter instead (False)."""
        if len(value) > self.max_message_bytes:
            r = Rejected(
                src, value, STAGE_TOO_LARGE, f"{len(value)} bytes > {self.max_message_bytes} for {topic}"
            )
            self.metrics.count("dead_letters", r.stage)
            self.publisher.add(self.dead_letter_topic, 0, key, encode_dead_letter(r, now), now)
            return False
        self.publisher.add(topic, partition, key, value, now, headers)
        return True

    # ------------------------------------------------------------------------- rebalancing
    def assigned_partitions(self) -> set[int]:
        return {tp.partition for tp in self.io.assignment() if tp.topic in self.input_topics}

    async def on_recover(self) -> None:
        """After Faust restored the table from its changelog: rebuild the pure state from it."""
        async with self.lock:
            mine = self.assigned_partitions()
            entries = dict(self.io.table.items())
            self.state.load_state_dict(entries, self.clock(), mine)
            self.sink.clear()
            self.on_assigned()
            self.ready = True
            log.info("%s: state restored for partitions %s: %s", self.name, sorted(mine), self.state.sizes())

    def on_assigned(self) -> None:  # noqa: B027 - an optional hook
        """Hook: new assignment (Faust resumed every input partition)."""

    async def on_revoked(self, partitions: set[int]) -> None:
        async with self.lock:
            # Steps of revoked partitions reach the changelog before their next owner reads it.
            await self.drain()
            self.ready = False
            self._processed.clear()
            self.sink.clear()
            self.state.forget_partitions(partitions)

    def position(self, tp: TopicPartition) -> int:
        """The offset of the next input record of ``tp`` not processed yet."""
        return max(self._processed.get(tp, 0), self.io.committed(tp) or 0)

    def backlogged(self) -> list[TopicPartition]:
        """Assigned input partitions with records not processed yet (on the broker or fetched
        and queued here), or whose end is not known yet."""
        out = []
        for tp in self.io.assignment():
            if tp.topic not in self.input_topics:
                continue
            high = self.io.highwater(tp)
            position = self.position(tp)
            if high is None or high > position:
                out.append(tp)
        return out

    def sample(self) -> str:
        """Set the stage's gauges (lag per input partition, state sizes); a summary for logs."""
        lag_total = 0
        for tp in self.io.assignment():
            if tp.topic not in self.input_topics:
                continue
            high = self.io.highwater(tp)
            if high is not None:
                lag = max(0, high - self.position(tp))
                lag_total += lag
                self.metrics.gauge("lag", f"{tp.topic}:{tp.partition}", lag)
        sizes = self.state.sizes()
        for name, size in sizes.items():
            self.metrics.gauge(f"{self.name}_state", name, size)
        return (
            f"{self.name}: lag {lag_total}, state {sizes}, steps {self.steps}, waited for input "
            f"{self.waited_input_s:.1f} s, for durability {self.waited_durable_s:.1f} s"
        )


class JoinStage(Stage):
    """Stage 1: impressions, clicks, dwells keyed by request_id -> list outcomes keyed by user_id."""

    name = "join"

    def __init__(
        self,
        join: RequestJoin,
        impressions: str,
        clicks: str,
        dwells: str,
        outcomes: str,
        max_input_skew_ms: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.join = join
        self.max_input_skew_ms = max_input_skew_ms
        self.outcomes_topic = outcomes
        self.input_topics = [impressions, clicks, dwells]
        self._feedback: dict[str, type[Click] | type[Dwell]] = {clicks: Click, dwells: Dwell}
        self._backlog: set[tuple[int, str]] = set()
        self._announced: dict[int, tuple[int | None, int]] = {}
        self._paused: set[TopicPartition] = set()  # input partitions we paused (running ahead)

    @property
    def state(self) -> RequestJoin:
        return self.join

    def on_assigned(self) -> None:
        self._paused.clear()
        self._announced.clear()

    def prepare(self, now_ms: int) -> None:
        # Inputs with records still to process are not idle (and hold the watermark until read);
        # an input with nothing to read and nothing ever read does not hold it. A caught-up
        # input idles only on the broker's answers: while the broker does not answer, the end
        # offset we know is stale and "caught up" proves nothing (docs/streams.md, Watermarks).
        # A gap in the answers, backlogged or not, holds the partition's watermark for the
        # outage grace. A paused input is not fetched (None: its silence is no gap); a
        # backlogged one is not refetched while its fetched records wait to be processed, so
        # it hears the stage's latest answer for any input: silent only if the broker is.
        self._backlog = {(tp.partition, tp.topic) for tp in self.backlogged()}
        wms = self.join.watermarks
        inputs = [tp for tp in self.io.assignment() if tp.topic in self.input_topics]
        answers = {tp: None if tp in self._paused else self.io.last_fetch_ms(tp) for tp in inputs}
        latest = max((a for a in answers.values() if a is not None), default=None)
        for tp in inputs:
            if (tp.partition, tp.topic) in self._backlog:
                wms.backlog(tp.partition, tp.topic, now_ms, None if answers[tp] is None else latest)
            else:
                wms.caught_up(tp.partition, tp.topic, answers[tp], now_ms)
        self.balance_inputs()

    def consume(self, messages: list[InputRecord], now_ms: int) -> list[Rejected]:
        rejects: list[Rejected] = []
        join, feedback, impressions = self.join, self._feedback, self.input_topics[0]
        for topic, n in Counter(m.topic for m in messages).items():
            self.metrics.count("events_in", topic, n)
        for m in messages:
            topic = m.topic
            src = Source(topic, m.partition, m.offset, m.key)
            raw = m.value or b""
            try:
                if topic == impressions:
                    rec: ImpressionView | Click | Dwell = decode_impression(raw)
                else:
                    rec = decode_feedback(raw, feedback[topic])
            except SchemaError as exc:
                rejects.append(Rejected(src, raw, STAGE_DECODE, exc.reason, exc.field))
                continue
            if m.key != rec.request_id.encode():
                rejects.append(
                    Rejected(
                        src,
                        raw,
                        STAGE_BAD_KEY,
                        f"Kafka key {m.key!r} is not the request_id: records must be keyed by request_id",
                        "request_id",
                    )
                )
                continue
            if type(rec) is ImpressionView:
                rejects += join.add_impression(rec, raw, src, now_ms)
            else:
                r = join.add_feedback(rec, raw, src, now_ms)  # type: ignore[arg-type]
                if r is not None:
                    rejects.append(r)
        return rejects

    def balance_inputs(self) -> None:
        """Pause fetching an input partition that runs more than ``max_input_skew_ms`` ahead
        (in event time) of its partition's watermark; resume it once the others caught up
        halfway. Kafka fetches by bytes: catching up on a long backlog, the small click records
        would otherwise run far ahead of the impressions and all be held in memory."""
        ahead_ms = self.max_input_skew_ms
        wms = self.join.watermarks
        pause, resume = [], []
        for tp in self.io.assignment():
            if tp.topic not in self.input_topics:
                continue
            # not against a held watermark: an input paused during a hold would bring the
            # records buffered through an outage only after the hold
            clock, wm = wms.input_clock(tp.partition, tp.topic), wms.unheld(tp.partition)
            if clock is None or wm is None:
                continue
            if tp not in self._paused and clock - wm > ahead_ms:
                pause.append(tp)
            elif tp in self._paused and clock - wm <= ahead_ms // 2:
                resume.append(tp)
        if pause:
            self.io.pause(pause)
            self._paused.update(pause)
        if resume:
            self.io.resume(resume)
            self._paused.difference_update(resume)
            self.metrics.count("input_resumed", "", len(resume))

    async def emit(self, now_ms: int) -> list[Rejected]:
        closed, rejects = self.join.close_due(now_ms)
        n = await self.publisher.partitions(self.outcomes_topic)
        for c in closed:
            user = c.impression.user_id.encode()
            src = Source(self.input_topics[0], c.partition, -1, c.impression.request_id.encode())
            if self.add_output(
                self.outcomes_topic, partition_for(user, n), user, encode_list_outcome(c), now_ms, src
            ):
                self.metrics.count("list_outcomes", "complete" if c.complete else "incomplete")
                self.metrics.list_outcome(c)
        self.announce_progress(n, now_ms)
        return rejects

    def announce_progress(self, outcome_partitions: int, now_ms: int) -> None:
        """Tell every list-outcomes partition how far each of our partitions has closed; queued
        after this step's outcomes, so an announcement never overtakes an outcome it covers."""
        for p in self.assigned_partitions():
            through = self.join.closed_through(p, now_ms)
            if through is None and any(bp == p for bp, _ in self._backlog):
                continue  # records waiting: not idle, just not read yet
            last = self._announced.get(p)
            if last is not None:
                # at most once a tick when it moves, and once a refresh period when it does not
                wait = self.tick_s * 1000 if last[0] != through else PROGRESS_REFRESH_MS
                if now_ms - last[1] < wait:
                    continue
            self._announced[p] = (through, now_ms)
            value = orjson.dumps({"partition": p, "closed_through_ms": through})
            for q in range(outcome_partitions):
                self.publisher.add(self.outcomes_topic, q, None, value, now_ms, [(PROGRESS_HEADER, b"1")])


class LinkStage(Stage):
    """Stage 2: list outcomes keyed by user_id -> transitions keyed by user_id. It runs in a
    Faust app (and, under ``paperec streams``, a process) of its own: the list-outcomes topic,
    with stage 1's progress records, is all it shares with stage 1 (see streams.stage_process)."""

    name = "link"

    def __init__(self, linker: UserLinker, outcomes: str, transitions: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.linker = linker
        self.transitions_topic = transitions
        self.input_topics = [outcomes]

    @property
    def state(self) -> UserLinker:
        return self.linker

    def consume(self, messages: list[InputRecord], now_ms: int) -> list[Rejected]:
        rejects: list[Rejected] = []
        linker = self.linker
        for m in messages:
            raw = m.value or b""
            headers = m.headers
            src = source_of(m)
            if headers and _header(headers, PROGRESS_HEADER) is not None:
                try:
                    d = orjson.loads(raw)
                    linker.announce(m.partition, int(d["partition"]), d["closed_through_ms"])
                except (ValueError, KeyError, TypeError) as exc:
                    rejects.append(Rejected(src, raw, STAGE_LINK_DECODE, f"bad progress record: {exc!r}"))
                continue
            try:
                o = read_outcome(raw)
            except SchemaError as exc:
                rejects.append(Rejected(src, raw, STAGE_LINK_DECODE, exc.reason, exc.field))
                continue
            r = linker.add_outcome(o, src)
            if r is not None:
                rejects.append(r)
        return rejects

    async def emit(self, now_ms: int) -> list[Rejected]:
        links = self.linker.link_due()
        if not links:
            return []
        n = await self.publisher.partitions(self.transitions_topic)
        for link in links:
            _, raw, unknown = encode_transition(link.prev, link.next)
            user = link.prev.user_id.encode()
            src = Source(self.input_topics[0], link.partition, -1, user)
            if self.add_output(self.transitions_topic, partition_for(user, n), user, raw, now_ms, src):
                self.metrics.count("transitions", "done" if link.next is None else "next")
            if unknown:
                self.metrics.count("unknown_objectives", "", unknown)
        return []
