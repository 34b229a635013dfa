"""Stage-1 watermarks (streams.watermark.Watermarks) across broker outages: an input idles
forward only on the broker's answers to its fetches. Time is injected: ``now`` is the stage's
wall clock, ``answered`` the time of the broker's latest successful fetch response (aiokafka's
``last_poll_timestamp``), which stops moving while the broker does not answer."""

from __future__ import annotations

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


def watermarks() -> Watermarks:
    return Watermarks(idle_ms=IDLE, max_future_ms=60_000, answer_gap_ms=GAP)


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
    assert wms.get(0, broker.now) == T0  # idle for less than idle_ms
    broker.run(T0 + 10_000)
    # advanced by the idle run up to the latest answer (at most one long poll behind the clock)
    wm = wms.get(0, broker.now)
    assert wm is not None and T0 + 10_000 - FETCH <= wm <= T0 + 10_000


def test_a_stalled_broker_does_not_advance_an_idle_input() -> None:
    wms = watermarks()
    wms.observe(0, IMP, T0, now_ms=T0)
    broker = Broker(wms, T0)
    broker.run(T0 + 3_000)
    before = wms.get(0, broker.now)
    assert before is not None and before > T0 and broker.answered is not None
    broker.up = False  # SIGSTOP: the fetches hang, the end offset we know is stale
    broker.run(T0 + 33_000)
    assert wms.get(0, broker.now) == before <= broker.answered  # not a millisecond past its word


def test_after_an_outage_an_input_stays_put_for_idle_ms_then_moves_on_from_where_it_stopped() -> None:
    wms = watermarks()
    wms.observe(0, IMP, T0, now_ms=T0)
    broker = Broker(wms, T0)
    broker.run(T0 + 3_000)
    broker.up = False
    broker.run(T0 + 33_000)
    stopped = wms.get(0, broker.now)
    assert stopped is not None
    broker.up, broker.answered = True, None  # back: the next tick brings the first answer
    broker.run(T0 + 33_000 + IDLE - TICK)
    back = T0 + 33_100  # the first answer after the outage
    assert wms.get(0, broker.now) == stopped  # the grace: producers deliver what they buffered
    broker.run(T0 + 40_000)
    wm = wms.get(0, broker.now)
    # moves on from where it stopped, by the answers since it came back: the outage is not idle time
    assert wm is not None and broker.answered is not None
    assert wm == stopped + (broker.answered - back)


def test_a_gap_the_stage_did_not_see_still_restarts_the_idle_run() -> None:
    # The stage's loop may be blocked through the whole outage (waiting for durability): it then
    # sees the last answer before and the first after, nothing between.
    wms = watermarks()
    wms.observe(0, IMP, T0, now_ms=T0)
    for t in range(T0, T0 + 2_001, 1_000):
        wms.caught_up(0, IMP, t)
    before = wms.get(0, T0 + 2_000)
    assert before == T0 + 2_000
    wms.caught_up(0, IMP, T0 + 32_000)  # the next answer the stage sees
    assert wms.get(0, T0 + 32_000) == before
    wms.caught_up(0, IMP, T0 + 32_000 + IDLE)
    assert wms.get(0, T0 + 32_000 + IDLE) == before + IDLE


def test_no_answer_yet_is_no_evidence_of_idleness() -> None:
    wms = watermarks()
    wms.observe(0, IMP, T0, now_ms=T0)
    for _ in range(T0, T0 + 20_001, TICK):  # the stage ticks for 20 s
        wms.caught_up(0, IMP, None)  # never answered since assignment
    assert wms.get(0, T0 + 20_000) == T0


def test_the_restored_clock_idles_on_the_answers_to_the_partition_inputs() -> None:
    wms = watermarks()
    wms.seed(0, T0, now_ms=T0)
    assert wms.get(0, T0 + 60_000) == T0  # restored, and nobody answered yet
    broker = Broker(wms, T0, inputs=(IMP, CLK, DWL))
    broker.up = False
    broker.run(T0 + 30_000)  # the inputs had never been read: no clock of their own
    assert wms.get(0, broker.now) == T0
    broker.up, broker.answered = True, None
    broker.run(T0 + 40_000)
    wm = wms.get(0, broker.now)
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
