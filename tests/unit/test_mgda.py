"""min_norm against an independent solver (scipy SLSQP) and on the known edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from learner.mgda import RunningGradScale, min_norm, normalize_grads, weighted_norm


def slsqp_min_norm(grads: np.ndarray, lower: np.ndarray | None = None) -> float:
    """Optimal ||sum_k w_k g_k|| by SLSQP on {w >= c, sum w = 1}, best of a few starts."""
    k = grads.shape[0]
    gram = grads @ grads.T
    c = np.zeros(k) if lower is None else lower
    best = np.inf
    for seed in range(4):
        x0 = c + (1 - c.sum()) * np.random.default_rng(seed).dirichlet(np.ones(k))
        res = minimize(
            lambda w: w @ gram @ w,
            x0,
            jac=lambda w: 2 * gram @ w,
            method="SLSQP",
            bounds=[(ci, 1.0) for ci in c],
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
            options={"ftol": 1e-15, "maxiter": 500},
        )
        best = min(best, float(res.fun))
    return float(np.sqrt(max(best, 0.0)))


def assert_on_simplex(w: torch.Tensor, lower: torch.Tensor | None = None) -> None:
    assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1], dtype=w.dtype), atol=1e-9)
    floor = torch.zeros_like(w) if lower is None else lower.expand_as(w)
    assert (w >= floor - 1e-9).all()


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("bounded", [False, True])
@pytest.mark.parametrize("method", ["auto", "frank_wolfe"])
def test_matches_slsqp_batched_and_unbatched(k: int, bounded: bool, method: str) -> None:
    if method == "frank_wolfe" and k == 2:
        pytest.skip("K=2 uses the closed form")
    g = torch.Generator().manual_seed(10 * k + bounded)
    grads = torch.randn(12, k, 9, generator=g, dtype=torch.float64)
    lower = None
    if bounded:
        lower = torch.rand(k, generator=g, dtype=torch.float64)
        lower = 0.6 * lower / lower.sum()
    w = min_norm(grads, lower, method=method)  # type: ignore[arg-type]
    assert w.shape == (12, k)
    assert_on_simplex(w, lower)
    tol = 1e-7 if method == "auto" else 1e-6
    for b in range(12):
        expected = slsqp_min_norm(grads[b].numpy(), None if lower is None else lower.numpy())
        assert weighted_norm(grads[b], w[b]).item() == pytest.approx(expected, abs=tol)
        single = min_norm(grads[b], lower, method=method)  # type: ignore[arg-type]
        assert single.shape == (k,)
        assert torch.allclose(single, w[b], atol=1e-6)


def test_per_row_lower_bounds() -> None:
    g = torch.Generator().manual_seed(3)
    grads = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    lower = torch.rand(6, 3, generator=g, dtype=torch.float64) * 0.3
    w = min_norm(grads, lower)
    assert_on_simplex(w, lower)
    for b in range(6):
        expected = slsqp_min_norm(grads[b].numpy(), lower[b].numpy())
        assert weighted_norm(grads[b], w[b]).item() == pytest.approx(expected, abs=1e-7)


def test_bounds_summing_to_one_pin_the_weights() -> None:
    grads = torch.randn(3, 5, dtype=torch.float64)
    lower = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    assert torch.allclose(min_norm(grads, lower), lower)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("method", ["auto", "frank_wolfe"])
def test_edge_cases(k: int, method: str) -> None:
    def solve(grads: torch.Tensor) -> torch.Tensor:
        w = min_norm(grads.to(torch.float64), method=method)  # type: ignore[arg-type]
        assert_on_simplex(w)
        assert torch.isfinite(w).all()
        return w

    g1 = torch.tensor([1.0, 2.0, -1.0])
    # zero gradients: every w is optimal; the tie-break gives uniform weights (FW: its start)
    assert torch.allclose(solve(torch.zeros(k, 3)), torch.full((k,), 1.0 / k, dtype=torch.float64))
    # identical gradients: every w is optimal, uniform
    assert torch.allclose(solve(g1.expand(k, 3)), torch.full((k,), 1.0 / k, dtype=torch.float64))
    # one zero gradient: all weight on it, norm 0
    grads = torch.stack([g1, torch.zeros(3), *[3 * g1] * (k - 2)])
    w = solve(grads)
    assert weighted_norm(grads.double(), w).item() == pytest.approx(0.0, abs=1e-6)
    # opposite gradients: the balance point has norm 0
    grads = torch.stack([g1, -2 * g1, *[g1] * (k - 2)])
    w = solve(grads)
    assert weighted_norm(grads.double(), w).item() == pytest.approx(0.0, abs=1e-6)
    # parallel, same direction: all weight on the shortest
    grads = torch.stack([3 * g1, g1, *[2 * g1] * (k - 2)])
    w = solve(grads)
    assert w[1].item() == pytest.approx(1.0, abs=1e-6)


def test_closed_form_two() -> None:
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(min_norm(grads), torch.tensor([0.5, 0.5]))
    grads = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # w1 = 1/5: ||(0.4, 0.8)|| is minimal
    assert torch.allclose(min_norm(grads), torch.tensor([0.2, 0.8]))


def test_interior_min_norm_descends_every_objective_equally() -> None:
    # KKT at an interior optimum: g_k . d = ||d||^2 for every k, d = sum_k w_k g_k. This is why
    # the objective with the larger gradient gets the smaller weight (docs/evaluation.md).
    g = torch.randn(256, 3, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w = min_norm(g, method="exact")
    interior = (w > 1e-3).all(dim=1)
    assert interior.sum() > 20  # enough interior problems to check
    d = torch.einsum("bk,bkd->bd", w, g)  # (B, D)
    descent = torch.einsum("bkd,bd->bk", g, d)  # (B, K)
    expected = (d * d).sum(dim=1, keepdim=True).expand_as(descent)
    assert torch.allclose(descent[interior], expected[interior], atol=1e-8)
    # with two objectives, scaling one gradient up moves weight away from it
    pair = g[:, :2]
    bigger = pair * torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 2, 1)
    moved = min_norm(bigger)[:, 1] <= min_norm(pair)[:, 1] + 1e-12
    assert moved.all()


def test_normalization() -> None:
    grads = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])
    unit = normalize_grads(grads, "l2")
    assert torch.allclose(unit, torch.tensor([[[0.6, 0.8], [0.0, 0.0]]]))  # zero stays zero
    losses = torch.tensor([[2.0, 4.0]])
    assert torch.allclose(normalize_grads(grads, "loss", losses), grads / 2)
    assert torch.allclose(normalize_grads(grads, "loss+", losses), unit / 2)
    with pytest.raises(ValueError):
        normalize_grads(grads, "loss")
    # with l2 normalization two gradients always weigh 1/2 each: only directions are left
    g = torch.randn(4, 2, 6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(min_norm(g, normalize="l2"), torch.full((4, 2), 0.5), atol=1e-6)


def test_running_scale_removes_the_global_imbalance_and_keeps_the_differences() -> None:
    gen = torch.Generator().manual_seed(1)
    # objective 1's gradients are ~100x objective 0's: every list's min-norm corner is objective 0
    g = torch.randn(64, 2, 8, generator=gen) * torch.tensor([1.0, 100.0]).view(1, 2, 1)
    assert (min_norm(g)[:, 0] > 0.95).all()
    scale = RunningGradScale(momentum=0.0)  # momentum 0: this step's mean norms
    scaled = scale(g)
    assert torch.allclose(scaled.norm(dim=-1).mean(0), torch.ones(2), atol=1e-5)
    w = min_norm(scaled)[:, 0]
    assert 0.3 < float(w.mean()) < 0.7 and float(w.std()) > 0.05  # interior, and varies per list
    assert torch.equal(
        g,
        torch.randn(64, 2, 8, generator=torch.Generator().manual_seed(1))
        * torch.tensor([1.0, 100.0]).view(1, 2, 1),
    )  # input untouched
    # the EMA: after a second step with norms doubled, the mean norm moved by (1 - momentum)
    ema = RunningGradScale(momentum=0.9)
    ema(g)
    first = ema.mean_norm.clone()  # type: ignore[union-attr]
    ema(2 * g)
    assert torch.allclose(ema.mean_norm, first * 1.1)  # type: ignore[arg-type]
    # state round trip
    other = RunningGradScale(momentum=0.9)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other(g), ema(g))


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        min_norm(torch.zeros(3))
    with pytest.raises(ValueError):
        min_norm(torch.zeros(2, 3), torch.tensor([0.7, 0.6]))
    with pytest.raises(ValueError):
        min_norm(torch.zeros(2, 3), torch.tensor([-0.1, 0.6]))


def test_dtype_and_no_mutation() -> None:
    grads = torch.randn(5, 3, 7)
    before = grads.clone()
    w = min_norm(grads, normalize="l2")
    assert w.dtype == torch.float32
    assert torch.equal(grads, before)
