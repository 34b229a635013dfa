"""The PAPERec training step (Xie et al., WWW 2021) and its baselines behind one interface.

One ``Trainer.step(batch)`` on B logged transitions (s, list, labels, logged weights w, s'):

1. ranker forward: user state s (B, S), shared representation h (B, L, D), per-list
   per-objective losses L (B, K) (masked mean over list positions);
2. the strategy turns them into loss weights (B, K) or (K,):
   - ``paperec``: per-list gradients g_bk of L_bk w.r.t. h (MGDA-UB, or w.r.t. all shared
     parameters with grad_mode="full_params"); reward r_b = -|| sum_k w_bk g_bk ||_2 for the
     *logged* weights (how close they came to a Pareto-stationary point, 0 at best);
     one DDPG step of the weight generator on (s, w, r, s', done); loss weights = the
     current actor's w(s) (detached) + ``single_loss_weight`` (the sum_k L_k term);
   - ``single``: one objective; ``fixed``: fixed global weights;
   - ``peltr`` (Lin et al. RecSys 2019): global weights = min-norm of the batch-mean gradients
     with lower bounds, recomputed every step;
3. ranker update on mean_b sum_k weight_bk L_bk.

Non-finite values never reach the weights: a batch with a NaN/inf in any row is refused before
the forward pass; a non-finite loss, reward or gradient skips every optimizer step of the batch
(ranker, critic, actor: checked before each ``optimizer.step()``, and the strategy's state,
whose critic may already have stepped, is put back as it was). A refused step changes nothing
but ``nonfinite_steps`` (``num_steps`` counts applied steps only); its metrics say
``nonfinite_step = 1``.

Randomness inside a step (dropout) comes from a generator seeded by (seed, step number), so a
step is a pure function of (trainer state, batch): checkpoints resume bit-identically.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from learner.ddpg import DDPG, DDPGConfig
from learner.grads import batch_grads, per_list_param_grads, per_list_repr_grads, shared_parameters
from learner.mgda import Normalize, RunningGradScale, min_norm, normalize_grads, weighted_norm
from learner.numeric import all_finite, nonfinite_rows
from model.batch import ListBatch
from model.config import config_to_dict, sub_config
from model.ranker import Ranker, RankerConfig
from model.runtime import default_device, seeded
from model.scoring import ActorModel
from schemas import Exploration

log = logging.getLogger(__name__)
Tensor = torch.Tensor


@dataclass
class PAPERecConfig:
    ranker: RankerConfig = field(default_factory=RankerConfig)
    """the ranker's model args"""
    strategy: str = "paperec"
    """"paperec", "single", "fixed" or "peltr" (see STRATEGIES)"""
    ranker_lr: float = 1e-3
    """ranker AdamW learning rate"""
    weight_decay: float = 0.0
    """ranker AdamW weight decay"""
    max_grad_norm: float = 5.0
    """clip the ranker's gradient norm to this (0 = no clipping)"""
    grad_mode: str = "shared_repr"
    """gradients for MGDA: "shared_repr" (w.r.t. h, MGDA-UB) or "full_params" (small models)"""
    grad_normalize: Normalize = "running"
    """per-objective gradient normalization before reward / min-norm: none, l2, loss, loss+,
    running (by a running mean of ||g_k||; with K = 2, "l2" makes min-norm weights always 1/2)"""
    grad_scale_momentum: float = 0.99
    """grad_normalize=running: EMA momentum of the per-objective gradient norms"""
    single_loss_weight: float = 1.0
    """paperec: weight of the unweighted sum_k L_k added to the personalized sum_k w_k(s) L_k"""
    actor_hidden: int = 64
    """weight generator (DDPG actor) hidden width"""
    critic_hidden: int = 128
    """critic hidden width"""
    temperature: float = 1.0
    """softmax temperature of the weight generator"""
    actor_lr: float = 3e-4
    """actor Adam learning rate"""
    critic_lr: float = 1e-3
    """critic Adam learning rate"""
    gamma: float = 0.9
    """discount factor of the weight generator's MDP"""
    tau: float = 0.005
    """target network smoothing"""
    exploration_noise: float = 0.1
    """std of the logit-space exploration noise serving adds (recorded in every snapshot header,
    which the serving nodes follow; the simulator's evaluation trains with it too)"""
    list_scaled_reward: bool = False
    """divide each list's reward by sum_k ||g_k|| (after grad_normalize): every list counts the
    same in the critic's expectation, whatever its gradient magnitudes; the list's optimum is kept"""
    counterfactual_actions: int = 0
    """extra weights per list (uniform on the simplex) at which the critic also learns the Pareto
    reward, which is computable for any weights; 0 = the logged weights only (plain DDPG)"""
    policy_frequency: int = 1
    """actor updates every this many critic updates"""
    single_objective: str = "click"
    """single: the objective trained"""
    fixed_weights: tuple[float, ...] = (0.5, 0.5)
    """fixed: the global weights (one per objective)"""
    peltr_lower_bounds: tuple[float, ...] = (0.2, 0.2)
    """peltr: lower bounds c_k of the weights (sum <= 1)"""
    seed: int = 0
    """seeds model init and the per-step randomness"""
    device: str = ""
    """"" = CUDA when available, else CPU"""

    def exploration(self) -> Exploration:
        """How serving is to explore around this learner's weights: what its snapshots record."""
        return Exploration(noise_std=self.exploration_noise)

    def ddpg_config(self) -> DDPGConfig:
        return sub_config(
            DDPGConfig,
            self,
            obs_dim=self.ranker.d_model,
            action_dim=len(self.ranker.objectives),
            hidden=self.actor_hidden,
            head="simplex",
        )


@dataclass
class StepContext:
    """What a strategy sees of one step (graph attached: strategies may differentiate)."""

    batch: ListBatch
    state: Tensor  # (B, S) user state of s
    h: Tensor  # (B, L, D) shared representation
    losses: Tensor  # (B, K) per-list losses


class Strategy:
    """Turns one step's losses into loss weights; may learn on the side (paperec)."""

    name: ClassVar[str]

    def __init__(self, cfg: PAPERecConfig, ranker: Ranker, device: torch.device) -> None:
        self.cfg, self.ranker, self.device = cfg, ranker, device
        self.grad_scale = RunningGradScale(cfg.grad_scale_momentum)

    def _normalize(self, grads: Tensor, losses: Tensor, update: bool = True) -> Tensor:
        """``cfg.grad_normalize`` applied to ``grads`` (..., K, D) of ``losses`` (..., K);
        ``update=False`` leaves the running scale as it is."""
        if self.cfg.grad_normalize == "running":
            return self.grad_scale(grads) if update else self.grad_scale.scale(grads)
        return normalize_grads(grads, self.cfg.grad_normalize, losses)

    def weights(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """Loss weights (B, K) or (K,), and metrics."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"grad_scale": self.grad_scale.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "grad_scale" in state:  # absent in checkpoints written before it existed
            self.grad_scale.load_state_dict(state["grad_scale"], self.device)

    def _global(self, values: tuple[float, ...], what: str) -> Tensor:
        if len(values) != self.ranker.num_objectives:
            raise ValueError(f"{what} needs {self.ranker.num_objectives} values, got {values}")
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    def _named(self, prefix: str, weights: Tensor) -> dict[str, float]:
        mean = weights.reshape(-1, weights.shape[-1]).mean(0)
        return {f"{prefix}/{o}": float(mean[k]) for k, o in enumerate(self.cfg.ranker.objectives)}


class SingleStrategy(Strategy):
    name = "single"

    def weights(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        k = self.cfg.ranker.objectives.index(self.cfg.single_objective)
        w = torch.zeros(self.ranker.num_objectives, device=self.device)
        w[k] = 1.0
        return w, {}


class FixedStrategy(Strategy):
    name = "fixed"

    def weights(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        return self._global(self.cfg.fixed_weights, "fixed_weights"), {}


class PELTRStrategy(Strategy):
    name = "peltr"

    def weights(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        inputs = [ctx.h] if self.cfg.grad_mode == "shared_repr" else shared_parameters(self.ranker)
        grads = batch_grads(ctx.losses, inputs)  # (K, D)
        bounds = self._global(self.cfg.peltr_lower_bounds, "peltr_lower_bounds")
        w = min_norm(self._normalize(grads, ctx.losses.detach().mean(0)), bounds)
        return w, self._named("weight", w)


class PAPERecStrategy(Strategy):
    name = "paperec"

    def __init__(self, cfg: PAPERecConfig, ranker: Ranker, device: torch.device) -> None:
        super().__init__(cfg, ranker, device)
        self.ddpg = DDPG(cfg.ddpg_config(), device)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # counterfactual weights (CPU)

    def reward_grads(self, ctx: StepContext, update: bool = True) -> Tensor:
        """Each list's per-objective gradients (B, K, D) as the reward -||sum_k w_k g_k|| sees
        them (``grad_mode``, ``grad_normalize``, ``list_scaled_reward``)."""
        if self.cfg.grad_mode == "shared_repr":
            grads = per_list_repr_grads(ctx.losses, ctx.h)  # (B, K, L*D)
        else:
            grads = per_list_param_grads(self.ranker, ctx.batch)  # (B, K, P)
        grads = self._normalize(grads, ctx.losses, update)
        if self.cfg.list_scaled_reward:
            grads = grads / grads.norm(dim=-1).sum(-1).clamp_min(1e-12)[:, None, None]  # (B, K, D)
        return grads

    def weights(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        batch = ctx.batch
        grads = self.reward_grads(ctx)  # (B, K, D)
        reward = -weighted_norm(grads, batch.action)  # (B,) for the logged weights
        w_best = min_norm(grads)  # (B, K) each list's own min-norm weights
        best = -weighted_norm(grads, w_best)  # (B,) the best any weights could do

        obs = ctx.state.detach()
        with torch.no_grad():
            next_obs = self.ranker.user_state(batch.next_user_feats, batch.next_history, batch.next_context)
        actions, rewards = self._with_counterfactuals(grads, batch.action, reward)
        m = actions.shape[0] // reward.shape[0]  # 1 + counterfactual_actions
        metrics = self.ddpg.update(
            obs.repeat(m, 1), actions, rewards, next_obs.repeat(m, 1), batch.done.repeat(m)
        )
        with torch.no_grad():
            w = self.ddpg.actor(obs)  # (B, K) personalized weights of the updated actor
        metrics.update(reward=reward.mean().item(), reward_best=best.mean().item())
        metrics.update(self._named("weight", w))
        metrics.update(self._named("best_weight", w_best))
        return w + self.cfg.single_loss_weight, metrics

    def _with_counterfactuals(self, grads: Tensor, logged: Tensor, reward: Tensor) -> tuple[Tensor, Tensor]:
        """The logged (action, reward) pairs, then ``counterfactual_actions`` more per list.

        The logged weights cover only a thin band around the current policy (serving's small
        exploration noise), so a critic fit to them alone extrapolates badly across the simplex,
        and the actor, ascending that critic, swings from corner to corner. The reward
        -||sum_k w_k g_k|| needs only the list's gradients, so it is exact at any w: the critic
        also learns it at weights drawn uniformly from the simplex (Dirichlet(1), from the
        strategy's own generator, part of its state). Their TD targets reuse the logged next
        state: the Pareto reward of s does not depend on which list the user saw next, only the
        bootstrapped value does (approximated).
        """
        n = self.cfg.counterfactual_actions
        if n <= 0:
            return logged, reward
        b, k = logged.shape
        # Dirichlet(1, ..., 1) = normalized Exp(1) draws, from the strategy's own generator
        u = torch.rand((n, b, k), generator=self.generator, dtype=torch.float64).clamp_min(1e-12)
        extra = (-u.log() / -u.log().sum(-1, keepdim=True)).to(grads.device, grads.dtype)  # (n, B, K)
        extra_reward = -weighted_norm(grads.unsqueeze(0), extra)  # (n, B)
        actions = torch.cat([logged, extra.reshape(n * b, k).to(logged.dtype)])
        return actions, torch.cat([reward, extra_reward.reshape(n * b).to(reward.dtype)])

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "ddpg": self.ddpg.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.ddpg.load_state_dict(state["ddpg"])
        if "generator" in state:  # absent in checkpoints written before it existed
            self.generator.set_state(state["generator"])


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (PAPERecStrategy, SingleStrategy, FixedStrategy, PELTRStrategy)
}


class Trainer:
    def __init__(self, cfg: PAPERecConfig) -> None:
        if cfg.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {cfg.strategy!r}; one of {sorted(STRATEGIES)}")
        if cfg.grad_mode not in ("shared_repr", "full_params"):
            raise ValueError(f"unknown grad_mode {cfg.grad_mode!r}")
        self.cfg = cfg
        self.device = default_device(cfg.device)
        with seeded(cfg.seed, self.device):
            self.ranker = Ranker(cfg.ranker).to(self.device)
            self.strategy = STRATEGIES[cfg.strategy](cfg, self.ranker, self.device)
        self.optimizer = torch.optim.AdamW(
            self.ranker.parameters(), lr=cfg.ranker_lr, weight_decay=cfg.weight_decay
        )
        self.num_steps = 0
        """training steps applied (refused ones excluded)"""
        self.nonfinite_steps = 0
        """steps refused because an input, loss or gradient was not finite"""
        log.info("trainer: strategy=%s grad_mode=%s device=%s", cfg.strategy, cfg.grad_mode, self.device)

    def step(self, batch: ListBatch) -> dict[str, float]:
        """One training step on ``batch`` (not modified); returns metrics.

        Refused (nothing changes but ``nonfinite_steps``; metrics ``nonfinite_step`` = 1) when a
        row of the batch, a loss or a gradient is not finite: see the module docstring.
        """
        batch = batch.to(self.device)
        bad_rows = int(nonfinite_rows(batch).sum())
        if bad_rows:
            return self._refuse("input", {"nonfinite_rows": float(bad_rows)})
        # The strategy may step its own optimizers (the critic) before a later check fails: keep
        # its state to put back, so that a refused batch leaves no partial update (~1% of a step).
        strategy_state = copy.deepcopy(self.strategy.state_dict())
        with seeded(self.cfg.seed + 1 + self.num_steps, self.device):
            self.ranker.train()
            state = self.ranker.user_state(batch.user_feats, batch.history, batch.context)  # (B, S)
            h = self.ranker.encode(batch, user_state=state)  # (B, L, D)
            losses = self.ranker.losses_per_list(self.ranker.heads(h), batch)  # (B, K)
            if not all_finite([losses]):  # before the strategy: its reward would be NaN too
                return self._refuse("loss", {})
            weights, metrics = self.strategy.weights(StepContext(batch, state, h, losses))
            loss = (weights.detach() * losses).sum(-1).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # the total gradient norm is non-finite iff a gradient is (clip_grad_norm_ with an
            # infinite max only measures); it is computed for clipping anyway
            max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(self.ranker.parameters(), max_norm)
            if metrics.get("nonfinite_step") or not all_finite([loss, weights, grad_norm]):
                self.optimizer.zero_grad(set_to_none=True)
                self.strategy.load_state_dict(strategy_state)
                return self._refuse("loss or gradient", {})
            if self.cfg.max_grad_norm > 0:
                metrics["grad_norm"] = grad_norm.item()
            self.optimizer.step()
        self.num_steps += 1
        mean_losses = losses.detach().mean(0)
        metrics["loss"] = loss.item()
        metrics["nonfinite_step"] = 0.0
        metrics.update({f"loss/{o}": float(mean_losses[k]) for k, o in enumerate(self.cfg.ranker.objectives)})
        return metrics

    def _refuse(self, what: str, metrics: dict[str, float]) -> dict[str, float]:
        self.nonfinite_steps += 1
        log.warning(
            "non-finite %s: step refused (after step %d; %d refused so far)",
            what,
            self.num_steps,
            self.nonfinite_steps,
        )
        return {**metrics, "nonfinite_step": 1.0}

    def weights_finite(self) -> bool:
        """Every parameter of the ranker and of the strategy's networks is finite."""
        modules: list[torch.nn.Module] = [self.ranker]
        if isinstance(self.strategy, PAPERecStrategy):
            d = self.strategy.ddpg
            modules += [d.actor, d.qf, d.actor_target, d.qf_target]
        return all_finite(p for m in modules for p in m.parameters())

    def reward_probe(self, batch: ListBatch) -> tuple[Tensor, Tensor]:
        """paperec only: the weight generator's w(s) (B, K) and each list's Gram matrix G (B, K, K)
        of the gradients its reward sees, so that the reward of any weights w is -sqrt(w^T G w).
        Looks without training: no update, no dropout, the running gradient scale untouched."""
        if not isinstance(self.strategy, PAPERecStrategy):
            raise ValueError("only the paperec strategy has a weight generator to probe")
        batch = batch.to(self.device)
        training = self.ranker.training
        self.ranker.eval()
        try:
            state = self.ranker.user_state(batch.user_feats, batch.history, batch.context)  # (B, S)
            h = self.ranker.encode(batch, user_state=state)  # (B, L, D)
            losses = self.ranker.losses_per_list(self.ranker.heads(h), batch)  # (B, K)
            grads = self.strategy.reward_grads(StepContext(batch, state, h, losses), update=False).detach()
            with torch.no_grad():
                w = self.strategy.ddpg.actor(state.detach())
        finally:
            self.ranker.train(training)
        return w, grads @ grads.transpose(-1, -2)  # (B, K), (B, K, K)

    def actor_model(self) -> ActorModel:
        """A serving copy (ranker + weight generator) on CPU, in eval mode (paperec only)."""
        if not isinstance(self.strategy, PAPERecStrategy):
            raise ValueError("only the paperec strategy has a weight generator to serve")
        model = ActorModel(self.cfg.ranker, self.strategy.ddpg.actor.cfg)
        model.ranker.load_state_dict(self.ranker.state_dict())
        model.actor.load_state_dict(self.strategy.ddpg.actor.state_dict())
        return model.eval()

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": config_to_dict(self.cfg),
            "ranker": self.ranker.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "strategy": self.strategy.state_dict(),
            "num_steps": self.num_steps,
            "nonfinite_steps": self.nonfinite_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != config_to_dict(self.cfg):
            log.warning("loading a checkpoint written with a different config")
        self.ranker.load_state_dict(state["ranker"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.strategy.load_state_dict(state["strategy"])
        self.num_steps = int(state["num_steps"])
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))  # absent in older checkpoints
