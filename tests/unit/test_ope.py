"""Off-policy estimators (rollout/ope.py) on a synthetic bandit whose value is known: lists with a
user state x, weights logged by the serving draw (model.policy, the learner's default exploration
shape), clicks and dwell from known means; the target's value is the mean outcome under its own
draws over many states (no outcome noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.policy import ActorConfig, SimplexHead
from rollout.ope import (
    OUTCOMES,
    GateConfig,
    LoggedLists,
    TargetPolicy,
    cluster_se,
    doubly_robust,
    judge,
    on_policy,
    ratios,
    relative,
    snips,
)
from schemas import Exploration

LOGGING = Exploration(noise_std=0.1, uniform_share=0.25)
TARGET = Exploration(noise_std=0.3)
ITEMS = 10


def click_p(x: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """P(click) per item: rises with the click weight, more so for users with x0 > 0."""
    return 1.0 / (1.0 + np.exp(-(-2.0 + 2.0 * w1 + 1.0 * x[:, 0] * (w1 - 0.5))))


def dwell_s(x: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """Mean dwell seconds per click: falls with the click weight."""
    return 20.0 * (1.5 - w1) * np.exp(0.3 * x[:, 1])


def personalized_logits(x: np.ndarray, offset: float = 0.0) -> torch.Tensor:
    """Click-minus-dwell logit offset + 1.5 x0: click seekers (x0 > 0) get the click weight."""
    c = offset + 1.5 * x[:, 0]
    return torch.from_numpy(np.stack([c / 2, -c / 2], axis=1))


def draw(weights_head: torch.Tensor, exploration: Exploration, seed: int) -> tuple[np.ndarray, np.ndarray]:
    w, _, logp = SimplexHead(ActorConfig(action_dim=2)).explore(
        weights_head, exploration, torch.Generator().manual_seed(seed)
    )
    return w.double().numpy(), logp.numpy()


def bandit(
    n_users: int, per_user: int, seed: int, logging_logits: torch.Tensor | None = None
) -> tuple[LoggedLists, np.ndarray]:
    """Logged lists of the (0.5, 0.5) logging policy (or ``logging_logits``) and their states x."""
    rng = np.random.default_rng(seed)
    clusters = np.repeat(np.arange(n_users), per_user)
    x = rng.standard_normal((n_users, 2))[clusters]
    n = len(clusters)
    z = torch.zeros(n, 2, dtype=torch.float64) if logging_logits is None else logging_logits
    w, logp = draw(z, LOGGING, seed)
    p = click_p(x, w[:, 0])
    clicks = rng.binomial(ITEMS, p)
    dwell = np.where(clicks > 0, rng.gamma(2.0 * np.maximum(clicks, 1), dwell_s(x, w[:, 0]) / 2.0), 0.0)
    logged = LoggedLists(
        outcomes=np.stack([clicks, dwell], axis=1).astype(np.float64),
        impressions=np.full(n, float(ITEMS)),
        weights=w,
        log_propensity=logp,
        state=x,
        clusters=clusters,
    )
    return logged, x


def true_value(offset: float = 0.0, n: int = 400_000) -> np.ndarray:
    """The target's (CTR, dwell s per impression): mean outcome over its own draws on fresh states."""
    x = np.random.default_rng(99).standard_normal((n, 2))
    w = TargetPolicy(personalized_logits(x, offset), TARGET).sample(1, seed=7)[0]
    p = click_p(x, w[:, 0])
    return np.array([p.mean(), (p * dwell_s(x, w[:, 0])).mean()])


def target_on(x: np.ndarray, offset: float = 0.0) -> TargetPolicy:
    return TargetPolicy(personalized_logits(x, offset), TARGET)


def test_snips_of_the_logging_policy_is_its_on_policy_value() -> None:
    logged, _ = bandit(300, 4, seed=0)
    same = TargetPolicy(torch.zeros(len(logged), 2, dtype=torch.float64), LOGGING)
    r, ess = ratios(logged, same.log_density(logged.weights))
    assert np.allclose(r, 1.0) and ess == pytest.approx(len(logged))
    s, base = snips(logged, same.log_density(logged.weights)), on_policy(logged)
    for j in OUTCOMES:
        assert s.values[j].value == pytest.approx(base.values[j].value, rel=1e-12)
        assert s.values[j].se == pytest.approx(base.values[j].se, rel=1e-9)
    rel = relative(s, base)  # paired on the same lists: exactly 0 and no width
    assert all(abs(rel[j].value) < 1e-12 and rel[j].se < 1e-12 for j in OUTCOMES)


def test_dr_of_the_logging_policy_is_close_to_its_on_policy_value() -> None:
    logged, _ = bandit(500, 4, seed=1)
    same = TargetPolicy(torch.zeros(len(logged), 2, dtype=torch.float64), LOGGING)
    dr, base = doubly_robust(logged, same, seed=0), on_policy(logged)
    for j in OUTCOMES:
        # with r = 1 DR is the on-policy mean plus mean(E q - q(w_i)): a mean-zero control term
        assert abs(dr.values[j].value - base.values[j].value) < 0.5 * base.values[j].se
        assert dr.values[j].se < 1.05 * base.values[j].se


def test_estimates_cover_the_value_of_a_synthetic_bandit() -> None:
    truth = true_value()
    reps = [bandit(1000, 4, seed=100 + i) for i in range(40)]
    for name in ("snips", "dr"):
        est = []
        for logged, x in reps:
            target = target_on(x)
            res = (
                snips(logged, target.log_density(logged.weights))
                if name == "snips"
                else doubly_robust(logged, target, seed=0)
            )
            est.append([(res.values[j].value, res.values[j].lo, res.values[j].hi) for j in OUTCOMES])
        a = np.array(est)  # (reps, J, 3)
        covered = ((a[:, :, 1] <= truth) & (truth <= a[:, :, 2])).sum(0)
        assert (covered >= 34).all(), (name, covered)  # of 40 at 95%: P(< 34) ~ 1%
        # unbiased: the mean of 40 estimates within 3 of its standard errors of the truth
        mean, sem = a[:, :, 0].mean(0), a[:, :, 0].std(0, ddof=1) / math.sqrt(len(a))
        assert (np.abs(mean - truth) < 3 * sem).all(), (name, mean, truth, sem)
    # and the target differs from the logging policy (else covering it would prove little)
    logging_value = np.mean([on_policy(logged).value() for logged, _ in reps], axis=0)
    assert abs(truth[0] / logging_value[0] - 1) > 0.05


def test_target_draws_are_the_serving_draws() -> None:
    x = np.random.default_rng(9).standard_normal((500, 2))
    for exploration in (TARGET, LOGGING):
        target = TargetPolicy(personalized_logits(x), exploration)
        served, _ = draw(target.logits.repeat(3, 1), exploration, seed=11)
        assert np.allclose(target.sample(3, seed=11).reshape(-1, 2), served, atol=1e-12)


def test_point_mass_lists_have_ratio_zero() -> None:
    logged, x = bandit(300, 4, seed=2)
    extra, x2 = bandit(100, 4, seed=3)
    nan = np.full(len(extra), math.nan)  # the same lists, as if served from a point mass
    both = LoggedLists(
        outcomes=np.concatenate([logged.outcomes, extra.outcomes]),
        impressions=np.concatenate([logged.impressions, extra.impressions]),
        weights=np.concatenate([logged.weights, extra.weights]),
        log_propensity=np.concatenate([logged.log_propensity, nan]),
        state=np.concatenate([logged.state, extra.state]),
        clusters=np.concatenate([logged.clusters, extra.clusters + 300]),
    )
    assert both.point_mass == len(extra)
    target, target_both = target_on(x), target_on(np.concatenate([x, x2]))
    r, ess = ratios(both, target_both.log_density(both.weights))
    assert (r[len(logged) :] == 0).all() and (r[: len(logged)] > 0).all()
    assert ess == pytest.approx(ratios(logged, target.log_density(logged.weights))[1])
    alone = snips(logged, target.log_density(logged.weights))
    with_them = snips(both, target_both.log_density(both.weights))
    assert with_them.value() == pytest.approx(alone.value(), rel=1e-12)
    assert np.isfinite(doubly_robust(both, target_both).value()).all()


def test_clipping_caps_the_ratios() -> None:
    logged, x = bandit(300, 4, seed=4)
    log_p1 = target_on(x).log_density(logged.weights)
    raw = np.exp(log_p1 - logged.log_propensity)
    r, ess = ratios(logged, log_p1, clip=5.0)
    assert raw.max() > 5.0
    assert np.allclose(r / r.max(), np.minimum(raw, 5.0) / min(raw.max(), 5.0))
    assert ess > ratios(logged, log_p1)[1]


def test_cluster_se_is_the_iid_formula_for_single_lists_and_grows_when_lists_repeat() -> None:
    rng = np.random.default_rng(5)
    psi = rng.standard_normal((400, 2))
    n = len(psi)
    iid = np.sqrt(n / (n - 1) * (psi**2).sum(0)) / n
    assert cluster_se(psi, np.arange(n)) == pytest.approx(iid)
    repeated = np.repeat(psi[:100], 4, axis=0)  # 100 users, each list 4 times: 2x the iid se
    wide = cluster_se(repeated, np.repeat(np.arange(100), 4))
    assert wide == pytest.approx(2 * cluster_se(repeated, np.arange(400)), rel=0.02)


def test_gate_rejects_a_harmful_target_and_passes_the_incumbent() -> None:
    logged, x = bandit(1500, 4, seed=6)
    harmful = target_on(x, offset=-2.0)  # click weight ~0.1 at x0 = 0: clicks fall by about a third
    cfg = GateConfig(min_ess=50)
    verdict = judge(logged, harmful, cfg)
    assert not verdict.ok and "click" in verdict.reason and "dwell" not in verdict.reason
    assert verdict.evidence["ope.click.rel_dr_hi"] < -cfg.max_drop < verdict.evidence["ope.dwell.rel_dr_hi"]
    assert verdict.evidence["ope.ess"] > cfg.min_ess
    assert judge(logged, harmful, cfg).evidence == verdict.evidence  # deterministic
    same = TargetPolicy(torch.zeros(len(logged), 2, dtype=torch.float64), LOGGING)
    ok = judge(logged, same, GateConfig())
    assert ok.ok and ok.evidence["ope.click.rel_snips"] == pytest.approx(0.0, abs=1e-12)
    # guarding dwell only, the harmful target passes; an ESS floor above its ESS: not judged
    assert judge(logged, harmful, GateConfig(objectives=("dwell",), min_ess=50)).ok
    floor = judge(logged, harmful, GateConfig(min_ess=1e9))
    assert floor.ok and "not judged" in floor.reason


def test_gate_evidence_is_finite_when_intervals_are_not() -> None:
    logged, x = bandit(1, 600, seed=10)  # one user: no cluster-robust interval
    verdict = judge(logged, target_on(x), GateConfig(min_ess=1))
    assert verdict.ok and "ope.click.dr" in verdict.evidence and "ope.click.dr_hi" not in verdict.evidence
    assert all(math.isfinite(v) for v in verdict.evidence.values())


def test_a_target_without_a_density_is_refused_by_name() -> None:
    logged, x = bandit(50, 2, seed=8)
    with pytest.raises(ValueError, match="exploration"):
        TargetPolicy(personalized_logits(x), Exploration(noise_std=0.0)).log_density(logged.weights)
    with pytest.raises(ValueError, match="objectives"):
        judge(logged, target_on(x), GateConfig(objectives=("revenue",)))
