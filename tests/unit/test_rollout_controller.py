"""The rollout controller's state machine (rollout/controller.py): bootstrap, the off-policy gate,
canary, promote and rollback on list outcomes per arm, recovery from the latest decision, and
determinism: the same records give the same decisions."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Iterator, Sequence

import pytest

from rollout.controller import Controller, ControllerConfig, Decision, GateVerdict
from rollout.sequential import SequentialConfig
from schemas import ListOutcome, make_decision
from schemas.examples import EXAMPLE_HMAC_KEY, IMPRESSION


class Clock:
    def __init__(self, start_ms: int = 1_800_000_000_000) -> None:
        self.now = start_ms

    def __call__(self) -> int:
        return self.now


def config(**test: object) -> ControllerConfig:
    seq = {"alpha": 0.05, "max_drop": 0.2, "min_lists": 60, "max_lists": 5_000, "burn_in_lists": 20, **test}
    return ControllerConfig(canary_share=0.5, test=SequentialConfig(**seq), ope_lists=0)  # type: ignore[arg-type]


_ids = itertools.count()


def outcome(
    arm: str | None,
    version: int,
    ts_ms: int,
    clicks: int,
    dwell_s: float = 0.0,
    request_id: str | None = None,
    user: str | None = None,
) -> ListOutcome:
    """A joined list of 3 items with ``clicks`` clicks (on the first positions) and ``dwell_s``,
    of ``user`` (default: a user of its own)."""
    n = next(_ids)
    rid = request_id or f"req-{n}"
    imp = dataclasses.replace(
        IMPRESSION,
        request_id=rid,
        user_id=user or f"user-{n}",
        ts_ms=ts_ms,
        snapshot_version=version,
        arm=arm,
    )
    click = [1 if i < clicks else 0 for i in range(3)]
    dwell = [int(dwell_s * 1000) if i == 0 and clicks else 0 for i in range(3)]
    return ListOutcome(
        request_id=rid,
        user_id=imp.user_id,
        ts_ms=ts_ms,
        closed_at_ms=ts_ms + 4_000,
        impression=imp,
        clicks=tuple(click),
        dwell_ms=tuple(dwell),
        complete=True,
    )


def traffic(
    rng: random.Random, candidate: int, incumbent: int, ts_ms: int, canary_ctr: float, lists: int
) -> Iterator[ListOutcome]:
    """``lists`` lists alternating canary / personalized (plus holdout and stray ones that must not
    count), clicks per item ~ Bernoulli: 0.3 for the incumbent, ``canary_ctr`` for the candidate."""
    for i in range(lists):
        canary = i % 2 == 0
        p = canary_ctr if canary else 0.3
        clicks = sum(rng.random() < p for _ in range(3))
        dwell = sum(rng.uniform(5, 60) for _ in range(clicks))
        yield outcome(
            "canary" if canary else "personalized",
            candidate if canary else incumbent,
            ts_ms + i,
            clicks,
            dwell,
        )
        if i % 10 == 0:
            yield outcome("holdout", incumbent, ts_ms + i, 0)  # holdout lists never count
            yield outcome("canary", incumbent, ts_ms + i, 0)  # a node that did not hold the candidate yet


def run_until_decision(c: Controller, lists: Iterator[ListOutcome]) -> Decision | None:
    for o in lists:
        c.list_outcome(o)
        d = c.step()
        if d is not None:
            return d
    return None


def test_bootstrap_then_canary_then_promote_a_neutral_candidate() -> None:
    clock = Clock()
    c = Controller(config(), clock=clock)
    assert c.step() is None  # nothing to serve yet
    c.snapshot_verified(3)
    c.snapshot_verified(5)
    boot = c.step()
    assert boot is not None and (boot.decision, boot.version, boot.incumbent, boot.candidate) == (
        "bootstrap",
        5,
        5,
        None,
    )
    assert c.step() is None  # 3 is older than the incumbent: never a candidate
    c.snapshot_verified(6)
    clock.now += 1000
    canary = c.step()
    assert canary is not None and canary.decision == "canary"
    assert (canary.version, canary.incumbent, canary.candidate, canary.canary_share) == (6, 5, 6, 0.5)
    assert canary.canary_started_at_ms == clock.now
    c.snapshot_verified(7)  # a newer snapshot waits until the canary of 6 is decided
    assert c.step() is None
    promote = run_until_decision(c, traffic(random.Random(1), 6, 5, clock.now, 0.3, 4000))
    assert promote is not None and promote.decision == "promote"
    assert (promote.version, promote.incumbent, promote.candidate, promote.canary_started_at_ms) == (
        6,
        6,
        None,
        None,
    )
    assert promote.evidence["lists.canary"] >= 60 and promote.evidence["click.lower"] > -0.2
    assert "non-inferior" in promote.reason
    nxt = c.step()
    assert nxt is not None and (nxt.decision, nxt.version, nxt.incumbent) == ("canary", 7, 6)


def test_a_harmful_candidate_is_rolled_back_and_never_a_candidate_again() -> None:
    clock = Clock()
    c = Controller(config(), clock=clock)
    c.snapshot_verified(1)
    c.step()
    c.snapshot_verified(2)
    c.step()
    rollback = run_until_decision(c, traffic(random.Random(2), 2, 1, clock.now, 0.1, 4000))
    assert rollback is not None and rollback.decision == "rollback"
    assert (rollback.version, rollback.incumbent, rollback.candidate, rollback.rejected) == (2, 1, None, (2,))
    assert rollback.evidence["click.upper"] < -0.2
    assert rollback.reason.startswith("guard-rail crossed")
    # counted: canary and personalized lists only; holdout and incumbent-served canary lists not
    assert rollback.evidence["lists.canary"] == pytest.approx(rollback.evidence["lists.personalized"], abs=1)
    assert c.step() is None  # 2 is rejected; nothing newer
    c.snapshot_verified(3)
    assert c.step().decision == "canary"  # type: ignore[union-attr]


def test_lists_before_the_canary_and_duplicates_do_not_count() -> None:
    clock = Clock()
    c = Controller(config(), clock=clock)
    c.snapshot_verified(1)
    c.step()
    c.snapshot_verified(2)
    start = clock.now
    c.step()
    assert c.list_outcome(outcome("personalized", 1, start - 1, 1)).arm == "early"
    first = outcome("canary", 2, start, 1, request_id="req-dup")
    assert c.list_outcome(first).arm == "canary"
    assert c.list_outcome(first).arm == "duplicate"  # the streams worker re-emitted it
    assert c.list_outcome(outcome("canary", 9, start, 1)).arm == "other"
    assert c.canary.lists == 1 and c.personalized.lists == 0
    # a user's lists are one unit of the variance (the arms are assigned per user)
    c.list_outcome(outcome("canary", 2, start, 0, user=first.user_id))
    assert (c.canary.lists, c.canary.units) == (2, 1)


def test_max_lists_rolls_back_an_undecided_canary() -> None:
    clock = Clock()
    c = Controller(config(max_drop=0.0, min_lists=30, max_lists=40), clock=clock)
    c.snapshot_verified(1)
    c.step()
    c.snapshot_verified(2)
    c.step()
    d = run_until_decision(c, traffic(random.Random(3), 2, 1, clock.now, 0.3, 1000))
    assert d is not None and d.decision == "rollback" and "undecided" in d.reason
    assert d.evidence["lists.canary"] == 40


def test_the_off_policy_gate_waits_for_logs_and_rejects_before_any_user_sees_the_candidate() -> None:
    seen: list[tuple[int, int]] = []

    def gate(version: int, logged: Sequence[ListOutcome]) -> GateVerdict:
        seen.append((version, len(logged)))
        ok = version != 3
        return GateVerdict(
            ok, {"ope.click.rel_dr_hi": -0.5 if not ok else 0.1}, f"ope: {'ok' if ok else 'worse'}"
        )

    clock = Clock()
    cfg = dataclasses.replace(config(), ope_lists=100, ope_min_lists=50)
    c = Controller(cfg, clock=clock, ope_gate=gate)
    c.snapshot_verified(2)
    c.step()
    c.snapshot_verified(3)
    assert c.step() is None  # no logs of the incumbent yet: the gate cannot judge
    for i in range(200):  # only the incumbent's personalized lists are logs; the newest 100 kept
        c.list_outcome(outcome("personalized", 2, clock.now + i, 1))
        c.list_outcome(outcome("holdout", 2, clock.now + i, 1))
    reject = c.step()
    assert reject is not None and reject.decision == "reject_ope"
    assert (reject.version, reject.incumbent, reject.candidate, reject.rejected) == (3, 2, None, (3,))
    assert reject.evidence == {"ope.click.rel_dr_hi": -0.5} and reject.reason == "ope: worse"
    assert seen == [(3, 100)]
    c.snapshot_verified(4)
    canary = c.step()
    assert canary is not None and canary.decision == "canary" and canary.reason.endswith("ope: ok")


def test_recovery_reopens_the_canary_and_replayed_records_give_the_same_decision() -> None:
    """A controller that restarts from the latest decision (the canary) and is fed the canary's
    list outcomes again decides as the one that never stopped."""
    records = list(traffic(random.Random(4), 8, 7, 1_800_000_100_000, 0.12, 3000))

    def fresh() -> tuple[Controller, Decision]:
        clock = Clock(1_800_000_000_000)
        c = Controller(config(), clock=clock)
        c.snapshot_verified(7)
        c.step()
        c.snapshot_verified(8)
        clock.now = 1_800_000_100_000
        canary = c.step()
        assert canary is not None
        return c, canary

    uninterrupted, canary = fresh()
    expected = run_until_decision(uninterrupted, iter(records))
    assert expected is not None and expected.decision == "rollback"

    signed = make_decision(**canary.fields(), key=EXAMPLE_HMAC_KEY, key_id="default")
    restarted = Controller(config(), clock=Clock(1_800_000_200_000))
    restarted.recover(signed)
    assert restarted.replay_from_ms == canary.canary_started_at_ms
    assert restarted.serving.candidate == 8 and restarted.serving.incumbent == 7
    assert canary.canary_started_at_ms is not None
    early = [outcome("canary", 8, canary.canary_started_at_ms - 5, 0)]  # re-read margin: filtered
    again = run_until_decision(restarted, iter(early + records))
    assert again is not None
    same = ("decision", "version", "incumbent", "candidate", "rejected", "evidence", "reason")
    assert {k: getattr(again, k) for k in same} == {k: getattr(expected, k) for k in same}


def test_state_dict_round_trip() -> None:
    clock = Clock()
    c = Controller(config(), clock=clock)
    c.snapshot_verified(1)
    c.step()
    c.snapshot_verified(2)
    c.step()
    for o in itertools.islice(traffic(random.Random(5), 2, 1, clock.now, 0.3, 40), 30):
        c.list_outcome(o)
    copy = Controller(config(), clock=clock)
    copy.load_state_dict(c.state_dict())
    assert copy.state_dict() == c.state_dict()
    assert copy.serving == c.serving
    o = outcome("canary", 2, clock.now, 1)
    assert copy.list_outcome(o) == c.list_outcome(o)


def test_config_from_settings_and_bad_values() -> None:
    from base.settings import Settings

    s = Settings(canary_share=0.3, rollout_max_drop=0.1, rollout_min_lists=10, rollout_ope_lists=0)
    cfg = ControllerConfig.from_settings(s)
    assert (cfg.canary_share, cfg.test.max_drop, cfg.test.min_lists, cfg.test.burn_in_lists) == (
        0.3,
        0.1,
        10,
        10,
    )
    assert cfg.ope_lists == 0 and cfg.ope_min_lists == 0
    with pytest.raises(ValueError, match="canary_share"):
        ControllerConfig(canary_share=0.0)
