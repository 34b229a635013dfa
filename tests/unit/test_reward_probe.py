"""The reward probe: each user's reward-optimal weights, and what the weight generator serves."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from learner.mgda import gram_norm, min_norm, weighted_norm
from learner.training import REWARDS, PAPERecConfig, PAPERecStrategy, StepContext, Trainer, dwell_grid_weights
from model.batch import ListBatch
from model.scoring import policy_obs
from paperec.evaluation.buffer import TensorReplay
from paperec.evaluation.reward_probe import GRID, dwell_grid, optimal_dwell_weight
from paperec.evaluation.reward_probe import probe as reward_probe
from simulator import RandomPolicy, Simulator, SimulatorConfig, TransitionLinker
from simulator.world import user_id, user_index

SIM = SimulatorConfig(n_users=12, n_items=100, seed=3)
STEP = 1.0 / (GRID - 1)
GRID_T = torch.linspace(0.0, 1.0, GRID)


def _filled_buffer(sessions: int = 30) -> TensorReplay:
    sim = Simulator(SIM)
    linker, transitions = TransitionLinker(), []
    for r in sim.run(RandomPolicy(), sim.random_sessions(sessions)):
        transitions.extend(linker.add(r))
    buf = TensorReplay(capacity=len(transitions), cfg=SIM.ranker_config(), list_len=SIM.list_len)
    buf.add(transitions)
    return buf


def _trainer(**overrides: object) -> Trainer:
    return Trainer(PAPERecConfig(ranker=SIM.ranker_config(), device="cpu", **overrides))  # type: ignore[arg-type]


def _pareto_objective(grams: torch.Tensor, objectives: tuple[str, ...] = ("click", "dwell")) -> np.ndarray:
    """-sqrt(w^T G w) (n, GRID) on the probe's grid, as the trainer computes it for pareto."""
    grid = dwell_grid_weights(objectives, torch.from_numpy(dwell_grid()))  # (GRID, K)
    return (-gram_norm(grams, grid.expand(grams.shape[0], -1, -1))).numpy()


def test_one_list_optimum_is_the_min_norm_weight() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        g = torch.randn(2, 5, generator=gen, dtype=torch.float64) * torch.rand(2, 1, generator=gen) * 3
        expected = float(min_norm(g)[1])  # the QP's closed form, on the gradients themselves
        got = optimal_dwell_weight(_pareto_objective((g @ g.T)[None]))
        assert got == pytest.approx(expected, abs=STEP / 2 + 1e-9)
        # the dwell objective's index is honoured: swapping the objectives swaps the answer
        swapped = optimal_dwell_weight(_pareto_objective((g.flip(0) @ g.flip(0).T)[None], ("dwell", "click")))
        assert swapped == pytest.approx(got)


def test_several_lists_maximize_the_mean_objective_not_the_objective_of_the_mean() -> None:
    # two lists whose own optima are the two corners; a brute-force scan on the vectors decides
    g = np.array([[[1.0, 0.0], [4.0, 0.1]], [[0.2, 1.0], [0.0, 0.3]]])  # (n, K, D)
    grid = np.linspace(0, 1, 20001)
    mean_norm = [np.mean([np.linalg.norm((1 - w) * gi[0] + w * gi[1]) for gi in g]) for w in grid]
    expected = grid[int(np.argmin(mean_norm))]
    got = optimal_dwell_weight(_pareto_objective(torch.from_numpy(np.einsum("nkd,njd->nkj", g, g))))
    assert got == pytest.approx(expected, abs=STEP / 2 + 1e-4)


@pytest.mark.parametrize("mode", REWARDS)
def test_the_probe_changes_nothing_in_the_trainer(mode: str) -> None:
    trainer = _trainer(reward=mode)
    buf = _filled_buffer()
    trainer.step(buf.sample(16, np.random.default_rng(0)))  # a running scale exists now
    before = copy.deepcopy(trainer.state_dict())
    trainer.ranker.train()
    w, objective = trainer.reward_probe(buf.rows(torch.arange(8)), GRID_T)
    assert trainer.ranker.training
    after = trainer.state_dict()
    scale_before = before["strategy"]["grad_scale"]["mean_norm"]
    if mode == "engagement":  # computes no gradients: no running scale to keep
        assert scale_before is None and after["strategy"]["grad_scale"]["mean_norm"] is None
    else:
        assert torch.equal(scale_before, after["strategy"]["grad_scale"]["mean_norm"])
    for name, tensor in before["ranker"].items():
        assert torch.equal(tensor, after["ranker"][name]), name
    for name, tensor in before["strategy"]["ddpg"]["qf"].items():
        assert torch.equal(tensor, after["strategy"]["ddpg"]["qf"][name]), name
    assert after["num_steps"] == 1
    assert w.shape == (8, 2) and torch.allclose(w.sum(-1), torch.ones(8))
    assert objective.shape == (8, GRID) and torch.isfinite(objective).all()


def _eval_grads(trainer: Trainer, batch: ListBatch) -> torch.Tensor:
    """The list's gradients as the reward sees them, in eval mode, running scale untouched."""
    strategy = trainer.strategy
    assert isinstance(strategy, PAPERecStrategy)
    trainer.ranker.eval()
    state = trainer.ranker.user_state(batch.user_feats, batch.history, batch.context)
    h = trainer.ranker.encode(batch, user_state=state)
    losses = trainer.ranker.losses_per_list(trainer.ranker.heads(h), batch)
    grads = strategy.reward_grads(StepContext(batch, state, h, losses), update=False).detach()
    trainer.ranker.train()
    return grads


def _critic_on_grid(trainer: Trainer, batch: ListBatch) -> torch.Tensor:
    strategy = trainer.strategy
    assert isinstance(strategy, PAPERecStrategy)
    obs = torch.cat([batch.user_feats, batch.context], -1)  # policy_state="features"
    grid = dwell_grid_weights(trainer.cfg.ranker.objectives, GRID_T)
    with torch.no_grad():
        return torch.stack([strategy.ddpg.qf(obs, row.expand(obs.shape[0], -1)) for row in grid], 1)


def test_each_mode_probes_the_objective_its_actor_ascends() -> None:
    buf = _filled_buffer()
    batch = buf.rows(torch.arange(6))
    d = torch.tensor([0.0, 0.3, 1.0])
    grid = dwell_grid_weights(("click", "dwell"), d)  # (3, K)

    pareto = _trainer(reward="pareto", grad_normalize="none")
    grads = _eval_grads(pareto, batch)  # (B, K, D)
    _, objective = pareto.reward_probe(batch, d)
    exact = torch.stack([-weighted_norm(grads, w.expand(6, -1)) for w in grid], 1)  # (B, 3)
    assert torch.allclose(objective, exact, rtol=1e-4, atol=1e-7)

    engagement = _trainer(reward="engagement")
    engagement.step(buf.sample(16, np.random.default_rng(1)))
    _, objective = engagement.reward_probe(batch, GRID_T)
    assert torch.allclose(objective, _critic_on_grid(engagement, batch), atol=1e-6)

    hybrid = _trainer(reward="hybrid", hybrid_lambda=2.0, grad_normalize="none")
    _, objective = hybrid.reward_probe(batch, d)
    grads = _eval_grads(hybrid, batch)
    norms = torch.stack([weighted_norm(grads, w.expand(6, -1)) for w in grid], 1)  # (B, 3)
    best = weighted_norm(grads, min_norm(grads))[:, None]
    regret = (norms - best) / grads.norm(dim=-1).sum(-1, keepdim=True)
    q = _critic_on_grid(hybrid, batch)[:, [0, 60, 200]]
    assert torch.allclose(objective, q - 2.0 * regret, rtol=1e-4, atol=1e-5)
    assert (regret >= -1e-6).all() and (regret <= 1.0 + 1e-6).all()  # list-scaled: in [0, 1]


def test_each_lists_objective_belongs_to_its_own_list() -> None:
    # a list's objective must not depend on the other lists in the batch (no mixing across rows)
    trainer = _trainer(reward="hybrid", grad_normalize="none")
    buf = _filled_buffer()
    _, together = trainer.reward_probe(buf.rows(torch.arange(6)), GRID_T)
    for b in range(6):
        _, alone = trainer.reward_probe(buf.rows(torch.tensor([b])), GRID_T)
        assert torch.allclose(alone[0], together[b], rtol=1e-4, atol=1e-6)


def test_the_weights_are_the_ones_serving_would_use() -> None:
    trainer = _trainer()
    batch = _filled_buffer().rows(torch.arange(5))
    w, _ = trainer.reward_probe(batch, GRID_T)
    model = trainer.actor_model()
    assert model.actor.cfg.obs == "features"
    with torch.no_grad():
        obs = policy_obs(model.ranker, model.actor.cfg.obs, batch.user_feats, batch.history, batch.context)
        assert torch.allclose(w, model.actor(obs), atol=1e-6)


@pytest.mark.parametrize("mode", ["pareto", "engagement"])
def test_probe_reports_per_user_correlations(mode: str) -> None:
    trainer = _trainer(reward=mode)
    buf = _filled_buffer(sessions=60)
    alpha = np.linspace(0.0, 1.0, SIM.n_users)
    result = reward_probe(trainer, buf, alpha)
    assert result is not None and result["mode"] == mode
    counts = {u: int(np.sum(buf.users[: len(buf)] == u)) for u in set(buf.users[: len(buf)])}
    assert result["users"] == sum(c >= 3 for c in counts.values())
    assert result["lists"] == sum(c for c in counts.values() if c >= 3)
    for key in ("generator_vs_optimum", "optimum_vs_preference", "generator_vs_preference"):
        est = result[key]
        assert est is None or -1.0 <= est["ci95"][0] <= est["value"] <= est["ci95"][1] <= 1.0
    assert 0.0 <= result["optimum_dwell_weight_mean"] <= 1.0
    # constant preferences (the control): the correlations with them are undefined
    control = reward_probe(trainer, buf, np.full(SIM.n_users, 0.5))
    assert control is not None and control["optimum_vs_preference"] is None
    with pytest.raises(ValueError, match="only the paperec strategy"):
        reward_probe(_trainer(strategy="fixed"), buf, alpha)


def test_user_index_inverts_user_id() -> None:
    assert [user_index(user_id(i)) for i in (0, 7, 499)] == [0, 7, 499]


def test_buffer_keeps_each_rows_user_through_wraparound_and_state_dict() -> None:
    sim = Simulator(SIM)
    linker, transitions = TransitionLinker(), []
    for r in sim.run(RandomPolicy(), sim.random_sessions(20)):
        transitions.extend(linker.add(r))
    buf = TensorReplay(capacity=10, cfg=SIM.ranker_config(), list_len=SIM.list_len)
    buf.add(transitions[:7])
    buf.add(transitions[7:14])  # wraps: rows 7..9 then 0..3
    expected = [t.user_id for t in transitions[10:14]] + [t.user_id for t in transitions[4:10]]
    assert list(buf.users) == expected
    other = TensorReplay(capacity=10, cfg=SIM.ranker_config(), list_len=SIM.list_len)
    other.load_state_dict(buf.state_dict())
    assert list(other.users) == expected
