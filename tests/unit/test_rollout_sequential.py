"""The canary's sequential test (rollout/sequential.py): its error rate with peeking after every
list, measured on many seeded simulated streams, and its decisions on harmful and neutral canaries.

The streams are vectorized (cumulative per-list sums, every prefix is one look), and they go
through the same functions the controller calls (``relative_change``, ``decide``); the first
test checks that the controller's scalar path (``ArmSums`` + ``verdict``) gives the same numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rollout.sequential import (
    CONTINUE,
    PROMOTE,
    ROLLBACK,
    ArmSums,
    SequentialConfig,
    decide,
    reason,
    relative_change,
    verdict,
)

OBJECTIVES = ("click", "dwell")
LIST_LEN = 10


def simulated_lists(
    rng: np.random.Generator, shape: tuple[int, ...], click_factor: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lists like the simulator's: 10 impressions, clicks ~ Binomial(10, p) with p ~ Beta per
    list (heterogeneous users), dwell = clicks x a log-normal read time. ``click_factor`` scales
    the click probability (0.7: a canary with 30% fewer clicks, and so less dwell)."""
    p = np.clip(rng.beta(2.0, 18.0, size=shape) * click_factor, 0.0, 1.0)
    clicks = rng.binomial(LIST_LEN, p).astype(np.float64)
    dwell = clicks * rng.lognormal(np.log(30.0), 0.8, size=shape)
    return np.full(shape, float(LIST_LEN)), clicks, dwell


def arm_sums(mask: np.ndarray, n: np.ndarray, ys: tuple[np.ndarray, ...]) -> list[tuple[np.ndarray, ...]]:
    """Per objective, the six cumulative sums of the lists where ``mask`` (every prefix = a look)."""
    m = mask.astype(np.float64)
    lists, sn, snn = (np.cumsum(x, axis=-1) for x in (m, m * n, m * n * n))
    return [
        (
            lists,
            sn,
            snn,
            np.cumsum(m * y, axis=-1),
            np.cumsum(m * y * y, axis=-1),
            np.cumsum(m * y * n, axis=-1),
        )
        for y in ys
    ]


def run_streams(
    cfg: SequentialConfig,
    seed: int,
    streams: int,
    looks: int,
    canary_click_factor: float = 1.0,
    share: float = 0.5,
) -> dict[str, np.ndarray]:
    """``streams`` canaries of ``looks`` lists each (a list goes to the canary with ``share``),
    a look after every list. Per stream: the first decision, and whether some objective's
    sequence ever missed the true change (under H0: 0) from above or below."""
    rng = np.random.default_rng(seed)
    shape = (streams, looks)
    canary = rng.random(shape) < share
    n, clicks_p, dwell_p = simulated_lists(rng, shape)
    _, clicks_c, dwell_c = simulated_lists(rng, shape, canary_click_factor)
    clicks, dwell = np.where(canary, clicks_c, clicks_p), np.where(canary, dwell_c, dwell_p)
    sums_c = arm_sums(canary, n, (clicks, dwell))
    sums_p = arm_sums(~canary, n, (clicks, dwell))
    a = cfg.alpha / len(OBJECTIVES)
    lowers, uppers = [], []
    for k in range(len(OBJECTIVES)):
        _, _, _, lo, hi = relative_change(sums_c[k], sums_p[k], cfg.tau, a)
        lowers.append(lo)
        uppers.append(hi)
    lower, upper = np.stack(lowers), np.stack(uppers)
    lists_c, lists_p = sums_c[0][0], sums_p[0][0]
    codes = decide(lower, upper, lists_c, lists_p, cfg)  # (streams, looks)
    decided = codes != CONTINUE
    first = np.where(decided.any(axis=1), decided.argmax(axis=1), looks - 1)
    first_code = codes[np.arange(streams), first]
    burned_in = np.minimum(lists_c, lists_p) >= cfg.burn_in_lists
    return {
        "first": first_code,
        "at": first,
        "missed_above": ((upper < 0.0).any(axis=0) & burned_in).any(axis=1),
        "missed_below": ((lower > 0.0).any(axis=0) & burned_in).any(axis=1),
    }


def test_scalar_path_equals_the_vectorized_one() -> None:
    """ArmSums + verdict (what the controller runs per list) give the vectorized path's bounds."""
    cfg = SequentialConfig(alpha=0.05, max_drop=0.1, min_lists=50, max_lists=10_000)
    rng = np.random.default_rng(7)
    n, clicks, dwell = simulated_lists(rng, (400,))
    canary = rng.random(400) < 0.3
    c, p = ArmSums(2), ArmSums(2)
    for i in range(400):
        (c if canary[i] else p).add(int(n[i]), (float(clicks[i]), float(dwell[i])))
    v = verdict(OBJECTIVES, c, p, cfg)
    sums_c = arm_sums(canary, n, (clicks, dwell))
    sums_p = arm_sums(~canary, n, (clicks, dwell))
    for k, name in enumerate(OBJECTIVES):
        mc, mp, r, lo, hi = relative_change(
            tuple(s[-1] for s in sums_c[k]), tuple(s[-1] for s in sums_p[k]), cfg.tau, cfg.alpha / 2
        )
        b = v.bounds[name]
        assert (b.canary, b.personalized, b.change, b.lower, b.upper) == pytest.approx(
            (float(mc), float(mp), float(r), float(lo), float(hi)), rel=1e-9
        )
        assert b.lower < b.change < b.upper
    assert v.lists_canary == int(canary.sum())


def test_false_decision_rate_under_h0_with_peeking_after_every_list() -> None:
    """Identical arms, 500 seeded streams of 3000 lists, a look after every list.

    With max_drop = 0 a rollback needs an upper bound below 0 = the true change: the harshest
    guard-rail, so this measures the false-rollback rate itself; every miss of either bound is
    counted too. Both stay at or below alpha. The same streams with a fixed-sample 95% interval
    (no correction for peeking) miss far more often: the measurement can fail."""
    cfg = SequentialConfig(alpha=0.05, max_drop=0.0, min_lists=200, max_lists=1_000_000)
    chunks = [run_streams(cfg, seed, 100, 3000) for seed in range(5)]
    first = np.concatenate([c["first"] for c in chunks])
    missed = np.concatenate([c["missed_above"] | c["missed_below"] for c in chunks])
    false_rollback = float((first == ROLLBACK).mean())
    any_miss = float(missed.mean())
    print(f"H0, 500 streams x 3000 lists: false rollbacks {false_rollback:.3f}, any miss {any_miss:.3f}")
    assert false_rollback <= cfg.alpha
    assert any_miss <= cfg.alpha

    # the naive interval, peeked at after every list, on the same kind of streams
    naive = SequentialConfig(alpha=0.05, max_drop=0.0, min_lists=200, max_lists=1_000_000)
    rng = np.random.default_rng(99)
    shape = (200, 3000)
    canary = rng.random(shape) < 0.5
    n, clicks, _ = simulated_lists(rng, shape)
    from rollout.sequential import ratio_and_variance

    mc, vc = ratio_and_variance(*arm_sums(canary, n, (clicks,))[0])
    mp, vp = ratio_and_variance(*arm_sums(~canary, n, (clicks,))[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (mc / mp - 1.0) / np.sqrt((vc + (mc / mp) ** 2 * vp) / mp**2)
    looked = np.minimum(arm_sums(canary, n, (clicks,))[0][0], arm_sums(~canary, n, (clicks,))[0][0])
    naive_miss = float(((np.abs(z) > 1.96) & (looked >= naive.burn_in_lists)).any(axis=1).mean())
    print(f"fixed-sample 95% interval peeked at after every list: misses {naive_miss:.3f}")
    assert naive_miss > 2 * cfg.alpha


def test_a_harmful_canary_is_rolled_back_and_a_neutral_one_promoted() -> None:
    cfg = SequentialConfig(alpha=0.05, max_drop=0.15, min_lists=200, max_lists=20_000)
    harmful = run_streams(cfg, seed=11, streams=100, looks=6000, canary_click_factor=0.7)
    assert (harmful["first"] == ROLLBACK).mean() >= 0.95
    rolled = harmful["first"] == ROLLBACK
    median = np.median(harmful["at"][rolled])
    print(f"-30% clicks: rolled back in {rolled.mean():.2f}, median at list {median:.0f}")

    # the same guard-rail needs more lists to show non-inferiority than to see a 30% fall
    # (in chunks of 25 streams: 14000 looks each, a few arrays of 350k floats at a time)
    chunks = [run_streams(cfg, seed=seed, streams=25, looks=14_000) for seed in range(12, 16)]
    first, at = np.concatenate([c["first"] for c in chunks]), np.concatenate([c["at"] for c in chunks])
    promoted = first == PROMOTE
    print(f"neutral: promoted in {promoted.mean():.2f}, median at list {np.median(at[promoted]):.0f}")
    assert (first == ROLLBACK).mean() <= cfg.alpha
    assert promoted.mean() >= 0.9


def test_max_lists_rolls_back_an_undecided_canary_and_burn_in_holds_back() -> None:
    cfg = SequentialConfig(alpha=0.05, max_drop=0.05, min_lists=40, max_lists=60, burn_in_lists=30)
    inf = math.inf
    # nothing known: continue; both arms at max_lists, still undecided: roll back
    assert decide([[-inf], [-inf]], [[inf], [inf]], [59], [100], cfg)[0] == CONTINUE
    assert decide([[-inf], [-inf]], [[inf], [inf]], [60], [60], cfg)[0] == ROLLBACK
    # a crossed guard-rail before burn-in is not acted on
    assert decide([[-0.9], [-0.1]], [[-0.5], [0.1]], [29], [100], cfg)[0] == CONTINUE
    assert decide([[-0.9], [-0.1]], [[-0.5], [0.1]], [30], [100], cfg)[0] == ROLLBACK
    # promotion needs min_lists and every objective's lower bound above -max_drop
    assert decide([[-0.01], [-0.04]], [[0.1], [0.1]], [39], [39], cfg)[0] == CONTINUE
    assert decide([[-0.01], [-0.04]], [[0.1], [0.1]], [40], [40], cfg)[0] == PROMOTE
    assert decide([[-0.01], [-0.06]], [[0.1], [0.1]], [40], [40], cfg)[0] == CONTINUE


def test_verdict_is_deterministic_and_explains_itself() -> None:
    cfg = SequentialConfig(alpha=0.05, max_drop=0.1, min_lists=50, max_lists=10_000)

    def arms() -> tuple[ArmSums, ArmSums]:
        rng = np.random.default_rng(3)
        c, p = ArmSums(2), ArmSums(2)
        n, clicks, dwell = simulated_lists(rng, (600,))
        _, worse, worse_dwell = simulated_lists(rng, (600,), click_factor=0.5)
        for i in range(600):
            if i % 2:
                c.add(int(n[i]), (float(worse[i]), float(worse_dwell[i])))
            else:
                p.add(int(n[i]), (float(clicks[i]), float(dwell[i])))
        return c, p

    first, second = verdict(OBJECTIVES, *arms(), cfg), verdict(OBJECTIVES, *arms(), cfg)
    assert first == second
    assert first.decision == ROLLBACK
    text = reason(first, cfg)
    assert text.startswith("guard-rail crossed: click") and "300 canary / 300 personalized" in text
    evidence = first.evidence()
    assert evidence["lists.canary"] == 300 and evidence["click.upper"] < -0.1
    assert all(math.isfinite(x) for x in evidence.values())


def test_arm_sums_round_trip_and_reject_bad_input() -> None:
    a = ArmSums(2)
    a.add(10, (2.0, 61.5))
    a.add(8, (0.0, 0.0))
    b = ArmSums(2)
    b.load_state_dict(a.state_dict())
    assert b == a
    assert a.value(0) == pytest.approx(2 / 18)
    with pytest.raises(ValueError, match="expected 2 objective values"):
        a.add(10, (1.0,))
    with pytest.raises(ValueError, match="rollout_min_lists"):
        SequentialConfig(min_lists=10, burn_in_lists=30)
    with pytest.raises(ValueError, match="rollout_alpha"):
        SequentialConfig(alpha=0.0)


def clustered_false_rollbacks(unit_is_user: bool, streams: int = 100, lists: int = 2000) -> float:
    """H0 with returning users: 100 heterogeneous users per stream (their own click rate and read
    time), split into the arms by a coin per user, every list from a random user; the scalar path
    the controller runs (ArmSums + verdict), a look every 20 lists, max_drop 0 (the harshest)."""
    cfg = SequentialConfig(alpha=0.05, max_drop=0.0, min_lists=200, max_lists=1_000_000)
    rng = np.random.default_rng(2024)
    rolled = 0
    for _ in range(streams):
        p_user = rng.beta(2.0, 18.0, size=100)
        read_user = rng.lognormal(np.log(30.0), 0.5, size=100)
        in_canary = rng.random(100) < 0.5
        users = rng.integers(0, 100, size=lists)
        clicks = rng.binomial(LIST_LEN, p_user[users]).astype(float)
        dwell = clicks * rng.lognormal(np.log(read_user[users]), 0.8)
        c, p = ArmSums(2), ArmSums(2)
        for i, u in enumerate(users):
            arm = c if in_canary[u] else p
            arm.add(LIST_LEN, (float(clicks[i]), float(dwell[i])), f"user-{u}" if unit_is_user else None)
            if i % 20 == 19 and verdict(OBJECTIVES, c, p, cfg).decision == ROLLBACK:
                rolled += 1
                break
    return rolled / streams


def test_users_not_lists_are_the_units_when_users_return() -> None:
    """Counted as independent lists, the variance misses the users' own tastes (the arms differ by
    which users they hold): the false-rollback rate under H0 goes well above alpha. Pooled per
    user, as the controller counts them, it stays within alpha."""
    by_user, by_list = clustered_false_rollbacks(True), clustered_false_rollbacks(False)
    print(f"H0, 100 returning users: false rollbacks {by_user:.2f} by user, {by_list:.2f} by list")
    assert by_user <= 0.05
    assert by_list > 2 * 0.05
