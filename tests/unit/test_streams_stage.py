"""The stage loop (streams.stage) with in-memory stand-ins for Faust and the producer: the
order of effects that the at-least-once argument rests on (outputs acknowledged, then the
changelog, then the input acks), pausing an input that runs ahead, and stage-1 progress
announcements reaching stage 2."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from streams import fixtures as fx
from streams.join import JoinConfig, RequestJoin
from streams.link import LinkConfig, UserLinker
from streams.metrics import StreamMetrics
from streams.stage import PROGRESS_HEADER, JoinStage, LinkStage

IMP, CLK, DWL, OUT, TRN, DLQ, CHG = (
    "p.impressions",
    "p.clicks",
    "p.dwells",
    "p.outcomes",
    "p.t",
    "p.dl",
    "p.chg",
)
T0 = 1_700_000_000_000


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    generation_id: int = 1

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


class Log:
    """Everything produced, in the order the broker acknowledged it, and the input acks."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    def append(
        self, *, timestamp: int | None, key: bytes | None, value: bytes | None, headers: Any
    ) -> object:
        self.records.append((key, value, list(headers)))
        return object()

    def size(self) -> int:
        return sum(len(v or b"") for _, v, _ in self.records)


class FakeProducer:
    def __init__(self, log: Log, hold: asyncio.Event) -> None:
        self.log, self.hold = log, hold
        self.deliveries: list[asyncio.Future[None]] = []

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def deliver() -> None:
            await self.hold.wait()  # the broker acknowledges when the test lets it
            for key, value, headers in batch.records:
                self.log.events.append(("produced", (topic, partition, key, value, headers)))
            if not fut.done():  # (cancelled when a test ends early)
                fut.set_result(None)

        self.deliveries.append(asyncio.ensure_future(deliver()))
        return fut


class FakeIO:
    """The stream processor as a stage sees it (streams.stage_io.StageIO), in memory."""

    generation = 1

    def __init__(self, log: Log, assignment: set[TP], producer: FakeProducer) -> None:
        self.log = log
        self._assignment = assignment
        self._producer = producer
        self.highwaters: dict[TP, int] = {}
        self.committed_offsets: dict[TP, int] = {}
        self.paused: set[TP] = set()
        self.table: dict[bytes, bytes] = {}
        self.changelog_topic = CHG
        self.crashed: list[BaseException] = []
        # when the fake broker last answered a fetch (make_join: always, at the stage's clock)
        self.answered_at: Callable[[], int | None] = lambda: None

    def assignment(self) -> set[TP]:
        return self._assignment

    def highwater(self, tp: TP) -> int | None:
        return self.highwaters.get(tp, 0)

    def last_fetch_ms(self, tp: TP) -> int | None:
        return self.answered_at()

    def committed(self, tp: TP) -> int | None:
        return self.committed_offsets.get(tp)

    def pause(self, tps: Sequence[TP]) -> None:
        self.paused.update(tps)

    def resume(self, tps: Sequence[TP]) -> None:
        self.paused.difference_update(tps)

    def is_current(self, m: Msg) -> bool:
        return m.generation_id == self.generation

    def ack(self, messages: Sequence[Msg]) -> None:
        for m in messages:
            self.log.events.append(("ack", (m.topic, m.partition, m.offset)))

    def producer(self) -> FakeProducer:
        return self._producer

    async def crash(self, exc: BaseException) -> None:
        self.crashed.append(exc)


@pytest.fixture
def env() -> Iterator[tuple[Log, asyncio.Event]]:
    yield Log(), asyncio.Event()


def make_join(
    log: Log, hold: asyncio.Event, now: list[int], skew_ms: int = 60_000, flush_interval_s: float = 0.0
) -> JoinStage:
    cfg = JoinConfig(
        window_ms=1_000, lateness_ms=200, closed_retention_ms=10_000, idle_ms=300, max_future_ms=60_000
    )
    tps = {TP(t, p) for t in (IMP, CLK, DWL) for p in (0, 1)}
    stage = JoinStage(
        RequestJoin(cfg),
        impressions=IMP,
        clicks=CLK,
        dwells=DWL,
        outcomes=OUT,
        max_input_skew_ms=skew_ms,
        io=FakeIO(log, tps, FakeProducer(log, hold)),
        metrics=StreamMetrics("test"),
        dead_letter_topic=DLQ,
        tick_s=0.01,
        max_batch=100,
        max_message_bytes=1 << 20,
        flush_interval_s=flush_interval_s,
        clock=lambda: now[0],
    )
    stage.ready = True
    cast_any(stage.io).answered_at = lambda: now[0]  # a live broker: inputs may idle
    return stage


def cast_any(x: object) -> Any:
    return x


async def idle_until(stage: JoinStage, now: list[int], until_ms: int) -> None:
    """The stage ticks with no input until ``until_ms``, its broker answering throughout (the
    watermarks count a longer silence between two answers as an outage, not as idle time)."""
    while now[0] < until_ms:
        now[0] = min(until_ms, now[0] + 1_000)
        await stage.step([])


def msg_of(*args: Any) -> Any:  # stands in for a faust Message
    return Msg(*args)


def msg(topic: str, offset: int, key: str, event: dict, partition: int = 0) -> Any:
    return Msg(topic, partition, offset, key.encode(), fx.dumps(event))


def test_outputs_are_acknowledged_before_the_changelog_and_inputs_are_acked_last(
    env: tuple[Log, asyncio.Event],
) -> None:
    log, hold = env

    async def scenario() -> None:
        now = [T0]
        stage = make_join(log, hold, now)
        committer = stage._committer = asyncio.ensure_future(stage._commit_loop())
        await stage.step(
            [
                msg(IMP, 0, "r1", fx.impression("r1", "u1", T0)),
                msg(CLK, 0, "r1", fx.click("r1", "u1", 1, T0 + 5)),
            ]
        )
        await idle_until(stage, now, T0 + 5_000)  # the partition idles: its watermark passes the window
        await asyncio.sleep(0.01)
        assert log.events == []  # nothing acknowledged yet: no acks either
        hold.set()
        await asyncio.wait_for(stage.drain(), 1)
        committer.cancel()
        kinds = [(kind, what[0] if kind == "produced" else "ack") for kind, what in log.events]
        first_changelog = kinds.index(("produced", CHG))
        first_ack = kinds.index(("ack", "ack"))
        assert kinds.index(("produced", OUT)) < first_changelog < first_ack
        closed = [
            what for kind, what in log.events if kind == "produced" and what[0] == CHG and what[2] == b"e:r1"
        ]
        assert b'"closed"' in (closed[-1][3] or b"")  # the closed marker comes after the outcome
        assert [what for kind, what in log.events if kind == "ack"] == [(IMP, 0, 0), (CLK, 0, 0)]
        assert stage.io.table[b"e:r1"] == closed[-1][3]  # the table mirrors the changelog

    asyncio.run(scenario())


def test_changelog_writes_are_coalesced_per_flush_interval_and_inputs_acked_with_their_flush(
    env: tuple[Log, asyncio.Event],
) -> None:
    log, hold = env
    hold.set()

    def changelog() -> list[tuple[bytes | None, bytes | None]]:
        return [(w[2], w[3]) for k, w in log.events if k == "produced" and w[0] == CHG]

    def acks() -> list[tuple[str, int, int]]:
        return [w for k, w in log.events if k == "ack"]

    async def scenario() -> None:
        now = [T0]
        stage = make_join(log, hold, now, flush_interval_s=1.0)
        committer = stage._committer = asyncio.ensure_future(stage._commit_loop())
        await stage.step([msg(IMP, 0, "r0", fx.impression("r0", "u0", T0))])  # the first step flushes
        await asyncio.sleep(0.01)
        # w:0 the partition's watermark, with the state it closed (a new owner restarts there)
        assert [k for k, _ in changelog()] == [b"e:r0", b"i:r0", b"w:0"] and acks() == [(IMP, 0, 0)]
        log.events.clear()

        # within one interval: r1 opens, gets a click and closes; r2 opens and gets two clicks
        now[0] = T0 + 100
        await stage.step(
            [
                msg(IMP, 1, "r1", fx.impression("r1", "u1", T0 + 100)),
                msg(IMP, 2, "r2", fx.impression("r2", "u2", T0 + 100)),
            ]
        )
        now[0] = T0 + 200
        await stage.step(
            [
                msg(CLK, 0, "r1", fx.click("r1", "u1", 0, T0 + 150)),
                msg(CLK, 1, "r2", fx.click("r2", "u2", 0, T0 + 150)),
            ]
        )
        await stage.step([msg(CLK, 2, "r2", fx.click("r2", "u2", 1, T0 + 160))])
        await asyncio.sleep(0.01)
        assert changelog() == [] and acks() == []  # outputs only; state and acks wait for the flush
        now[0] = T0 + 1_050  # the interval is over; no window closed yet
        await stage.step([])
        await asyncio.sleep(0.01)
        written = changelog()
        assert sorted(k for k, _ in written if k is not None) == [b"e:r1", b"e:r2", b"i:r1", b"i:r2", b"w:0"]
        # once per flush: the latest watermark, and the offsets after the last records applied
        progress = {"w": stage.join.watermarks.last(0), "o": {IMP: 3, CLK: 3}}
        assert orjson.loads(dict(written)[b"w:0"] or b"{}") == progress
        r2 = orjson.loads(dict(written)[b"e:r2"] or b"{}")
        assert sorted(pos for pos, _ in r2["c"]) == [0, 1]  # one write, with both clicks
        assert sorted(acks()) == sorted([(IMP, 0, 1), (IMP, 0, 2), (CLK, 0, 0), (CLK, 0, 1), (CLK, 0, 2)])
        log.events.clear()

        # r0 closes and its closed marker is written; a request opened and closed between two
        # flushes would write its closed marker only (no impression entry, so no delete of one)
        await idle_until(stage, now, T0 + 5_000)
        await asyncio.wait_for(stage.drain(), 1)
        keys = [k for k, _ in changelog()]
        assert keys.count(b"i:r0") == 1 and dict(changelog())[b"i:r0"] is None  # a delete: it was written
        committer.cancel()

    asyncio.run(scenario())


def test_a_delete_of_an_entry_never_written_is_dropped(env: tuple[Log, asyncio.Event]) -> None:
    log, hold = env
    hold.set()

    async def scenario() -> None:
        now = [T0]
        stage = make_join(log, hold, now, flush_interval_s=10.0)
        committer = stage._committer = asyncio.ensure_future(stage._commit_loop())
        await stage.step([])  # the first step flushes (nothing)
        await stage.step([msg(IMP, 0, "r1", fx.impression("r1", "u1", T0))])
        await idle_until(stage, now, T0 + 5_000)  # r1's window closes before the next flush
        await asyncio.wait_for(stage.drain(), 1)
        written = [(w[2], w[3]) for k, w in log.events if k == "produced" and w[0] == CHG]
        assert [k for k, _ in written] == [b"e:r1", b"w:0"] and b'"closed"' in (written[0][1] or b"")
        assert [w for k, w in log.events if k == "ack"] == [(IMP, 0, 0)]
        committer.cancel()

    asyncio.run(scenario())


def test_stale_generation_records_are_neither_processed_nor_acked(env: tuple[Log, asyncio.Event]) -> None:
    log, hold = env
    hold.set()

    async def scenario() -> None:
        stage = make_join(log, hold, [T0])
        committer = stage._committer = asyncio.ensure_future(stage._commit_loop())
        stale = msg(IMP, 0, "r1", fx.impression("r1", "u1", T0))
        stale.generation_id = 0
        await stage.step([stale])
        await asyncio.wait_for(stage.drain(), 1)
        committer.cancel()
        assert len(stage.join) == 0 and not [e for e in log.events if e[0] == "ack"]

    asyncio.run(scenario())


def test_an_input_running_ahead_is_paused_then_resumed(env: tuple[Log, asyncio.Event]) -> None:
    log, hold = env
    hold.set()

    async def scenario() -> None:
        now = [T0]
        stage = make_join(log, hold, now, skew_ms=2_000)
        io: Any = stage.io
        committer = stage._committer = asyncio.ensure_future(stage._commit_loop())
        for tp in io.assignment():
            io.highwaters[tp] = 100  # a backlog everywhere
        await stage.step(
            [msg(IMP, 0, "r1", fx.impression("r1", "u1", T0))]
            + [
                msg(t, 0, f"x{t}", fx.click(f"x{t}", "u", 0, T0 + 10_000))
                if t == CLK
                else msg(t, 0, f"x{t}", fx.dwell(f"x{t}", "u", 0, T0 + 10_000, 1))
                for t in (CLK, DWL)
            ]
        )
        await stage.step([])  # the watermark of partition 0 is T0 (impressions); clicks are 10 s ahead
        assert io.paused == {TP(CLK, 0), TP(DWL, 0)}
        await stage.step([msg(IMP, 1, "r2", fx.impression("r2", "u1", T0 + 8_000))])
        await stage.step([])
        assert io.paused == {TP(CLK, 0), TP(DWL, 0)}  # still 2 s ahead: over half the limit
        await stage.step([msg(IMP, 2, "r3", fx.impression("r3", "u1", T0 + 9_500))])
        await stage.step([])
        assert io.paused == set()  # caught up
        await asyncio.wait_for(stage.drain(), 1)
        committer.cancel()

    asyncio.run(scenario())


def test_progress_announcements_let_stage_2_link(env: tuple[Log, asyncio.Event]) -> None:
    log, hold = env
    hold.set()

    async def scenario() -> None:
        now = [T0]
        join = make_join(log, hold, now)
        committer = join._committer = asyncio.ensure_future(join._commit_loop())
        await join.step(
            [
                msg(IMP, 0, "a", fx.impression("a", "u1", T0)),
                msg(IMP, 0, "b", fx.impression("b", "u1", T0 + 100), partition=1),
            ]
        )
        await idle_until(join, now, T0 + 10_000)
        await asyncio.wait_for(join.drain(), 1)
        committer.cancel()
        outputs = [w for k, w in log.events if k == "produced" and w[0] == OUT]
        assert sum(1 for w in outputs if not w[4]) == 2  # two list outcomes ...
        assert any(w[4] == [(PROGRESS_HEADER, b"1")] for w in outputs)  # ... and announcements

        link = LinkStage(
            UserLinker(LinkConfig(session_gap_ms=60_000, retention_ms=60_000, upstream_partitions=2)),
            outcomes=OUT,
            transitions=TRN,
            io=FakeIO(log, {TP(OUT, 0), TP(OUT, 1)}, FakeProducer(log, hold)),
            metrics=StreamMetrics("test"),
            dead_letter_topic=DLQ,
            tick_s=0.01,
            max_batch=100,
            max_message_bytes=1 << 20,
            clock=lambda: now[0],
        )
        link.ready = True
        committer = link._committer = asyncio.ensure_future(link._commit_loop())
        await link.step(
            [
                msg_of(OUT, partition, offset, key, value or b"", headers)
                for offset, (_, partition, key, value, headers) in enumerate(outputs)
            ]
        )
        await asyncio.wait_for(link.drain(), 1)
        committer.cancel()
        transitions = [w for k, w in log.events if k == "produced" and w[0] == TRN]
        assert len(transitions) == 1 and b'"next_state":{"request_id":"b"' in (transitions[0][3] or b"")

    asyncio.run(scenario())


def test_a_failed_delivery_crashes_the_worker_and_acks_nothing(env: tuple[Log, asyncio.Event]) -> None:
    log, hold = env

    async def scenario() -> None:
        stage = make_join(log, hold, [T0])
        io: Any = stage.io
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(ConnectionError("broker gone"))

        async def send_batch(batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[None]:
            return failed

        io.producer().send_batch = send_batch
        committer = stage._committer = asyncio.ensure_future(stage._commit_loop())
        await stage.step([msg(IMP, 0, "r1", fx.impression("r1", "u1", T0))])
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(committer, 1)
        assert [type(e) for e in io.crashed] == [ConnectionError]
        assert [e for e in log.events if e[0] == "ack"] == []  # replayed after the restart

    asyncio.run(scenario())


def test_lag_counts_from_the_committed_offset_or_what_was_processed(env: tuple[Log, asyncio.Event]) -> None:
    log, hold = env
    hold.set()

    async def scenario() -> None:
        stage = make_join(log, hold, [T0])
        io: Any = stage.io
        committer = stage._committer = asyncio.ensure_future(stage._commit_loop())
        io.highwaters[TP(IMP, 0)] = 10
        io.committed_offsets[TP(IMP, 0)] = 4  # committed by an earlier run
        stage.sample()
        assert stage.metrics.gauges["lag", f"{IMP}:0"] == 6
        await stage.step([msg(IMP, o, f"r{o}", fx.impression(f"r{o}", "u1", T0)) for o in range(4, 8)])
        stage.sample()
        assert stage.metrics.gauges["lag", f"{IMP}:0"] == 2  # processed through offset 7
        assert TP(IMP, 0) in stage.backlogged()
        await asyncio.wait_for(stage.drain(), 1)
        committer.cancel()

    asyncio.run(scenario())
