"""Exploration with wide and uniform lists and the logged log-propensity (model.policy, model.scoring).

The density is checked against independent references (numerical integration, torch's
MultivariateNormal, a histogram of the sampler itself), the mixture share against a seeded draw.
"""

from __future__ import annotations

import math

import pytest
import torch

from model.batch import ListBatch
from model.policy import Actor, ActorConfig, draw_exploration, exploration_noise, log_propensity
from model.ranker import RankerConfig
from model.scoring import ActorModel, score
from schemas import Exploration

WIDE = Exploration(noise_std=0.1, wide_std=1.0, wide_share=0.25)
MIXED = Exploration(noise_std=0.1, wide_std=1.0, wide_share=0.25, uniform_share=0.25)  # all three


def _mvn_log_prob(logits: torch.Tensor, weights: torch.Tensor, std: float, t: float) -> torch.Tensor:
    """Reference: y = log(w_k / w_K) ~ N((z_k - z_K) / T, (std / T)^2 (I + 1 1^T)), by torch."""
    z, w = logits.double(), weights.double()
    k = z.shape[-1]
    mean = (z[:, :-1] - z[:, -1:]) / t
    cov = (std / t) ** 2 * (
        torch.eye(k - 1, dtype=torch.float64) + torch.ones(k - 1, k - 1, dtype=torch.float64)
    )
    y = w[:, :-1].log() - w[:, -1:].log()
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(y)


def test_k3_density_matches_multivariate_normal_and_the_mixture() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 3, generator=g, dtype=torch.float64)
    weights = torch.softmax((logits + 0.8 * torch.randn(64, 3, generator=g, dtype=torch.float64)) / 0.7, -1)
    plain = log_propensity(logits, weights, Exploration(noise_std=0.3), temperature=0.7)
    assert torch.allclose(plain, _mvn_log_prob(logits, weights, 0.3, 0.7), atol=1e-10)
    assert torch.equal(plain, log_propensity(logits, weights, 0.3, temperature=0.7))  # a float: plain noise
    mixed = log_propensity(logits, weights, WIDE, temperature=0.7)
    narrow, wide = _mvn_log_prob(logits, weights, 0.1, 0.7), _mvn_log_prob(logits, weights, 1.0, 0.7)
    expected = torch.log(0.75 * narrow.exp() + 0.25 * wide.exp())
    assert torch.allclose(mixed, expected, atol=1e-10)


@pytest.mark.parametrize(
    "exploration",
    [
        Exploration(noise_std=0.4),
        WIDE,
        Exploration(0.0, 0.6, 0.5),
        MIXED,
        Exploration(0.0, 0.6, 0.25, 0.5),
        Exploration(0.0, uniform_share=1.0),
    ],
)
def test_k2_density_integrates_to_the_continuous_share(exploration: Exploration) -> None:
    """Over y = log(w_1 / w_2) the density integrates to 1, less a point-mass component's share."""
    t = 1.3
    logits = torch.tensor([[0.4, -0.2]], dtype=torch.float64)
    y = torch.linspace(-40.0, 40.0, 400_001, dtype=torch.float64)  # the uniform's tails are e^-|y|
    weights = torch.stack([torch.sigmoid(y), torch.sigmoid(-y)], -1)  # w_1 / w_2 = e^y
    dens = log_propensity(logits.expand(len(y), 2), weights, exploration, temperature=t).exp()
    total = torch.trapezoid(dens, y).item()
    e = exploration
    continuous = (1 - e.wide_share - e.uniform_share) * (e.noise_std > 0) + e.wide_share + e.uniform_share
    assert total == pytest.approx(continuous, abs=1e-6)


@pytest.mark.parametrize("exploration", [WIDE, MIXED])
def test_sampled_weights_follow_the_logged_density(exploration: Exploration) -> None:
    """A histogram of the explorer's own draws (K = 2) matches exp(log-propensity): the component
    draw, the two stds, the uniform weights and the density agree."""
    actor = Actor(ActorConfig(obs_dim=3, action_dim=2, temperature=0.8))
    obs = torch.randn(1, 3, generator=torch.Generator().manual_seed(1)).expand(200_000, 3)
    with torch.no_grad():
        w, noise, logp = actor.explore(obs, exploration, torch.Generator().manual_seed(2))
        z = actor.net(obs[:1]).double()
    y = (noise[:, 0] - noise[:, 1]).double() / 0.8  # y - mu, exactly
    edges = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)
    counts = torch.histc(y, bins=60, min=-3.0, max=3.0)
    centres = (edges[1:] + edges[:-1]) / 2
    mu = (z[0, 0] - z[0, 1]) / 0.8
    grid_w = torch.stack([torch.sigmoid(mu + centres), torch.sigmoid(-(mu + centres))], -1)
    dens = log_propensity(z.expand(60, 2), grid_w, exploration, temperature=0.8).exp()
    expected = dens * 0.1 * len(y)
    # bins where the narrow component piles up are steep: compare where the curve is smooth,
    # with a tolerance of 5 standard errors of a count
    smooth = centres.abs() > 0.5
    assert smooth.sum() > 40
    err = (counts.double() - expected)[smooth].abs() / expected[smooth].sqrt().clamp_min(1.0)
    assert err.max() < 5.0, err.max()
    # and what explore logged is the density of what it served
    again = log_propensity(z.expand(len(w), 2), w, exploration, temperature=0.8)
    assert torch.allclose(logp, again, atol=1e-3)


def test_mixture_share_is_realised_and_zero_noise_has_no_density() -> None:
    like = torch.zeros(20_000, 3)
    e = Exploration(noise_std=0.0, wide_std=1.0, wide_share=0.25)
    noise = exploration_noise(like, e, torch.Generator().manual_seed(0))
    wide = (noise != 0).any(-1)
    assert abs(wide.double().mean().item() - 0.25) < 0.015  # SE 0.003
    assert abs(noise[wide].std().item() - 1.0) < 0.03
    actor = Actor(ActorConfig(obs_dim=4, action_dim=3))
    obs = torch.randn(2_000, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, noise, logp = actor.explore(obs, e, torch.Generator().manual_seed(2))
    zero = (noise == 0).all(-1)
    assert 0 < zero.sum() < len(zero)
    assert logp[zero].isnan().all() and logp[~zero].isfinite().all()
    # mixed stds: the realised noise variance is (1 - share) * 0.1^2 + share * 1^2
    noise = exploration_noise(like, WIDE, torch.Generator().manual_seed(3))
    assert noise.var().item() == pytest.approx(0.75 * 0.01 + 0.25 * 1.0, rel=0.05)


def test_plain_exploration_draws_as_before_and_exploit_logs_nan() -> None:
    actor = Actor(ActorConfig(obs_dim=4, action_dim=2))
    obs = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, noise, logp = actor.explore(obs, 0.5, torch.Generator().manual_seed(3))
        _, same, _ = actor.explore(obs, Exploration(noise_std=0.5), torch.Generator().manual_seed(3))
        _, zero, nan = actor.explore(obs, 0.0)
    assert torch.equal(noise, 0.5 * torch.randn(8, 2, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(noise, same) and logp.isfinite().all() and logp.dtype == torch.float64
    assert torch.equal(zero, torch.zeros(8, 2)) and nan.isnan().all()
    tanh = Actor(ActorConfig(obs_dim=4, action_dim=2, head="tanh"))
    with torch.no_grad():
        _, tanh_noise, tanh_logp = tanh.explore(obs, WIDE, torch.Generator().manual_seed(3))
    assert tanh_noise.abs().sum() > 0 and tanh_logp.isnan().all()  # not objective weights


def test_score_logs_the_propensity_of_the_served_weights() -> None:
    cfg = RankerConfig.tiny(max_list_len=8)
    torch.manual_seed(0)
    model = ActorModel(cfg, ActorConfig(obs_dim=cfg.d_model, action_dim=2)).eval()
    batch = ListBatch.synthetic(cfg, 10, torch.Generator().manual_seed(0))
    out = score(model, batch, WIDE, torch.Generator().manual_seed(1))
    assert out.log_propensity.shape == (10,) and out.log_propensity.isfinite().all()
    state = model.ranker.user_state(batch.user_feats, batch.history, batch.context)
    with torch.no_grad():
        logits = model.actor.net(state)
    assert torch.allclose(out.log_propensity, log_propensity(logits, out.weights, WIDE), atol=1e-3)
    assert score(model, batch).log_propensity.isnan().all()  # no exploration: deterministic
    assert math.isfinite(score(model, batch, 0.2, torch.Generator().manual_seed(1)).log_propensity[0].item())


def _uniform_log_density(weights: torch.Tensor) -> torch.Tensor:
    """Reference for K = 3: Dirichlet(1, 1, 1) on (w_1, w_2) (torch) times |dw_{1,2} / dy| of
    w = softmax([y, 0]), the Jacobian taken by autograd."""
    w = weights.double()
    dirichlet = torch.distributions.Dirichlet(torch.ones(3, dtype=torch.float64)).log_prob(w)
    y = w[:, :-1].log() - w[:, -1:].log()
    zero = torch.zeros(1, dtype=torch.float64)
    jac = [
        torch.autograd.functional.jacobian(lambda v: torch.softmax(torch.cat([v, zero]), -1)[:2], row)
        for row in y
    ]
    return dirichlet + torch.stack([torch.linalg.det(j).abs().log() for j in jac])


def test_k3_uniform_component_is_the_dirichlet_density_with_its_jacobian() -> None:
    g = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(32, 3, generator=g, dtype=torch.float64)
    weights = torch.softmax(2 * torch.randn(32, 3, generator=g, dtype=torch.float64), -1)
    uniform = _uniform_log_density(weights)
    only = log_propensity(logits, weights, Exploration(0.0, uniform_share=1.0), temperature=0.7)
    assert torch.allclose(only, uniform, atol=1e-10)
    mixed = log_propensity(logits, weights, MIXED, temperature=0.7)
    narrow, wide = _mvn_log_prob(logits, weights, 0.1, 0.7), _mvn_log_prob(logits, weights, 1.0, 0.7)
    expected = torch.log(0.5 * narrow.exp() + 0.25 * wide.exp() + 0.25 * uniform.exp())
    assert torch.allclose(mixed, expected, atol=1e-10)


def test_component_shares_are_realised_and_uniform_rows_cover_the_simplex() -> None:
    n = 40_000
    draw = draw_exploration(torch.zeros(n, 3), MIXED, torch.Generator().manual_seed(0))
    assert abs(draw.uniform.double().mean().item() - 0.25) < 0.01  # SE 0.002
    assert torch.equal(draw.noise[draw.uniform], torch.zeros(int(draw.uniform.sum()), 3))
    # the Gaussian rows: a 2:1 mix of std 0.1 and std 1 (a third of them wide)
    gaussian = draw.noise[~draw.uniform]
    assert gaussian.var().item() == pytest.approx((0.5 * 0.01 + 0.25 * 1.0) / 0.75, rel=0.05)
    # a saturated actor (logits ~ +-12): only the uniform rows serve interior weights, and those
    # are Dirichlet(1, 1, 1): w_1 has mean 1/3 and variance 1/18
    actor = Actor(ActorConfig(obs_dim=3, action_dim=3, temperature=0.7))
    obs = torch.tensor([[12.0, -12.0, 0.0]]).expand(n, 3)
    with torch.no_grad():
        actor.net = torch.nn.Identity()  # type: ignore[assignment]  # logits = obs
        w, noise, logp = actor.explore(obs, MIXED, torch.Generator().manual_seed(1))
    interior = (w > 0.01).all(-1)
    assert abs(interior.double().mean().item() - 0.25 * 0.9409) < 0.01  # P(all w_k > 0.01) = 0.97^2
    w1 = w[interior, 1].double()
    assert abs(w1.mean().item() - 1 / 3) < 0.01 and abs(w1.var().item() - 1 / 18) < 0.005
    assert logp.isfinite().all()
    # the reported noise reproduces the served weights on every row, uniform ones included
    assert torch.allclose(torch.softmax((obs + noise) / 0.7, -1), w, atol=1e-6)
    uniform_rows = noise.abs().amax(-1) > 5  # (the narrow and wide rows never move a logit by 5)
    assert uniform_rows.double().mean().item() == pytest.approx(0.25, abs=0.01)


def test_old_configurations_draw_as_before_and_point_masses_stay_nan() -> None:
    like = torch.zeros(1_000, 3)
    # wide exploration without uniform lists: the normals, then one uniform per row, as before
    g = torch.Generator().manual_seed(5)
    eps, c = torch.randn(1_000, 3, generator=g), torch.rand(1_000, generator=g)
    expected = torch.where(c < 0.25, 1.0, 0.1).unsqueeze(-1) * eps
    assert torch.equal(exploration_noise(like, WIDE, torch.Generator().manual_seed(5)), expected)
    # zero base noise beside uniform lists: the base rows are a point mass (NaN), uniform ones have
    # a density
    actor = Actor(ActorConfig(obs_dim=4, action_dim=3))
    obs = torch.randn(2_000, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, noise, logp = actor.explore(
            obs, Exploration(0.0, uniform_share=0.5), torch.Generator().manual_seed(2)
        )
    zero = (noise == 0).all(-1)
    assert abs(zero.double().mean().item() - 0.5) < 0.05
    assert logp[zero].isnan().all() and logp[~zero].isfinite().all()
    # the tanh head's uniform rows are uniform on its action box
    tanh = Actor(ActorConfig(obs_dim=4, action_dim=2, head="tanh", action_scale=2.0))
    with torch.no_grad():
        a, _, _ = tanh.explore(obs, Exploration(0.0, uniform_share=1.0), torch.Generator().manual_seed(3))
    assert a.abs().max() <= 2.0 and a.mean().abs().max() < 0.1 and abs(a.var().item() - 4 / 3) < 0.1
