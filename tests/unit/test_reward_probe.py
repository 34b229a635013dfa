"""The reward probe: each user's reward-optimal weights, and what the weight generator serves."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from learner.mgda import min_norm
from learner.training import PAPERecConfig, Trainer
from paperec.evaluation.buffer import TensorReplay
from paperec.evaluation.reward_probe import GRID, reward_optimal_dwell_weight
from paperec.evaluation.reward_probe import probe as reward_probe
from simulator import RandomPolicy, Simulator, SimulatorConfig, TransitionLinker
from simulator.world import user_id, user_index

SIM = SimulatorConfig(n_users=12, n_items=100, seed=3)
STEP = 1.0 / (GRID - 1)


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


def test_one_list_optimum_is_the_min_norm_weight() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        g = torch.randn(2, 5, generator=gen, dtype=torch.float64) * torch.rand(2, 1, generator=gen) * 3
        expected = float(min_norm(g)[1])  # the QP's closed form, on the gradients themselves
        got = reward_optimal_dwell_weight((g @ g.T).numpy()[None], dwell=1)
        assert got == pytest.approx(expected, abs=STEP / 2 + 1e-9)
        # the dwell objective's index is honoured: swapping the objectives swaps the answer
        swapped = reward_optimal_dwell_weight((g.flip(0) @ g.flip(0).T).numpy()[None], dwell=0)
        assert swapped == pytest.approx(got)


def test_several_lists_minimize_the_mean_norm_not_the_norm_of_the_mean() -> None:
    # two lists whose own optima are the two corners; a brute-force scan on the vectors decides
    g = np.array([[[1.0, 0.0], [4.0, 0.1]], [[0.2, 1.0], [0.0, 0.3]]])  # (n, K, D)
    grid = np.linspace(0, 1, 20001)
    mean_norm = [np.mean([np.linalg.norm((1 - w) * gi[0] + w * gi[1]) for gi in g]) for w in grid]
    expected = grid[int(np.argmin(mean_norm))]
    got = reward_optimal_dwell_weight(np.einsum("nkd,njd->nkj", g, g), dwell=1)
    assert got == pytest.approx(expected, abs=STEP / 2 + 1e-4)


def test_the_probe_changes_nothing_in_the_trainer() -> None:
    trainer = _trainer()
    buf = _filled_buffer()
    trainer.step(buf.sample(16, np.random.default_rng(0)))  # a running scale exists now
    before = copy.deepcopy(trainer.state_dict())
    trainer.ranker.train()
    w, gram = trainer.reward_probe(buf.rows(torch.arange(8)))
    assert trainer.ranker.training
    after = trainer.state_dict()
    scale_before = before["strategy"]["grad_scale"]["mean_norm"]
    assert torch.equal(scale_before, after["strategy"]["grad_scale"]["mean_norm"])
    for name, tensor in before["ranker"].items():
        assert torch.equal(tensor, after["ranker"][name]), name
    assert after["num_steps"] == 1
    assert w.shape == (8, 2) and torch.allclose(w.sum(-1), torch.ones(8))
    assert gram.shape == (8, 2, 2) and torch.allclose(gram, gram.transpose(-1, -2))
    assert (torch.linalg.eigvalsh(gram) > -1e-6).all()  # Gram matrices are positive semi-definite


def test_each_gram_belongs_to_its_own_list() -> None:
    # a list's Gram must not depend on the other lists in the batch (no mixing across rows)
    trainer = _trainer(grad_normalize="none")
    buf = _filled_buffer()
    _, together = trainer.reward_probe(buf.rows(torch.arange(6)))
    for b in range(6):
        _, alone = trainer.reward_probe(buf.rows(torch.tensor([b])))
        assert torch.allclose(alone[0], together[b], rtol=1e-4, atol=1e-7)


def test_the_weights_are_the_ones_serving_would_use() -> None:
    trainer = _trainer()
    batch = _filled_buffer().rows(torch.arange(5))
    w, _ = trainer.reward_probe(batch)
    model = trainer.actor_model()
    with torch.no_grad():
        expected = model.actor(model.ranker.user_state(batch.user_feats, batch.history, batch.context))
    assert torch.allclose(w, expected, atol=1e-6)


def test_probe_reports_per_user_correlations() -> None:
    trainer = _trainer()
    buf = _filled_buffer(sessions=60)
    alpha = np.linspace(0.0, 1.0, SIM.n_users)
    result = reward_probe(trainer, buf, alpha)
    assert result is not None
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
