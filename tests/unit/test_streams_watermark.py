"""Stage-1 watermarks (streams.watermark.Watermarks) across broker outages: an input idles
forward only on the broker's answers to its fetches. Time is injected: ``now`` is the stage's
wall clock, ``answered`` the time of the broker's latest successful fetch response (aiokafka's
``last_poll_timestamp``), which stops moving while the broker does not answer."""

from __future__ import annotations

from schemas import Click, Dwell, decode
from streams import fixtures as fx
from streams.decoding import decode_impression
from streams.join import JoinConfig, RequestJoin
from streams.types import Source
from streams.watermark import RESTORED, Watermarks

T0 = 1_700_000_000_000
IDLE, GAP = 500, 5_000
IMP, CLK, DWL = "t.impressions", "t.clicks", "t.dwells"
TICK = 100  # the stage's tick
FETCH = 1_500  # a caught-up partition's long poll: an empty answer this often


GRACE = 15_000  # outage grace


def watermarks(grace: int = GRACE) -> Watermarks:
    return Watermarks(idle_ms=IDLE, max_future_ms=60_000, answer_gap_ms=GAP, outage_grace_ms=grace)


class Broker:
    """Ticks a stage's view of one partition: every input caught up, the broker answering its
    long polls every ``FETCH`` ms while up, and silent while down."""

    def __init__(self, wms: Watermarks, now: int, inputs: tuple[str, ...] = (IMP,)) -> None:
        self.wms, self.now, self.inputs = wms, now, inputs
        self.answered: int | None = now
        self.up = True

    def run(self, until: int) -> None:
        while self.now < until:
            self.now = min(until, self.now + TICK)
            if self.up and (self.answered is None or self.now - self.answered >= FETCH):
                self.answered = self.now
            for source in self.inputs:
                self.wms.caught_up(0, source, self.answered)


def test_a_quiet_partition_advances_by_the_broker_answers_and_closes_its_windows() -> None:
    wms = watermarks()
    wms.observe(0, IMP, T0, now_ms=T0)
    broker = Broker(wms, T0)
    broker.run(T0 + 400)
    assert wms.get(0) == T0  # idle for less than idle_ms
    broker.run(T0 + 10_000)
    # advanced by the idle run up to the latest answer (at most one long poll behind the clock)
    wm = wms.get(0)
    assert wm is not None and T0 + 10_000 - FETCH <= wm <= T0 + 10_000


def test_a_stalled_broker_does_not_advance_an_idle_input() -> None:
    wms = watermarks()
    wms.observe(0, IMP, T0, now_ms=T0)
    broker = Broker(wms, T0)
    broker.run(T0 + 3_000)
    before = wms.get(0)
    assert before is not None and before > T0 and broker.answered is not None
    broker.up = False  # SIGSTOP: the fetches hang, the end offset we know is stale
    broker.run(T0 + 33_000)
    assert wms.get(0) == before <= broker.answered  # not a millisecond past its word


def test_after_an_outage_an_input_stays_put_for_idle_ms_then_moves_on_from_where_it_stopped() -> None:
    wms = watermarks(grace=0)  # the input's own rule, without the partition's hold
    wms.observe(0, IMP, T0, now_ms=T0)
    broker = Broker(wms, T0)
    broker.run(T0 + 3_000)
    broker.up = False
    broker.run(T0 + 33_000)
    stopped = wms.get(0)
    assert stopped is not None
    broker.up, broker.answered = True, None  # back: the next tick brings the first answer
    broker.run(T0 + 33_000 + IDLE - TICK)
    back = T0 + 33_100  # the first answer after the outage
    assert wms.get(0) == stopped  # the grace: producers deliver what they buffered
    broker.run(T0 + 40_000)
    wm = wms.get(0)
    # moves on from where it stopped, by the answers since it came back: the outage is not idle time
    assert wm is not None and broker.answered is not None
    assert wm == stopped + (broker.answered - back)


def test_a_gap_the_stage_did_not_see_still_restarts_the_idle_run() -> None:
    # The stage's loop may be blocked through the whole outage (waiting for durability): it then
    # sees the last answer before and the first after, nothing between.
    wms = watermarks(grace=0)
    wms.observe(0, IMP, T0, now_ms=T0)
    for t in range(T0, T0 + 2_001, 1_000):
        wms.caught_up(0, IMP, t)
    before = wms.get(0)
    assert before == T0 + 2_000
    wms.caught_up(0, IMP, T0 + 32_000)  # the next answer the stage sees
    assert wms.get(0) == before
    wms.caught_up(0, IMP, T0 + 32_000 + IDLE)
    assert wms.get(0) == before + IDLE


def test_no_answer_yet_is_no_evidence_of_idleness() -> None:
    wms = watermarks()
    wms.observe(0, IMP, T0, now_ms=T0)
    for _ in range(T0, T0 + 20_001, TICK):  # the stage ticks for 20 s
        wms.caught_up(0, IMP, None)  # never answered since assignment
    assert wms.get(0) == T0


def test_the_restored_clock_idles_on_the_answers_to_the_partition_inputs() -> None:
    wms = watermarks(grace=0)  # the idle rule alone (the hold would add the grace)
    wms.seed(0, T0, now_ms=T0)
    assert wms.get(0) == T0  # restored, and nobody answered yet
    broker = Broker(wms, T0, inputs=(IMP, CLK, DWL))
    broker.up = False
    broker.run(T0 + 30_000)  # the inputs had never been read: no clock of their own
    assert wms.get(0) == T0
    broker.up, broker.answered = True, None
    broker.run(T0 + 40_000)
    wm = wms.get(0)
    assert wm is not None and T0 + 10_000 - 2 * FETCH <= wm < T0 + 10_000
    assert wms.input_clock(0, RESTORED) == T0


def test_an_impression_buffered_through_an_outage_is_joined_not_late() -> None:
    # The acceptance run's loss, in miniature: the serving node buffers impressions while the
    # broker is stopped and delivers them when it is back; their windows must still be open.
    cfg = JoinConfig(
        window_ms=2_000, lateness_ms=500, closed_retention_ms=60_000, idle_ms=IDLE, max_future_ms=60_000
    )
    join = RequestJoin(cfg)
    wms = join.watermarks
    wms.answer_gap_ms = GAP
    offsets = iter(range(100))

    def impression(rid: str, ts: int, now: int) -> list:
        raw = fx.dumps(fx.impression(rid, "u1", ts, n_items=2))
        return join.add_impression(
            decode_impression(raw), raw, Source(IMP, 0, next(offsets), rid.encode()), now
        )

    assert impression("before", T0, now=T0) == []
    broker = Broker(join.watermarks, T0, inputs=(IMP, CLK, DWL))
    broker.run(T0 + 1_000)
    broker.up = False  # answered at T0 + 1 000 is its last word
    broker.run(T0 + 31_000)
    closed, rejects = join.close_due(broker.now)
    assert [c.impression.request_id for c in closed] == [] and rejects == []
    broker.up, broker.answered = True, None
    broker.run(T0 + 31_300)
    # the node's buffer arrives: impressions of the whole outage, the oldest first
    for k, ts in enumerate(range(T0 + 1_000, T0 + 31_000, 1_000)):
        assert impression(f"buffered-{k}", ts, now=broker.now) == [], ts
    broker.run(T0 + 120_000)
    closed, rejects = join.close_due(broker.now)
    assert rejects == []
    assert {c.impression.request_id for c in closed} == {"before"} | {f"buffered-{k}" for k in range(30)}


# ------------------------------------------------------------------------ the outage hold
class Outage:
    """One join partition through a broker outage, fed as the stage feeds it: ``tick`` is a
    step's ``prepare`` (every input caught up, the broker's latest answer), then records."""

    def __init__(self, grace: int = GRACE) -> None:
        cfg = JoinConfig(
            window_ms=2_000,
            lateness_ms=500,
            closed_retention_ms=120_000,
            idle_ms=IDLE,
            max_future_ms=60_000,
            outage_grace_ms=grace,
        )
        self.join = RequestJoin(cfg)
        self.join.watermarks.answer_gap_ms = GAP
        self.broker = Broker(self.join.watermarks, T0, inputs=(IMP, CLK, DWL))
        self.offsets = iter(range(10_000))
        self.rejects: list = []
        self.closed: dict[str, tuple[int, ...]] = {}  # request id -> clicks

    def run(self, until: int) -> None:
        while self.broker.now < until:
            self.broker.run(min(until, self.broker.now + TICK))
            self.close()

    def close(self) -> None:
        closed, rejects = self.join.close_due(self.broker.now)
        self.closed.update((c.impression.request_id, c.clicks) for c in closed)
        self.rejects += rejects

    def src(self, topic: str, rid: str) -> Source:
        return Source(topic, 0, next(self.offsets), rid.encode())

    def impression(self, rid: str, ts: int) -> None:
        raw = fx.dumps(fx.impression(rid, "u1", ts, n_items=2))
        self.rejects += self.join.add_impression(
            decode_impression(raw), raw, self.src(IMP, rid), self.broker.now
        )

    def click(self, rid: str, ts: int) -> None:
        raw = fx.dumps(fx.click(rid, "u1", 0, ts))
        r = self.join.add_feedback(decode(raw, Click), raw, self.src(CLK, rid), self.broker.now)
        self.rejects += [] if r is None else [r]

    def dwell(self, rid: str, ts: int) -> None:
        raw = fx.dumps(fx.dwell(rid, "u1", 0, ts, 1_000))
        r = self.join.add_feedback(decode(raw, Dwell), raw, self.src(DWL, rid), self.broker.now)
        self.rejects += [] if r is None else [r]

    def outage(self, start: int, end: int) -> None:
        """Live until ``start``, no answer until ``end``, the first answer at the next tick."""
        self.run(start)
        self.broker.up = False
        self.run(end)
        self.broker.up, self.broker.answered = True, None

    def stages(self) -> list[str]:
        return [r.stage for r in self.rejects]


def two_nodes_through_an_outage(grace: int, revoked: bool = False) -> Outage:
    """Run4 of the acceptance test in miniature: two serving nodes buffer their impressions
    through a 30 s outage (one list every 500 ms, alternating); after it node A's buffer, with
    its users' clicks and dwells, reaches the partition first, node B's 3 s later. ``revoked``:
    the outage also revoked the partition (the group coordinator was gone), and the stage
    reloads it from its changelog when it is back."""
    o = Outage(grace)
    o.impression("before", T0)
    o.click("before", T0 + 100)
    o.dwell("before", T0 + 200)
    o.outage(T0 + 1_000, T0 + 31_000)
    if revoked:
        entries = {key: value for key, _, value in o.join.take_changes() if value is not None}
        o.join.forget_partitions({0})
        o.join.load_state_dict(entries, o.broker.now, {0})
        o.broker.wms = o.join.watermarks
    lists = [(f"node{'AB'[k % 2]}-{k}", T0 + 1_000 + 500 * k) for k in range(60)]
    o.run(T0 + 31_300)
    for rid, ts in lists[0::2]:  # node A
        o.impression(rid, ts)
        o.click(rid, ts + 100)
        o.dwell(rid, ts + 200)
    o.run(T0 + 34_300)
    for rid, ts in lists[1::2]:  # node B, older events than node A's newest by up to 30 s
        o.impression(rid, ts)
    o.run(T0 + 90_000)
    return o


def test_two_nodes_buffers_reaching_a_partition_one_after_the_other_are_all_joined() -> None:
    o = two_nodes_through_an_outage(grace=GRACE)
    assert o.rejects == []
    assert set(o.closed) == {"before"} | {f"node{'AB'[k % 2]}-{k}" for k in range(60)}
    assert all(o.closed[f"nodeA-{k}"] == (1, 0) for k in range(0, 60, 2))


def test_an_outage_that_revoked_the_partition_still_holds_it_after_the_reload() -> None:
    o = two_nodes_through_an_outage(grace=GRACE, revoked=True)
    assert o.rejects == []
    assert set(o.closed) == {"before"} | {f"node{'AB'[k % 2]}-{k}" for k in range(60)}


def test_without_the_hold_the_second_node_buffer_is_late() -> None:
    # The same scenario with no grace: what the acceptance run lost (streams.join.late).
    o = two_nodes_through_an_outage(grace=0)
    assert o.stages().count("streams.join.late") > 20


def test_feedback_delivered_late_within_the_grace_is_joined() -> None:
    # A client's clicks of the outage arrive 9 s after the broker is back (the acceptance run's).
    o = Outage()
    o.outage(T0 + 1_000, T0 + 31_000)
    o.run(T0 + 31_300)
    for k in range(10):
        o.impression(f"r{k}", T0 + 2_000 + 2_000 * k)
    o.run(T0 + 40_000)
    assert o.closed == {} and o.join.watermarks.held(0)
    for k in range(10):
        o.click(f"r{k}", T0 + 2_500 + 2_000 * k)
    o.run(T0 + 60_000)
    assert o.rejects == []
    assert o.closed == {f"r{k}": (1, 0) for k in range(10)}


def test_the_hold_is_bounded_a_producer_that_never_delivers_does_not_stall_the_join() -> None:
    o = Outage()
    o.impression("before", T0)
    o.outage(T0 + 1_000, T0 + 31_000)
    o.run(T0 + 31_300)
    back = o.broker.answered
    assert back is not None
    o.impression("after", T0 + 31_200)  # one producer delivers, another never does
    o.run(back + GRACE - TICK)
    assert o.closed == {} and o.join.watermarks.held(0)
    o.run(back + GRACE + 5_000)
    assert set(o.closed) == {"before", "after"} and not o.join.watermarks.held(0)
    wm = o.join.watermarks.get(0)
    assert wm is not None and wm >= T0 + 31_200
    o.impression("too-late", T0 + 5_000)  # delivered after the grace: late, as documented
    assert o.stages() == ["streams.join.late"]


def test_a_new_gap_during_the_hold_extends_it() -> None:
    o = Outage()
    o.impression("x", T0)
    o.outage(T0 + 1_000, T0 + 31_000)
    o.run(T0 + 31_300)
    back = o.broker.answered
    assert back is not None
    o.outage(back + 5_000, back + 25_000)  # down again before the grace ran out
    o.run(back + GRACE + 1_000)
    # the first grace is over, but the broker has not answered since: still held
    assert o.join.watermarks.held(0) and o.closed == {}
    o.run(back + 25_100 + GRACE + 1_000)
    assert not o.join.watermarks.held(0) and set(o.closed) == {"x"}


def test_a_live_broker_never_holds_and_quiet_partitions_close_after_the_hold() -> None:
    o = Outage()
    o.impression("live", T0)
    o.run(T0 + 20_000)
    assert set(o.closed) == {"live"} and not o.join.watermarks.held(0)
    o.impression("quiet", T0 + 20_000)
    o.outage(T0 + 21_000, T0 + 51_000)  # no record at all after the outage
    o.run(T0 + 51_100 + GRACE + 3_000)
    assert set(o.closed) == {"live", "quiet"} and o.rejects == []


def test_a_gap_seen_by_a_backlogged_input_holds_too() -> None:
    # The stage blocked through the outage: on its first step after it the inputs have records
    # waiting (new end offsets), and it sees the first answer after the gap as a backlog.
    wms = watermarks()
    for source in (IMP, CLK):
        wms.observe(0, source, T0, now_ms=T0)
        wms.caught_up(0, source, T0, T0)
    assert wms.get(0) == T0
    wms.backlog(0, IMP, T0 + 30_000, answered_ms=T0 + 30_000)
    wms.caught_up(0, CLK, T0 + 30_000, T0 + 30_000)
    wms.observe(0, IMP, T0 + 29_000, now_ms=T0 + 30_000)
    wms.observe(0, CLK, T0 + 29_000, now_ms=T0 + 30_000)
    assert wms.held(0) and wms.get(0) == T0
    assert wms.unheld(0) == T0 + 29_000  # what the inputs are paced against meanwhile
    for t in range(T0 + 30_000, T0 + 30_000 + GRACE, TICK):  # the broker answers on
        wms.caught_up(0, CLK, t, t)
        assert wms.get(0) == T0
    wms.caught_up(0, CLK, T0 + 30_000 + GRACE, T0 + 30_000 + GRACE)
    assert wms.get(0) == T0 + 29_000 and not wms.held(0)


def test_silence_while_not_fetched_is_no_gap() -> None:
    # A paused input is not fetched: the stage passes no answer, and its stamp from before the
    # pause (seen again right after the resume) does not make the next answer end a gap.
    wms = watermarks()
    wms.observe(0, IMP, T0, now_ms=T0)
    wms.caught_up(0, IMP, T0, T0)
    for t in range(T0, T0 + 20_001, TICK):
        wms.caught_up(0, IMP, None, t)  # paused for 20 s
    wms.caught_up(0, IMP, T0, T0 + 20_100)  # resumed: the old stamp, then fresh answers
    for t in range(T0 + 20_200, T0 + 22_001, TICK):
        wms.caught_up(0, IMP, t, t)
    assert not wms.held(0)
    assert wms.get(0) == T0 + (T0 + 22_000 - (T0 + 20_200))  # idle since the resume
