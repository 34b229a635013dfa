"""The PAPERec training step and its baselines on synthetic batches."""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterator

import pytest
import torch

from learner.training import STRATEGIES, PAPERecConfig, Trainer
from model.batch import ListBatch
from model.ranker import RankerConfig
from model.runtime import torch_threads


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with torch_threads(1):  # tiny networks: more threads only add barrier waits on a busy machine
        yield


def config(**overrides: object) -> PAPERecConfig:
    """PAPERec as published (``reward="pareto"``): what this module tests."""
    overrides.setdefault("ranker", RankerConfig.tiny())
    overrides.setdefault("reward", "pareto")
    return PAPERecConfig(device="cpu", **overrides)  # type: ignore[arg-type]


def batches(cfg: PAPERecConfig, n: int, size: int = 16, seed: int = 0) -> list[ListBatch]:
    g = torch.Generator().manual_seed(seed)
    return [ListBatch.synthetic(cfg.ranker, size, g) for _ in range(n)]


def test_losses_decrease_and_reward_is_finite_and_non_positive() -> None:
    cfg = config(ranker_lr=3e-3)
    trainer = Trainer(cfg)
    history = [trainer.step(b) for b in batches(cfg, 100, size=32)]
    for key in ("loss/click", "loss/dwell"):
        first = sum(m[key] for m in history[:10]) / 10
        last = sum(m[key] for m in history[-10:]) / 10
        assert last < 0.95 * first, key
    for m in history:
        assert math.isfinite(m["reward"]) and m["reward"] <= 0.0
        assert m["reward_best"] >= m["reward"] - 1e-6  # min-norm weights beat the logged ones
        assert m["weight/click"] + m["weight/dwell"] == pytest.approx(1.0, abs=1e-5)
        assert all(math.isfinite(v) for v in m.values())


def test_state_dict_round_trip_gives_identical_next_steps() -> None:
    cfg = config()
    data = batches(cfg, 5)
    trainer = Trainer(cfg)
    for b in data[:3]:
        trainer.step(b)
    buf = io.BytesIO()
    torch.save(trainer.state_dict(), buf)
    buf.seek(0)
    fresh = Trainer(dataclasses.replace(cfg))
    fresh.load_state_dict(torch.load(buf))
    for b in data[3:]:
        assert trainer.step(b) == fresh.step(b)
    for p, q in zip(trainer.ranker.parameters(), fresh.ranker.parameters(), strict=True):
        assert torch.equal(p, q)


def test_seeding() -> None:
    cfg = config(ranker=RankerConfig.tiny(dropout=0.2))  # dropout draws randomness inside steps
    data = batches(cfg, 3)
    a, b, c = Trainer(cfg), Trainer(cfg), Trainer(dataclasses.replace(cfg, seed=1))
    for batch in data:
        ma, mb, mc = a.step(batch), b.step(batch), c.step(batch)
        assert ma == mb
        assert ma != mc


def test_step_does_not_mutate_the_batch() -> None:
    cfg = config()
    batch = batches(cfg, 1)[0]
    before = batch.clone()
    Trainer(cfg).step(batch)
    for f in dataclasses.fields(batch):
        assert torch.equal(getattr(batch, f.name), getattr(before, f.name)), f.name


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("grad_mode", ["shared_repr", "full_params"])
def test_every_strategy_and_grad_mode_steps(strategy: str, grad_mode: str) -> None:
    if grad_mode == "full_params" and strategy in ("single", "fixed"):
        pytest.skip("no gradients taken")
    cfg = config(strategy=strategy, grad_mode=grad_mode, peltr_lower_bounds=(0.3, 0.1))
    trainer = Trainer(cfg)
    heads_before = [p.clone() for p in trainer.ranker.objective_heads[1].parameters()]
    for batch in batches(cfg, 2, size=6):
        metrics = trainer.step(batch)
    assert {"loss", "loss/click", "loss/dwell"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    if strategy == "peltr":
        assert metrics["weight/click"] >= 0.3 - 1e-6 and metrics["weight/dwell"] >= 0.1 - 1e-6
        assert metrics["weight/click"] + metrics["weight/dwell"] == pytest.approx(1.0)
    if strategy == "single":  # only the click objective trains: the dwell head is untouched
        for p, q in zip(heads_before, trainer.ranker.objective_heads[1].parameters(), strict=True):
            assert torch.equal(p, q)
    if strategy == "paperec":
        assert {"reward", "qf_loss", "actor_loss"} <= set(metrics)


def test_three_objectives() -> None:
    from test_ranker import ClickCopy  # noqa: F401  (registers "click_copy")

    cfg = PAPERecConfig(ranker=RankerConfig.tiny(objectives=("click", "dwell", "click_copy")), device="cpu")
    trainer = Trainer(cfg)
    metrics = trainer.step(batches(cfg, 1)[0])
    assert {"weight/click_copy", "loss/click_copy"} <= set(metrics)
    assert trainer.strategy.ddpg.actor.cfg.action_dim == 3  # type: ignore[attr-defined]


def test_bad_configs_are_rejected() -> None:
    with pytest.raises(ValueError):
        Trainer(config(strategy="nope"))
    with pytest.raises(ValueError):
        Trainer(config(grad_mode="nope"))
    trainer = Trainer(config(strategy="fixed", fixed_weights=(1.0,)))
    with pytest.raises(ValueError):
        trainer.step(batches(trainer.cfg, 1)[0])


def test_the_critic_also_learns_the_exact_reward_at_counterfactual_weights() -> None:
    from learner.mgda import weighted_norm
    from learner.training import PAPERecStrategy

    cfg = config(counterfactual_actions=3, list_scaled_reward=True)
    trainer = Trainer(cfg)
    strategy = trainer.strategy
    assert isinstance(strategy, PAPERecStrategy)
    seen: list[tuple[torch.Tensor, ...]] = []
    update = strategy.ddpg.update

    def spy(*args: torch.Tensor, **kwargs: object) -> dict[str, float]:
        seen.append(tuple(a.clone() for a in args))
        return update(*args, **kwargs)  # type: ignore[arg-type]

    strategy.ddpg.update = spy  # type: ignore[method-assign]
    batch = batches(cfg, 1, size=8)[0]
    grads_seen: list[torch.Tensor] = []
    real = strategy._with_counterfactuals

    def keep(grads: torch.Tensor, logged: torch.Tensor, reward: torch.Tensor) -> tuple[torch.Tensor, ...]:
        grads_seen.append(grads.detach())
        return real(grads, logged, reward)

    strategy._with_counterfactuals = keep  # type: ignore[method-assign, assignment]
    trainer.step(batch)
    obs, actions, rewards, _, dones = seen[0]
    assert actions.shape == (4 * 8, 2) and rewards.shape == obs.shape[:1] == (32,)
    assert torch.equal(actions[:8], batch.action)  # the logged weights first
    assert torch.allclose(actions.sum(-1), torch.ones(32), atol=1e-6) and (actions >= 0).all()
    assert len({tuple(a.tolist()) for a in actions[8:]}) == 24  # fresh weights, per list
    grads = grads_seen[0].repeat(4, 1, 1)  # (4B, K, D), in the same order as the actions
    assert torch.allclose(rewards, -weighted_norm(grads, actions), atol=1e-6)  # exact, at every w
    assert (rewards >= -1.0 - 1e-6).all() and (rewards <= 0).all()  # list-scaled: in [-1, 0]
    assert torch.equal(obs[8:16], obs[:8]) and torch.equal(dones[24:], dones[:8])
