"""The weight generator's reward modes (pareto, engagement, hybrid) and its policy state."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from base.config_flags import build_config
from learner import training
from learner.cli import configure
from learner.ddpg import QNetwork
from learner.mgda import min_norm, weighted_norm
from learner.training import (
    REWARDS,
    ListRegret,
    PAPERecConfig,
    PAPERecStrategy,
    Trainer,
    dwell_grid_weights,
    engagement_reward,
)
from model.batch import ListBatch
from model.config import config_to_dict
from model.policy import ActorConfig
from model.ranker import RankerConfig
from model.runtime import torch_threads
from model.scoring import ActorModel, policy_obs, policy_obs_dim
from model.snapshot import decode_snapshot, encode_snapshot, header_of, to_record
from schemas import Exploration

TINY = RankerConfig.tiny()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def config(**overrides: Any) -> PAPERecConfig:
    overrides.setdefault("ranker", TINY)
    return PAPERecConfig(device="cpu", **overrides)


def batch(size: int = 8, seed: int = 0) -> ListBatch:
    return ListBatch.synthetic(TINY, size, torch.Generator().manual_seed(seed))


def spy_update(strategy: PAPERecStrategy) -> list[dict[str, Any]]:
    """Records the arguments of every DDPG update (then runs it)."""
    calls: list[dict[str, Any]] = []
    update = strategy.ddpg.update

    def spy(*args: torch.Tensor, actor_penalty: Any = None) -> dict[str, float]:
        names = ("obs", "actions", "rewards", "next_obs", "dones")
        calls.append({**dict(zip(names, args, strict=True)), "actor_penalty": actor_penalty})
        return update(*args, actor_penalty=actor_penalty)

    strategy.ddpg.update = spy  # type: ignore[method-assign, assignment]
    return calls


def paperec(trainer: Trainer) -> PAPERecStrategy:
    assert isinstance(trainer.strategy, PAPERecStrategy)
    return trainer.strategy


# ---------------------------------------------------------------------- the rewards
def test_engagement_reward_of_a_hand_built_batch() -> None:
    b = batch(2)
    b.mask[:] = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    b.clicks[:] = torch.tensor([[1, 0, 1, 0, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.float32)
    b.dwell[:] = torch.tensor([[30, 0, 90, 0, 500, 500], [0, 0, 0, 0, 0, 12]], dtype=torch.float32)
    # list 0: 2 clicks and 120 s on its valid positions (the padding's labels do not count)
    expected = torch.tensor([2 / 1.0 + 120 / 60.0, 1 / 1.0 + 12 / 60.0])
    assert torch.allclose(engagement_reward(b, 1.0, 60.0), expected)
    assert torch.allclose(engagement_reward(b, 2.0, 30.0), torch.tensor([1 + 4.0, 0.5 + 0.4]))

    trainer = Trainer(config(reward="engagement", engagement_click_scale=2.0, engagement_dwell_scale_s=30.0))
    calls = spy_update(paperec(trainer))
    b.done[:] = torch.tensor([1.0, 0.0])
    metrics = trainer.step(b)
    assert torch.allclose(calls[0]["rewards"], torch.tensor([5.0, 0.9]))
    assert torch.equal(calls[0]["actions"], b.action) and torch.equal(calls[0]["dones"], b.done)
    assert calls[0]["actor_penalty"] is None
    assert metrics["reward"] == pytest.approx(2.95)


def test_pareto_reward_is_the_norm_of_the_logged_weighted_gradients() -> None:
    trainer = Trainer(config(reward="pareto", grad_normalize="none"))
    strategy = paperec(trainer)
    calls = spy_update(strategy)
    seen: list[torch.Tensor] = []
    real = strategy.reward_grads

    def keep(ctx: Any, update: bool = True) -> torch.Tensor:
        seen.append(real(ctx, update).detach())
        return seen[-1]

    strategy.reward_grads = keep  # type: ignore[method-assign]
    b = batch()
    metrics = trainer.step(b)
    expected = -weighted_norm(seen[0], b.action)
    assert torch.allclose(calls[0]["rewards"], expected) and calls[0]["actor_penalty"] is None
    assert metrics["reward_best"] == pytest.approx(-weighted_norm(seen[0], min_norm(seen[0])).mean().item())


def test_hybrid_critic_learns_engagement_and_the_actor_pays_the_exact_regret() -> None:
    trainer = Trainer(config(reward="hybrid", hybrid_lambda=3.0, grad_normalize="none"))
    strategy = paperec(trainer)
    calls = spy_update(strategy)
    seen: list[torch.Tensor] = []
    real = strategy.reward_grads

    def keep(ctx: Any, update: bool = True) -> torch.Tensor:
        seen.append(real(ctx, update).detach())
        return seen[-1]

    strategy.reward_grads = keep  # type: ignore[method-assign]
    b = batch()
    metrics = trainer.step(b)
    assert torch.allclose(calls[0]["rewards"], engagement_reward(b, 1.0, 60.0))
    grads = seen[0]  # (B, K, D)
    w = torch.softmax(torch.randn(8, 2, generator=torch.Generator().manual_seed(1)), -1)
    scale = grads.norm(dim=-1).sum(-1)
    regret = (weighted_norm(grads, w) - weighted_norm(grads, min_norm(grads))) / scale
    assert torch.allclose(calls[0]["actor_penalty"](w), 3.0 * regret, rtol=1e-4, atol=1e-6)
    assert (regret >= -1e-6).all() and (regret <= 1 + 1e-6).all()
    assert {"qf_spread", "regret_spread", "regret", "actor_penalty"} <= set(metrics)


def test_list_regret_is_exact_and_zero_at_the_min_norm_weights() -> None:
    g = torch.randn(5, 2, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    regret = ListRegret(g)
    assert torch.allclose(regret(regret.w_best), torch.zeros(5, dtype=torch.float64), atol=1e-9)
    grid = dwell_grid_weights(("click", "dwell"), torch.linspace(0, 1, 11, dtype=torch.float64))
    on_grid = regret(grid.expand(5, -1, -1))  # (B, G)
    by_hand = torch.stack([weighted_norm(g, w.expand(5, -1)) for w in grid], 1)
    by_hand = (by_hand - weighted_norm(g, regret.w_best)[:, None]) / g.norm(dim=-1).sum(-1, keepdim=True)
    assert torch.allclose(on_grid, by_hand, atol=1e-9)
    assert (on_grid >= -1e-9).all()  # the min-norm weights are the best on the simplex


def test_hybrid_actor_moves_to_the_min_norm_weights_under_a_zero_critic() -> None:
    # critic_lr = 0 and a zero last layer: Q = 0 everywhere, the actor sees the exact penalty alone;
    # ranker_lr = 0: the lists' gradients, hence their min-norm weights w*, stay as they are;
    # no preactivation penalty: its pull towards equal weights is not the regret's
    cfg = config(
        reward="hybrid",
        grad_normalize="none",
        critic_lr=0.0,
        actor_lr=2e-3,
        ranker_lr=0.0,
        preactivation_penalty=0.0,
    )
    trainer = Trainer(cfg)
    strategy = paperec(trainer)
    assert isinstance(strategy.ddpg.qf, QNetwork)  # critics=1: the plain critic
    last = list(strategy.ddpg.qf.net.children())[-1]
    assert isinstance(last, torch.nn.Linear)
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    strategy.ddpg.qf_target.load_state_dict(strategy.ddpg.qf.state_dict())
    seen: list[torch.Tensor] = []
    real = strategy.reward_grads

    def keep(ctx: Any, update: bool = True) -> torch.Tensor:
        seen.append(real(ctx, update).detach())
        return seen[-1]

    strategy.reward_grads = keep  # type: ignore[method-assign]
    b = batch(8)
    obs = torch.cat([b.user_feats, b.context], -1)

    def distance() -> float:
        with torch.no_grad():
            return (strategy.ddpg.actor(obs) - w_best).abs().sum(-1).mean().item()

    trainer.step(b)
    w_best = min_norm(seen[0])  # (B, K), all different and inside the simplex here
    start = distance()
    for _ in range(150):
        trainer.step(b)
    assert torch.equal(min_norm(seen[-1]), w_best)
    assert start > 0.3 and distance() < 0.02


def test_engagement_computes_no_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> torch.Tensor:
        raise AssertionError("engagement must not compute per-list gradients")

    monkeypatch.setattr(training, "per_list_repr_grads", refuse)
    monkeypatch.setattr(training, "per_list_param_grads", refuse)
    trainer = Trainer(config(reward="engagement"))
    metrics = trainer.step(batch())
    assert metrics["nonfinite_step"] == 0.0 and "qf_spread" in metrics
    assert not {"regret_spread", "reward_best", "regret"} & set(metrics)
    with pytest.raises(AssertionError, match="must not compute"):
        Trainer(config(reward="hybrid")).step(batch())  # the spy does catch a mode that needs them


@pytest.mark.parametrize("mode", REWARDS)
def test_spreads_are_max_minus_min_over_eleven_dwell_weights(mode: str) -> None:
    trainer = Trainer(config(reward=mode, grad_normalize="none"))
    strategy = paperec(trainer)
    b = batch()
    metrics = trainer.step(b)
    obs = torch.cat([b.user_feats, b.context], -1)
    grid = dwell_grid_weights(TINY.objectives, torch.linspace(0, 1, 11))
    with torch.no_grad():
        q = torch.stack([strategy.ddpg.qf(obs, w.expand(8, -1)) for w in grid], 1)  # (B, 11)
    assert metrics["qf_spread"] == pytest.approx((q.amax(1) - q.amin(1)).mean().item(), rel=1e-5)
    assert ("regret_spread" in metrics) == (mode != "engagement")
    if mode != "engagement":
        assert 0.0 <= metrics["regret_spread"] <= 1.0


def test_every_mode_trains_finitely_with_truncated_and_ended_sessions() -> None:
    for mode in REWARDS:
        trainer = Trainer(config(reward=mode))
        for i in range(3):
            b = batch(seed=i)
            b.done[:4] = 1.0  # half the lists end the episode, half bootstrap
            metrics = trainer.step(b)
            assert metrics["nonfinite_step"] == 0.0, mode
            assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), mode


def test_bad_modes_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="reward"):
        config(reward="clicks")
    with pytest.raises(ValueError, match="policy_state"):
        config(policy_state="history")
    with pytest.raises(ValueError, match="counterfactual_actions"):
        config(reward="engagement", counterfactual_actions=2)
    with pytest.raises(ValueError, match="hybrid_lambda"):
        config(hybrid_lambda=-1.0)
    config(reward="pareto", counterfactual_actions=2)  # computable there


# ---------------------------------------------------------------------- the policy state
def test_policy_obs_both_ways() -> None:
    trainer = Trainer(config())
    b = batch()
    ranker = trainer.ranker.eval()
    with torch.no_grad():
        state = ranker.user_state(b.user_feats, b.history, b.context)
        assert torch.equal(policy_obs(ranker, "ranker", b.user_feats, b.history, b.context), state)
        given = torch.zeros_like(state)
        assert policy_obs(ranker, "ranker", b.user_feats, b.history, b.context, user_state=given) is given
        feats = policy_obs(ranker, "features", b.user_feats, b.history, b.context)
    assert torch.equal(feats, torch.cat([b.user_feats, b.context], -1))
    assert feats.shape == (8, policy_obs_dim(TINY, "features")) == (8, TINY.user_dim + TINY.context_dim)
    assert policy_obs_dim(TINY, "ranker") == TINY.d_model
    with pytest.raises(ValueError, match="unknown policy obs"):
        policy_obs(ranker, "history", b.user_feats, b.history, b.context)


def test_the_ddpg_and_the_served_actor_read_the_configured_state() -> None:
    for state, width in (("features", TINY.user_dim + TINY.context_dim), ("ranker", TINY.d_model)):
        trainer = Trainer(config(policy_state=state))
        calls = spy_update(paperec(trainer))
        b = batch()
        trainer.step(b)
        assert calls[0]["obs"].shape == calls[0]["next_obs"].shape == (8, width)
        assert not calls[0]["obs"].requires_grad  # the policy does not train the ranker
        if state == "features":
            assert torch.equal(calls[0]["next_obs"], torch.cat([b.next_user_feats, b.next_context], -1))
        model = trainer.actor_model()
        assert model.actor.cfg.obs == state and model.actor.cfg.obs_dim == width
    with pytest.raises(ValueError, match="obs='features' has width"):
        ActorModel(TINY, ActorConfig(obs="features", obs_dim=TINY.d_model, action_dim=2))
    with pytest.raises(ValueError, match="obs='ranker' has width"):
        ActorModel(TINY, ActorConfig(obs="ranker", obs_dim=TINY.user_dim + TINY.context_dim, action_dim=2))


def test_snapshot_round_trip_keeps_the_features_observation() -> None:
    model = Trainer(config(policy_state="features")).actor_model()
    header, payload = encode_snapshot(
        model,
        snapshot_version=1,
        training_step=1,
        watermark_ms=0,
        exploration=Exploration(noise_std=0.1),
        key=b"k",
        max_message_bytes=16 * 1024 * 1024,
    )
    record = to_record(header, payload)
    decoded_header, loaded = decode_snapshot(header_of(record.headers), record.value, b"k")
    assert decoded_header.model_config["actor"]["obs"] == "features"
    rebuilt = ActorModel.from_config(decoded_header.model_config)
    assert rebuilt.actor.cfg == loaded.actor.cfg == model.actor.cfg
    b = batch()
    obs = torch.cat([b.user_feats, b.context], -1)
    with torch.no_grad():
        assert torch.equal(loaded.actor(obs), model.actor(obs))


def test_a_config_from_before_obs_loads_as_the_ranker_state() -> None:
    old = config_to_dict(ActorModel(TINY, ActorConfig(obs_dim=TINY.d_model, action_dim=2)).model_config())
    del old["actor"]["obs"]
    model = ActorModel.from_config(old)
    assert model.actor.cfg.obs == "ranker" and model.actor.cfg.obs_dim == TINY.d_model


def test_a_checkpoint_of_another_mode_or_state_is_refused() -> None:
    trainer = Trainer(config(reward="pareto", policy_state="ranker"))
    state = copy.deepcopy(trainer.state_dict())
    with pytest.raises(ValueError, match="reward='pareto'"):
        Trainer(config(reward="hybrid", policy_state="ranker")).load_state_dict(state)
    del state["config"]["reward"], state["config"]["policy_state"]  # a checkpoint from before them
    Trainer(config(reward="pareto", policy_state="ranker")).load_state_dict(state)
    with pytest.raises(ValueError, match="policy_state='ranker'"):
        Trainer(config(reward="pareto", policy_state="features")).load_state_dict(state)


# ---------------------------------------------------------------------- the command line
def test_paperec_learner_selects_the_mode_by_flag() -> None:
    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(
        [
            "--reward",
            "hybrid",
            "--policy-state",
            "ranker",
            "--hybrid-lambda",
            "0.25",
            "--engagement-dwell-scale-s",
            "30",
        ]
    )
    cfg = build_config(PAPERecConfig, args, "train__")
    assert (cfg.reward, cfg.policy_state, cfg.hybrid_lambda, cfg.engagement_dwell_scale_s) == (
        "hybrid",
        "ranker",
        0.25,
        30.0,
    )
    default = build_config(PAPERecConfig, parser.parse_args([]), "train__")
    assert (default.reward, default.policy_state) == ("engagement", "features")
    with pytest.raises(ValueError, match="reward"):
        build_config(PAPERecConfig, parser.parse_args(["--reward", "nope"]), "train__")
