"""Stage 1 (streams.join.RequestJoin) without Kafka: windows, lateness, duplicates, held feedback,
rejects, and the changelog round trip. Time is injected: ``now`` is the wall clock of each call."""

from __future__ import annotations

import orjson
import pytest

from schemas import Click, Dwell, decode
from streams import fixtures as fx
from streams.decoding import decode_impression
from streams.join import JoinConfig, RequestJoin
from streams.types import (
    STAGE_BAD_POSITION,
    STAGE_LATE,
    STAGE_MISMATCH,
    STAGE_OUTSIDE_WINDOW,
    STAGE_UNKNOWN_REQUEST,
    Source,
)

W, L = 1_000, 200  # window, lateness
T0 = 1_700_000_000_000
IMP, CLK, DWL = "t.impressions", "t.clicks", "t.dwells"
TICK = 1_000  # Feed's stage ticks this often while idle: well within the answer gap


def config(**kw: int) -> JoinConfig:
    base = {
        "window_ms": W,
        "lateness_ms": L,
        "closed_retention_ms": 10_000,
        "idle_ms": 500,
        "max_future_ms": 60_000,
    }
    return JoinConfig(**{**base, **kw})


class Feed:
    """Feeds one join like the stage does, with increasing offsets per topic."""

    def __init__(self, join: RequestJoin, partition: int = 0) -> None:
        self.join = join
        self.partition = partition
        self.offsets: dict[str, int] = {}
        self.rejects: list = []
        self.now: int | None = None  # the latest wall time the stage has seen

    def at(self, now: int) -> None:
        self.now = now if self.now is None else max(self.now, now)

    def src(self, topic: str, key: str) -> Source:
        off = self.offsets.get(topic, 0)
        self.offsets[topic] = off + 1
        return Source(topic, self.partition, off, key.encode())

    def imp(self, rid: str, ts: int, now: int, user: str = "u1", n: int = 3) -> None:
        raw = fx.dumps(fx.impression(rid, user, ts, n_items=n))
        self.at(now)
        self.rejects += self.join.add_impression(decode_impression(raw), raw, self.src(IMP, rid), now)

    def click(self, rid: str, pos: int, ts: int, now: int, user: str = "u1") -> None:
        raw = fx.dumps(fx.click(rid, user, pos, ts))
        self.at(now)
        r = self.join.add_feedback(decode(raw, Click), raw, self.src(CLK, rid), now)
        if r is not None:
            self.rejects.append(r)

    def dwell(self, rid: str, pos: int, ts: int, ms: int, now: int, user: str = "u1") -> None:
        raw = fx.dumps(fx.dwell(rid, user, pos, ts, ms))
        self.at(now)
        r = self.join.add_feedback(decode(raw, Dwell), raw, self.src(DWL, rid), now)
        if r is not None:
            self.rejects.append(r)

    def close(self, now: int) -> list:
        """The stage ticks until ``now`` with every input caught up and the broker answering
        each tick (as streams.stage does with a live broker), then closes what is due."""
        t = now if self.now is None else self.now
        while True:
            for topic in (IMP, CLK, DWL):
                self.join.watermarks.caught_up(self.partition, topic, t)
            if t >= now:
                break
            t = min(now, t + TICK)
        self.at(now)
        closed, rejects = self.join.close_due(now)
        self.rejects += rejects
        return closed

    def stages(self) -> list[str]:
        return [r.stage for r in self.rejects]


def test_window_closes_with_per_position_feedback_and_zero_defaults() -> None:
    f = Feed(RequestJoin(config()))
    f.imp("r1", T0, now=T0)
    f.dwell("r1", 2, T0 + 300, 4_000, now=T0 + 300)  # out of order: dwell before its click
    f.click("r1", 2, T0 + 100, now=T0 + 310)
    f.click("r1", 0, T0 + 500, now=T0 + 500)
    assert f.close(now=T0 + 600) == []  # watermark T0+500 < T0 + W + L
    f.imp("r2", T0 + W + L, now=T0 + 700)  # moves the event clock of the impressions input
    f.click("r2", 0, T0 + W + L, now=T0 + 700)
    f.dwell("r2", 0, T0 + W + L, 1, now=T0 + 700)
    (c,) = f.close(now=T0 + 700)
    assert c.impression.request_id == "r1"
    assert c.clicks == (1, 0, 1)
    assert c.dwell_ms == (0, 0, 4_000)
    assert c.complete is False  # position 0 was clicked but never reported a dwell
    assert f.rejects == []


def test_duplicates_are_ignored_and_counted() -> None:
    f = Feed(RequestJoin(config()))
    f.imp("r1", T0, now=T0)
    f.imp("r1", T0, now=T0)
    f.click("r1", 1, T0 + 10, now=T0)
    f.click("r1", 1, T0 + 10, now=T0)
    f.dwell("r1", 1, T0 + 20, 500, now=T0)
    f.dwell("r1", 1, T0 + 20, 500, now=T0)  # the same event again
    f.dwell("r1", 1, T0 + 30, 700, now=T0)  # another dwell on the same item adds up
    (c,) = f.close(now=T0 + W + L + 10_000)  # idle partition: wall time closes it
    assert c.clicks == (0, 1, 0) and c.dwell_ms == (0, 1_200, 0) and c.complete
    counts = f.join.counts
    assert counts["duplicates", "impression"] == 1
    assert counts["duplicates", "click"] == 1
    assert counts["duplicates", "dwell"] == 1


def test_feedback_after_close_is_late_and_impression_repeat_is_a_duplicate() -> None:
    f = Feed(RequestJoin(config()))
    f.imp("r1", T0, now=T0)
    assert len(f.close(now=T0 + 5_000)) == 1  # idle fallback closed it
    f.click("r1", 0, T0 + 100, now=T0 + 5_001)
    f.imp("r1", T0, now=T0 + 5_002)
    assert f.stages() == [STAGE_LATE]
    assert f.join.counts["duplicates", "impression"] == 1
    assert f.close(now=T0 + 5_003) == []


def test_feedback_outside_window_bad_position_and_mismatch_are_rejected() -> None:
    f = Feed(RequestJoin(config()))
    f.imp("r1", T0, now=T0)
    f.click("r1", 0, T0 + W, now=T0)  # event time at the window end
    f.click("r1", 5, T0 + 1, now=T0)  # the list has 3 items
    f.click("r1", 1, T0 + 1, now=T0, user="someone-else")
    raw = fx.dumps({**fx.click("r1", "u1", 2, T0 + 1), "item_id": "not-that-item"})
    r = f.join.add_feedback(decode(raw, Click), raw, f.src(CLK, "r1"), T0)
    assert r is not None and r.stage == STAGE_MISMATCH and r.error_field == "item_id"
    assert f.stages() == [STAGE_OUTSIDE_WINDOW, STAGE_BAD_POSITION, STAGE_MISMATCH]
    assert [r.error_field for r in f.rejects] == ["ts_ms", "position", "user_id"]
    (c,) = f.close(now=T0 + 10_000)
    assert c.clicks == (0, 0, 0)


def test_feedback_before_its_impression_is_held_then_joined() -> None:
    f = Feed(RequestJoin(config()))
    f.click("r1", 1, T0 + 50, now=T0)
    f.dwell("r1", 1, T0 + 60, 900, now=T0)
    f.dwell("r1", 1, T0 + 60, 900, now=T0)  # a repeat, while held
    assert f.join.sizes()["held"] == 1 and f.join.counts["duplicates", "dwell"] == 1
    f.imp("r1", T0, now=T0 + 100)
    assert f.join.sizes() == {"open": 1, "held": 0, "closed": 0}
    (c,) = f.close(now=T0 + 10_000)
    assert c.clicks == (0, 1, 0) and c.dwell_ms == (0, 900, 0) and f.rejects == []


def test_feedback_for_an_unknown_request_is_dead_lettered_when_its_window_would_close() -> None:
    f = Feed(RequestJoin(config()))
    f.click("ghost", 0, T0, now=T0)
    f.imp("r2", T0 + 100, now=T0)
    assert f.close(now=T0 + 400) == [] and f.rejects == []  # still held
    f.imp("r3", T0 + W + L + 100, now=T0 + 450)  # event time passes the hold ...
    f.click("r3", 0, T0 + W + L + 100, now=T0 + 450)  # ... on both inputs
    f.close(now=T0 + 450)
    assert f.stages() == [STAGE_UNKNOWN_REQUEST]
    assert f.rejects[0].source == Source(CLK, 0, 0, b"ghost")
    assert f.join.sizes()["held"] == 0
    # feedback that could not join any more when it arrives is rejected at once
    f.click("ghost2", 0, T0, now=T0 + 460)
    assert f.stages()[-1] == STAGE_UNKNOWN_REQUEST


def test_impression_after_its_window_is_late_with_its_held_feedback() -> None:
    f = Feed(RequestJoin(config()))
    f.click("old", 0, T0 + 500, now=T0)
    f.imp("new", T0 + 5_000, now=T0)
    f.close(now=T0 + 800)  # clicks idle: watermark T0 + 1300, the held click expires at T0 + 1700
    assert f.join.sizes()["held"] == 1 and f.rejects == []
    f.imp("old", T0, now=T0 + 801)  # its window would have closed at T0 + 1200
    assert f.stages() == [STAGE_LATE, STAGE_LATE]
    assert f.rejects[1].source.topic == CLK
    assert f.join.sizes()["held"] == 0


def test_watermark_is_the_minimum_over_inputs_and_idle_inputs_advance() -> None:
    j = RequestJoin(config(idle_ms=500))
    f = Feed(j)
    f.imp("r1", T0, now=T0)
    f.click("r1", 0, T0 + 3_000, now=T0)  # clicks run ahead (a backlog fetched unevenly)
    assert j.watermarks.get(0) == T0
    assert f.close(now=T0 + 100) == []  # impressions input still at T0
    j.watermarks.backlog(0, IMP, T0 + 400)  # impressions still waiting on the broker: not idle
    f.at(T0 + 400)  # ... and read up by the fetch answered at T0 + 400
    assert f.close(now=T0 + 600) == []
    assert f.close(now=T0 + 1_500) == []  # impressions idle since T0+400: T0 + 1100 < T0 + 1200
    (c,) = f.close(now=T0 + 1_700)
    assert c.clicks == (0, 0, 0)  # the click was outside the window
    assert f.stages() == [STAGE_OUTSIDE_WINDOW]


def test_an_input_with_a_backlog_but_nothing_read_holds_the_watermark() -> None:
    j = RequestJoin(config())
    f = Feed(j)
    j.watermarks.backlog(0, IMP, T0)
    f.click("r1", 0, T0 + 5_000, now=T0)
    assert j.watermarks.get(0) is None  # impressions not read yet: no watermark
    f.imp("r1", T0 + 4_900, now=T0 + 1)
    assert f.stages() == []  # not late


def test_an_input_that_never_had_records_stops_holding_once_caught_up() -> None:
    j = RequestJoin(config())
    f = Feed(j)
    j.watermarks.backlog(0, CLK, T0)  # before the first fetch every input looks backlogged
    f.imp("r1", T0, now=T0)
    assert j.watermarks.get(0) is None
    j.watermarks.caught_up(0, CLK, T0)  # the clicks partition turned out empty
    assert j.watermarks.get(0) == T0
    assert len(f.close(now=T0 + 10_000)) == 1


def test_future_event_times_are_clamped() -> None:
    j = RequestJoin(config(max_future_ms=1_000))
    f = Feed(j)
    f.imp("r1", T0, now=T0)
    f.imp("bad-clock", T0 + 3_600_000, now=T0)
    assert j.watermarks.get(0) == T0 + 1_000  # clamped to now + max_future_ms
    assert f.close(now=T0) == []  # r1 (closes at T0 + 1200) stays open


def test_closed_markers_expire_after_retention() -> None:
    f = Feed(RequestJoin(config(closed_retention_ms=2_000)))
    f.imp("r1", T0, now=T0)
    f.close(now=T0 + 5_000)
    assert f.join.sizes()["closed"] == 1
    f.close(now=T0 + 8_000)
    assert f.join.sizes()["closed"] == 0
    changes = f.join.take_changes()
    assert (b"e:r1", 0, None) in changes  # the marker is deleted from the changelog
    assert {key for key, _, _ in changes} == {b"e:r1", b"i:r1", b"w:0"}  # w: the partition's watermark


def test_changes_and_state_round_trip_through_the_changelog_form() -> None:
    j = RequestJoin(config())
    f = Feed(j)
    f.imp("open", T0, now=T0)
    f.click("open", 1, T0 + 10, now=T0)
    f.dwell("open", 1, T0 + 20, 300, now=T0)
    f.click("held", 0, T0 + 30, now=T0)
    f.imp("old", T0 - 5_000, now=T0 - 5_000)  # closed below
    f.close(now=T0)
    changes = {key: (p, v) for key, p, v in j.take_changes()}
    assert set(changes) == {b"e:open", b"i:open", b"e:held", b"e:old", b"i:old", b"w:0"}
    progress = {"w": j.watermarks.last(0), "o": {IMP: 2, CLK: 2, DWL: 1}}  # offsets after the last read
    assert orjson.loads(changes[b"w:0"][1] or b"{}") == progress
    assert all(p == 0 for p, _ in changes.values())
    assert orjson.loads(changes[b"e:old"][1] or b"{}")["s"] == "closed"
    assert changes[b"i:old"][1] is None  # a closed request no longer needs its impression
    assert changes[b"i:open"][1] == fx.dumps(fx.impression("open", "u1", T0))  # as received
    assert len(changes[b"e:open"][1] or b"") < 200  # feedback updates do not rewrite the impression
    assert j.take_changes() == []
    f.click("open", 2, T0 + 40, now=T0)
    assert [key for key, _, _ in j.take_changes()] == [b"e:open", b"w:0"]  # w: the click's offset

    restored = RequestJoin(config())
    restored.load_state_dict(j.state_dict(), now_ms=T0)
    assert restored.sizes() == j.sizes() == {"open": 1, "held": 1, "closed": 1}
    assert restored.state_dict() == j.state_dict()
    g = Feed(restored)
    g.offsets = dict(f.offsets)  # records sent again after the restart (not replays: new offsets)
    g.dwell("open", 1, T0 + 20, 300, now=T0 + 1)  # the restored dedup set still knows it
    g.click("open", 2, T0 + 40, now=T0 + 1)  # a repeat of the click above
    assert restored.counts["duplicates", "dwell"] == 1 and restored.counts["duplicates", "click"] == 1
    g.imp("held", T0 + 10, now=T0 + 2)
    g.click("old", 0, T0 - 4_000, now=T0 + 3)
    assert g.stages() == [STAGE_LATE]
    closed = g.close(now=T0 + 60_000)  # the restored clock idles forward and closes both
    by_id = {c.impression.request_id: c for c in closed}
    assert by_id["open"].clicks == (0, 1, 1) and by_id["open"].dwell_ms == (0, 300, 0)
    assert by_id["held"].clicks == (1, 0, 0)


def test_load_keeps_only_the_given_partitions_and_forget_drops_them() -> None:
    j = RequestJoin(config())
    Feed(j, partition=0).imp("a", T0, now=T0)
    Feed(j, partition=1).imp("b", T0, now=T0)
    state = j.state_dict()
    only1 = RequestJoin(config())
    only1.load_state_dict(state, now_ms=T0, partitions={1})
    assert set(only1.state_dict()) == {b"e:b", b"i:b", b"w:1"}  # restarted at b's event time
    j.forget_partitions({0})
    assert set(j.state_dict()) == {b"e:b", b"i:b", b"w:1"} and j.watermarks.get(0) is None


def test_unreadable_state_entries_are_dropped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    j = RequestJoin(config())
    good = fx.dumps(fx.impression("z", "u", T0))
    j.load_state_dict(
        {
            b"e:x": b"{not json",
            b"e:y": orjson.dumps({"s": "open", "p": 0, "c": [], "d": [], "ds": []}),  # impression missing
            b"e:z": orjson.dumps({"s": "open", "p": 0, "c": [], "d": [], "ds": []}),
            b"i:z": good,
        },
        now_ms=T0,
    )
    assert j.sizes() == {"open": 1, "held": 0, "closed": 0}
    assert "unreadable join state" in caplog.text


def test_a_restored_partition_starts_from_its_written_watermark_not_from_feedback_read_ahead() -> None:
    """Catching up on a backlog, Kafka fetches by bytes: the small clicks run far ahead of the
    impressions and wait as held feedback. A new owner of the partition (a restart, or another
    worker after a rebalance) re-reads the inputs from the committed offsets. Its watermark must
    start where the old owner's was when it wrote the state, not at the held clicks' event
    time: from there every re-read impression was late and its list lost (benchmarks/scale.py
    join lost 19 112 of 30 000 transitions that way with 2 workers)."""
    j = RequestJoin(config())
    f = Feed(j)
    for k in range(20):  # the clicks of 20 lists read ahead, 2 s of event time
        f.click(f"r{k}", 1, T0 + k * 100 + 50, now=T0)
    for k in range(5):  # only the first 5 impressions read yet
        f.imp(f"r{k}", T0 + k * 100, now=T0)
    for topic in (IMP, CLK, DWL):  # every input has more to read
        j.watermarks.backlog(0, topic, T0)
    assert j.close_due(T0) == ([], []) and j.watermarks.last(0) is None  # dwells not read yet
    f.dwell("r0", 1, T0 + 60, 500, now=T0)
    j.close_due(T0)
    table = {key: value for key, _, value in j.take_changes() if value is not None}
    # the watermark (min over the inputs: the dwells) and the offsets after the records applied
    assert orjson.loads(table[b"w:0"]) == {"w": T0 + 60, "o": {CLK: 20, IMP: 5, DWL: 1}}

    restored = RequestJoin(config())
    restored.load_state_dict(table, now_ms=T0 + 1, partitions={0})
    assert restored.watermarks.get(0) == T0 + 60  # not the held clicks' T0 + 1950
    g = Feed(restored)
    for k in range(20):  # re-read from the committed offsets (nothing was committed): the same offsets
        g.imp(f"r{k}", T0 + k * 100, now=T0 + 2)
        g.click(f"r{k}", 1, T0 + k * 100 + 50, now=T0 + 2)
        g.dwell(f"r{k}", 1, T0 + k * 100 + 60, 500, now=T0 + 2)
    closed = g.close(now=T0 + 60_000)
    assert g.stages() == []  # nothing late, nothing unknown
    # the records the state already held are recognised, not applied twice
    assert restored.counts["duplicates", "impression"] == 5 and restored.counts["duplicates", "click"] == 20
    assert restored.counts["duplicates", "dwell"] == 1
    assert sorted(c.impression.request_id for c in closed) == sorted(f"r{k}" for k in range(20))
    assert all(c.clicks == (0, 1, 0) and c.dwell_ms == (0, 500, 0) for c in closed)


def test_a_changelog_without_watermarks_restarts_from_a_lower_bound() -> None:
    """Written before ``w:<partition>`` existed: the latest close of a closed marker (or the
    oldest open impression), never the held feedback running ahead."""
    j = RequestJoin(config())
    f = Feed(j)
    f.imp("old", T0, now=T0)
    f.close(now=T0 + 5_000)  # closed at watermark T0 + 5000
    f.imp("open", T0 + 6_000, now=T0 + 6_000)
    f.click("ahead", 0, T0 + 30_000, now=T0 + 6_000)  # held, far ahead
    state = {k: v for k, v in j.state_dict().items() if not k.startswith(b"w:")}
    restored = RequestJoin(config())
    restored.load_state_dict(state, now_ms=T0 + 6_000)
    assert restored.watermarks.get(0) == T0 + 5_000
    only_open = RequestJoin(config())
    only_open.load_state_dict({k: v for k, v in state.items() if k != b"e:old"}, now_ms=T0 + 6_000)
    assert only_open.watermarks.get(0) == T0 + 6_000


def test_feedback_of_a_list_closed_before_the_restart_is_a_replay_not_late() -> None:
    """At-least-once: after a restart the inputs are read again from the committed offsets. A
    click the old owner counted before its list closed is a replay (its offset is below the one
    written with the state), not dead-lettered as late; a click that really comes after the
    close still is."""
    j = RequestJoin(config())
    f = Feed(j)
    f.imp("r", T0, now=T0)
    f.click("r", 1, T0 + 10, now=T0)
    f.close(now=T0 + 5_000)  # closed, with its click
    restored = RequestJoin(config())
    restored.load_state_dict(j.state_dict(), now_ms=T0 + 5_000)
    g = Feed(restored)
    g.imp("r", T0, now=T0 + 5_000)
    g.click("r", 1, T0 + 10, now=T0 + 5_000)  # offset 0 again: a replay
    assert g.stages() == [] and restored.counts["replayed", "click"] == 1
    g.click("r", 2, T0 + 20, now=T0 + 5_000)  # offset 1: new, and its list is closed
    assert g.stages() == [STAGE_LATE]
