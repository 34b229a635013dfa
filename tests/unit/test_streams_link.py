"""Stage 2 (streams.link.UserLinker) without Kafka: linking consecutive lists, session ends,
out-of-order outcomes, repeats, progress from stage 1, and the changelog round trip."""

from __future__ import annotations

import orjson

from schemas import Transition, decode, transition_id
from streams import fixtures as fx
from streams.link import LinkConfig, UserLinker
from streams.records import encode_transition, read_outcome
from streams.types import STAGE_LINK_LATE, Source

GAP = 10_000
T0 = 1_700_000_000_000


def outcome(rid: str, ts: int, user: str = "u1", clicks: tuple[int, ...] = (0, 1, 0)) -> bytes:
    imp = fx.impression(rid, user, ts)
    return orjson.dumps(
        {
            "type": "list_outcome",
            "schema_version": 1,
            "request_id": rid,
            "user_id": user,
            "ts_ms": ts,
            "closed_at_ms": ts + 2_000,
            "impression": imp,
            "clicks": list(clicks),
            "dwell_ms": [0, 1500, 0],
            "complete": True,
        }
    )


class Feed:
    def __init__(self, upstream: int = 2) -> None:
        self.linker = UserLinker(
            LinkConfig(session_gap_ms=GAP, retention_ms=30_000, upstream_partitions=upstream)
        )
        self.upstream = upstream
        self.offset = 0
        self.rejects: list = []

    def add(self, rid: str, ts: int, user: str = "u1", partition: int = 0) -> None:
        self.offset += 1
        r = self.linker.add_outcome(
            read_outcome(outcome(rid, ts, user)), Source("o", partition, self.offset, None)
        )
        if r is not None:
            self.rejects.append(r)

    def progress(self, t: int | None, partition: int = 0) -> list[tuple[str, str | None]]:
        for up in range(self.upstream):
            self.linker.announce(partition, up, t)
        return [
            (link.prev.request_id, None if link.next is None else link.next.request_id)
            for link in self.linker.link_due()
        ]


def test_consecutive_lists_link_and_a_long_gap_ends_the_session() -> None:
    f = Feed()
    f.add("a", T0)
    f.add("c", T0 + 2_000)  # arrives before b: outcomes of one user come out of order
    f.add("b", T0 + 1_000)
    f.add("d", T0 + 2_000 + GAP + 1)  # more than the session gap after c
    assert f.progress(T0 + 500) == []  # a is settled but has no successor yet
    assert f.progress(T0 + 2_000) == [("a", "b"), ("b", "c")]
    assert f.progress(T0 + 2_000 + GAP + 1) == [("c", None)]  # d is settled: c ended its session
    assert f.progress(T0 + 2_000 + 2 * GAP + 1) == [("d", None)]  # nobody came after d in time


def test_nothing_links_until_every_upstream_partition_announced() -> None:
    f = Feed(upstream=2)
    f.add("a", T0)
    f.add("b", T0 + 1)
    f.linker.announce(0, 0, T0 + 5_000)
    assert f.linker.link_due() == []  # stage-1 partition 1 has not spoken: it may still emit
    f.linker.announce(0, 1, T0 + 1)
    assert [(x.prev.request_id, x.next and x.next.request_id) for x in f.linker.link_due()] == [("a", "b")]


def test_idle_upstream_partitions_do_not_hold_the_others_back() -> None:
    f = Feed(upstream=3)
    f.add("a", T0)
    f.add("b", T0 + 1)
    f.linker.announce(0, 0, T0 + 5)
    f.linker.announce(0, 1, None)  # never saw a record: idle
    f.linker.announce(0, 2, None)
    assert len(f.linker.link_due()) == 1
    f.linker.announce(0, 1, T0 - 1_000)  # woke up later: now it counts (and is behind)
    assert f.linker.progress.get(0) == T0 - 1_000


def test_repeats_are_ignored_and_older_lists_rejected() -> None:
    f = Feed()
    f.add("a", T0)
    f.add("a", T0)  # buffered twice
    f.add("b", T0 + 1_000)
    assert f.progress(T0 + 1_000) == [("a", "b")]
    f.add("a", T0)  # a repeat of a linked list (replayed after a restart)
    f.add("x", T0 + 500)  # older than what was linked: can no longer be put in order
    assert f.linker.counts["duplicates", "list_outcome"] == 2
    assert [r.stage for r in f.rejects] == [STAGE_LINK_LATE]


def test_finished_chains_are_remembered_then_forgotten() -> None:
    f = Feed()
    f.add("a", T0)
    assert f.progress(T0 + GAP) == [("a", None)]
    f.add("a", T0)  # replayed after the session ended: still recognised
    assert f.linker.counts["duplicates", "list_outcome"] == 1
    assert len(f.linker) == 1
    f.progress(T0 + GAP + 30_000)  # retention passed
    assert len(f.linker) == 0
    assert [v for _, _, v in f.linker.take_changes()][-1] is None  # deleted from the changelog


def test_users_are_independent() -> None:
    f = Feed()
    f.add("a1", T0, user="a")
    f.add("b1", T0 + 1, user="b")
    f.add("a2", T0 + 2, user="a")
    assert sorted(f.progress(T0 + 2)) == [("a1", "a2")]


def test_state_round_trip_and_partition_filter() -> None:
    f = Feed()
    f.add("a", T0)
    f.add("b", T0 + 1_000)
    f.add("z", T0, user="u2", partition=1)
    f.progress(T0 + 500)  # a settled (last), b pending
    changes = {key: value for key, _, value in f.linker.take_changes()}
    assert set(changes) == {b"u:u1", b"u:u2", b"o:2:u1a", b"o:2:u1b", b"o:2:u2z"}
    assert changes[b"o:2:u1a"] == outcome("a", T0)  # each outcome stored once, as received
    assert len(changes[b"u:u1"] or b"") < 200  # the chain itself only names them
    restored = UserLinker(f.linker.config)
    restored.load_state_dict(f.linker.state_dict(), now_ms=0, partitions={0})
    assert set(restored.state_dict()) == {b"u:u1", b"o:2:u1a", b"o:2:u1b"}
    for up in range(2):
        restored.announce(0, up, T0 + 1_000)
    (link,) = restored.link_due()
    assert (link.prev.request_id, link.next and link.next.request_id) == ("a", "b")
    # a is no longer needed once b is the last list: its outcome is deleted from the changelog
    assert (b"o:2:u1a", 0, None) in restored.take_changes()


def test_transition_records_are_valid_and_deterministic() -> None:
    prev, nxt = read_outcome(outcome("a", T0)), read_outcome(outcome("b", T0 + 5))
    tid, raw, unknown = encode_transition(prev, nxt)
    t = decode(raw, Transition)
    assert tid == t.transition_id == transition_id("u1", "a", "b") and unknown == 0
    assert t.state.request_id == "a" and t.next_state is not None and t.next_state.request_id == "b"
    assert t.labels.clicks == (0, 1, 0) and t.reward == (1.0, 1.5) and not t.done
    assert t.action == (0.5, 0.5) and t.objectives == ("click", "dwell")
    tid2, raw2, _ = encode_transition(prev, None)
    t2 = decode(raw2, Transition)
    assert t2.done and t2.next_state is None and tid2 == transition_id("u1", "a", None) != tid
    assert encode_transition(prev, nxt)[1] == raw  # same input, same bytes


def test_transitions_carry_the_impressions_arm_and_log_propensity() -> None:
    """Issue 18: the arm that served the state's list and its log-propensity reach the
    transition (the learner and off-policy estimates read them there); an older impression
    without them gives a transition with both null, still valid."""

    def rollout_outcome(rid: str, ts: int, arm: str, lp: float | None) -> bytes:
        d = orjson.loads(outcome(rid, ts))
        d["schema_version"] = d["impression"]["schema_version"] = 2
        d["impression"]["arm"], d["impression"]["log_propensity"] = arm, lp
        return orjson.dumps(d)

    prev = read_outcome(rollout_outcome("a", T0, "canary", -1.25))
    nxt = read_outcome(rollout_outcome("b", T0 + 5, "holdout", None))
    t = decode(encode_transition(prev, nxt)[1], Transition)
    assert (t.arm, t.log_propensity) == ("canary", -1.25)
    last = decode(encode_transition(nxt, None)[1], Transition)
    assert (last.arm, last.log_propensity) == ("holdout", None)
    old = decode(encode_transition(read_outcome(outcome("c", T0)), None)[1], Transition)
    assert (old.arm, old.log_propensity) == (None, None)
    # through the changelog (the outcome's bytes) and back: still carried
    feed = Feed(upstream=1)
    src = Source("o", 0, 1, None)
    feed.linker.add_outcome(read_outcome(rollout_outcome("x", T0, "personalized", 0.5)), src)
    restored = UserLinker(feed.linker.config)
    restored.load_state_dict(feed.linker.state_dict(), now_ms=0)
    restored.announce(0, 0, T0 + 3 * GAP)
    (link,) = restored.link_due()
    assert (link.prev.arm, link.prev.log_propensity) == ("personalized", 0.5)
