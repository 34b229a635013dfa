"""The PAPERec training step (Xie et al., WWW 2021) and its baselines behind one interface.

One ``Trainer.step(batch)`` on B logged transitions (s, list, labels, logged weights w, s'):

1. ranker forward: user state (B, D), shared representation h (B, L, D), per-list
   per-objective losses L (B, K) (masked mean over list positions);
2. the strategy turns them into loss weights (B, K) or (K,):
   - ``paperec``: one DDPG step of the weight generator on (o(s), w, r, o(s'), done), w the
     *logged* weights; loss weights = the current actor's w(s) (detached) +
     ``single_loss_weight`` (the sum_k L_k term). The generator's observation o(s) is
     ``policy_state``: "ranker" = the ranker's user state (as published; it drifts as the ranker
     trains, under the critic's feet) or "features" = user features ⊕ context (stable). The
     reward is ``reward`` (g_bk: list b's gradient of L_bk w.r.t. h, MGDA-UB, or w.r.t. all
     shared parameters with grad_mode="full_params", after ``grad_normalize``):
     * ``pareto`` (PAPERec as published): r_b = -|| sum_k w_bk g_bk ||_2, how close the logged
       weights came to a Pareto-stationary point (0 at best); exact at any w, hence
       ``counterfactual_actions``;
     * ``engagement``: r_b = clicks_b / engagement_click_scale + dwell_b / engagement_dwell_scale_s,
       the list's realized feedback; the TD target bootstraps unless the user left (done); no
       gradients are computed (as fast as a pareto step without its K backward passes);
     * ``hybrid``: the critic learns the engagement reward; the actor ascends
       Q(o, mu(o)) - hybrid_lambda * regret(mu(o)), regret(w) = (sqrt(w^T G w) - sqrt(w*^T G w*))
       / sum_k ||g_k|| with G the list's Gram matrix and w* its min-norm weights: exact and
       differentiable in w (:class:`ListRegret`), so no critic has to learn it.
     Metrics of every mode: ``reward`` and ``qf_spread`` (mean over lists of max - min of
     Q(o, w) over 11 dwell weights); with gradients also ``regret_spread`` (the same for the
     regret): hybrid_lambda is calibrated as c * qf_spread / regret_spread;
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

Data parallel (a torch.distributed process group; learner/distributed.py): each rank steps on its
share of the global batch; the ranker's, critic's and actor's gradients are averaged across ranks
after each backward, the running gradient scale and PE-LTR's batch gradients are global, and a
refusal on any rank is every rank's, so every rank applies the global batch's update
(docs/learner.md, "Data-parallel training"). Without a group all of that is the identity.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from learner import distributed
from learner.ddpg import DDPG, DDPGConfig, q_at
from learner.grads import batch_grads, per_list_param_grads, per_list_repr_grads, shared_parameters
from learner.mgda import Normalize, RunningGradScale, gram_norm, min_norm, normalize_grads, weighted_norm
from learner.numeric import all_finite, nonfinite_rows
from model.batch import ListBatch
from model.config import config_to_dict, sub_config
from model.ranker import Ranker, RankerConfig
from model.runtime import default_device, seeded
from model.scoring import POLICY_OBS, ActorModel, policy_obs, policy_obs_dim
from schemas import Exploration

log = logging.getLogger(__name__)
Tensor = torch.Tensor

REWARDS = ("pareto", "engagement", "hybrid")
"""the weight generator's rewards (``PAPERecConfig.reward``; see the module docstring)"""
SPREAD_GRID = 11
"""dwell weights 0, 0.1, ..., 1 at which the ``qf_spread``/``regret_spread`` metrics look"""


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
    reward: str = "engagement"
    """paperec: the weight generator's reward, "pareto" (PAPERec as published), "engagement" (the
    default: what the evaluation supports, docs/evaluation.md) or "hybrid" (see the module docstring)"""
    policy_state: str = "features"
    """paperec: what the weight generator reads, "features" (user features + context: stable) or
    "ranker" (the ranker's user state, as published: drifts as the ranker trains)"""
    engagement_click_scale: float = 1.0
    """engagement/hybrid: clicks per unit of engagement reward"""
    engagement_dwell_scale_s: float = 60.0
    """engagement/hybrid: dwell seconds per unit of engagement reward"""
    hybrid_lambda: float = 1.0
    """hybrid: weight of the list-scaled MGDA regret the actor pays (provisional, to be calibrated
    as c * qf_spread / regret_spread)"""
    actor_hidden: int = 64
    """weight generator (DDPG actor) hidden width"""
    critic_hidden: int = 128
    """critic hidden width"""
    critics: int = 1
    """critics in the weight generator's ensemble; the actor ascends their mean (learner.ddpg.QEnsemble)"""
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
    exploration_wide_noise: float = 1.0
    """std of the logit noise on widely explored lists (wide enough to learn the response to weights)"""
    exploration_wide_share: float = 0.0
    """share of lists explored with exploration_wide_noise (drawn per list)"""
    exploration_uniform_share: float = 0.5
    """share of lists served weights uniform on the simplex, whatever the actor outputs (covers the
    interior once the softmax saturates, and gives the critic the weights' effect to learn); the
    rest (1 - wide - uniform) get exploration_noise (0.5 chosen on dev seeds, docs/evaluation.md)"""
    list_scaled_reward: bool = False
    """divide each list's reward by sum_k ||g_k|| (after grad_normalize): every list counts the
    same in the critic's expectation, whatever its gradient magnitudes; the list's optimum is kept"""
    counterfactual_actions: int = 0
    """extra weights per list (uniform on the simplex) at which the critic also learns the Pareto
    reward, which is computable for any weights; 0 = the logged weights only (plain DDPG)"""
    policy_frequency: int = 1
    """actor updates every this many critic updates"""
    actor_search: int = 0
    """weight generator's actor step: 0 = deterministic policy gradient (DDPG, as published); N > 0
    = cross-entropy towards the critic's best of N weights drawn uniformly on the simplex
    (learner.ddpg.DDPGConfig.actor_search)"""
    preactivation_penalty: float = 1e-2
    """weight of mean(z^2) of the weight generator's logits z in its loss: keeps the softmax off
    the corners, where the gradient of Q vanishes and the actor could never come back (learner.md;
    1e-2 chosen on dev seeds, docs/evaluation.md)"""
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
        return Exploration(
            noise_std=self.exploration_noise,
            wide_std=self.exploration_wide_noise,
            wide_share=self.exploration_wide_share,
            uniform_share=self.exploration_uniform_share,
        )

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; one of {list(REWARDS)}")
        if self.policy_state not in POLICY_OBS:
            raise ValueError(f"unknown policy_state {self.policy_state!r}; one of {list(POLICY_OBS)}")
        if self.engagement_click_scale <= 0 or self.engagement_dwell_scale_s <= 0:
            raise ValueError("engagement_click_scale and engagement_dwell_scale_s must be positive")
        if self.hybrid_lambda < 0:
            raise ValueError(f"hybrid_lambda must be >= 0, got {self.hybrid_lambda}")
        if self.counterfactual_actions > 0 and self.reward != "pareto":
            raise ValueError(
                f"counterfactual_actions needs reward='pareto': the {self.reward} reward is not "
                "computable at weights that were not served"
            )

    def ddpg_config(self) -> DDPGConfig:
        return sub_config(
            DDPGConfig,
            self,
            obs_dim=policy_obs_dim(self.ranker, self.policy_state),
            obs=self.policy_state,
            action_dim=len(self.ranker.objectives),
            hidden=self.actor_hidden,
            head="simplex",
        )


@dataclass
class StepContext:
    """What a strategy sees of one step (graph attached: strategies may differentiate)."""

    batch: ListBatch
    state: Tensor  # (B, D) the ranker's user state of s
    h: Tensor  # (B, L, D) shared representation
    losses: Tensor  # (B, K) per-list losses
    obs: Tensor | None = None  # (B, S) the weight generator's observation of s (detached)
    next_obs: Tensor | None = None  # (B, S) ... of s' (detached); both None without a weight generator


class Strategy:
    """Turns one step's losses into loss weights; may learn on the side (paperec)."""

    name: ClassVar[str]
    has_policy: ClassVar[bool] = False
    """a weight generator: the step gives it ``StepContext.obs``/``next_obs``"""

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
        if distributed.active():
            # the global batch's gradients, on every rank: w.r.t. h each rank holds its lists' part
            # of the (K, B*L*D) gradient (scaled by its share), w.r.t. parameters the ranks' mean
            n = distributed.world_size()
            if self.cfg.grad_mode == "shared_repr":
                grads = distributed.gather_cat(grads, dim=1) / n
            else:
                grads = distributed.average(grads)
        bounds = self._global(self.cfg.peltr_lower_bounds, "peltr_lower_bounds")
        w = min_norm(self._normalize(grads, distributed.average(ctx.losses.detach().mean(0))), bounds)
        return w, self._named("weight", w)


def engagement_reward(batch: ListBatch, click_scale: float, dwell_scale_s: float) -> Tensor:
    """Each list's realized engagement (B,): clicks / click_scale + dwell seconds / dwell_scale_s."""
    mask = batch.mask.to(batch.clicks.dtype)  # (B, L)
    clicks = (batch.clicks * mask).sum(-1)  # (B,)
    dwell_s = (batch.dwell * mask).sum(-1)  # (B,)
    return clicks / click_scale + dwell_s / dwell_scale_s


def dwell_grid_weights(objectives: tuple[str, ...], dwell: Tensor) -> Tensor:
    """Weights (G, K) for dwell weights ``dwell`` (G,): d on the dwell objective (the last one when
    none is named "dwell"), 1 - d on the first other objective, 0 on the rest."""
    k = len(objectives)
    d_index = objectives.index("dwell") if "dwell" in objectives else k - 1
    other = 0 if d_index != 0 else 1
    w = torch.zeros(dwell.shape[0], k, dtype=dwell.dtype, device=dwell.device)
    w[:, d_index] = dwell
    w[:, other] = 1.0 - dwell
    return w


class ListRegret:
    """regret(w) = (||sum_k w_k g_k|| - ||sum_k w*_k g_k||) / sum_k ||g_k|| of each list, exactly,
    from the Gram matrices G (B, K, K) of its gradients (w* = the list's min-norm weights).

    Dividing by sum_k ||g_k|| makes it a list-scale-free number in [0, 1] (by the triangle
    inequality), so lists with large gradients do not dominate the actor's penalty.
    """

    def __init__(self, grads: Tensor) -> None:
        grads = grads.detach()  # (B, K, D)
        self.gram = grads @ grads.transpose(-1, -2)  # (B, K, K)
        self.w_best = min_norm(grads)  # (B, K)
        self.best = gram_norm(self.gram, self.w_best)  # (B,)
        self.scale = self.gram.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt().sum(-1).clamp_min(1e-12)  # (B,)

    def __call__(self, w: Tensor) -> Tensor:
        """regret (B,) of weights (B, K), or (B, G) of weights (B, G, K); differentiable in w."""
        best, scale = (self.best, self.scale) if w.dim() == 2 else (self.best[:, None], self.scale[:, None])
        return (gram_norm(self.gram, w) - best) / scale

    def scaled(self, factor: float) -> Callable[[Tensor], Tensor]:
        """w -> factor * regret(w)."""
        return lambda w: factor * self(w)


class PAPERecStrategy(Strategy):
    name = "paperec"
    has_policy = True

    def __init__(self, cfg: PAPERecConfig, ranker: Ranker, device: torch.device) -> None:
        super().__init__(cfg, ranker, device)
        self.ddpg = DDPG(cfg.ddpg_config(), device)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # counterfactual weights (CPU)
        self.spread_grid = dwell_grid_weights(
            cfg.ranker.objectives, torch.linspace(0.0, 1.0, SPREAD_GRID, device=device)
        )  # (G, K)

    @property
    def needs_grads(self) -> bool:
        """pareto's reward and hybrid's regret are functions of the list's gradients; engagement
        needs none (and skips their K backward passes)."""
        return self.cfg.reward in ("pareto", "hybrid")

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
        cfg, batch = self.cfg, ctx.batch
        assert ctx.obs is not None and ctx.next_obs is not None, "the trainer gives a policy its obs"
        obs, next_obs = ctx.obs, ctx.next_obs  # (B, S) each, detached
        metrics: dict[str, float] = {}

        # 1. the list's gradients and its exact MGDA regret (pareto, hybrid)
        grads = self.reward_grads(ctx) if self.needs_grads else None  # (B, K, D)
        regret = None if grads is None else ListRegret(grads)

        # 2. the reward the critic learns by TD, and the actor's exact penalty (hybrid)
        if cfg.reward == "pareto":
            assert grads is not None and regret is not None
            reward = -weighted_norm(grads, batch.action)  # (B,) for the logged weights
            actions, rewards = self._with_counterfactuals(grads, batch.action, reward)
            metrics["reward_best"] = -weighted_norm(grads, regret.w_best).mean().item()
        else:  # engagement, hybrid: the list's realized clicks and dwell
            reward = engagement_reward(batch, cfg.engagement_click_scale, cfg.engagement_dwell_scale_s)
            actions, rewards = batch.action, reward
        penalty = None
        if cfg.reward == "hybrid":
            assert regret is not None
            penalty = regret.scaled(cfg.hybrid_lambda)  # w (B, K) -> lambda * regret(w) (B,)

        # 3. one DDPG step: (1 - done) bootstraps truncated sessions, stops at a leave
        m = actions.shape[0] // reward.shape[0]  # 1 + counterfactual_actions
        metrics.update(
            self.ddpg.update(
                obs.repeat(m, 1),
                actions,
                rewards,
                next_obs.repeat(m, 1),
                batch.done.repeat(m),
                actor_penalty=penalty,
            )
        )
        with torch.no_grad():
            w = self.ddpg.actor(obs)  # (B, K) personalized weights of the updated actor
            metrics.update(reward=reward.mean().item(), **self._spreads(obs, regret))
            if regret is not None:
                metrics["regret"] = regret(w).mean().item()
                metrics.update(self._named("best_weight", regret.w_best))
        metrics.update(self._named("weight", w))
        return w + cfg.single_loss_weight, metrics

    def _spreads(self, obs: Tensor, regret: ListRegret | None) -> dict[str, float]:
        """qf_spread: mean over lists of max - min of Q(s, w) over SPREAD_GRID dwell weights (how
        much the critic says the weights matter); regret_spread: the same for the regret. The
        hybrid's lambda is calibrated as c * qf_spread / regret_spread."""
        b, g = obs.shape[0], self.spread_grid.shape[0]
        grid = self.spread_grid.to(obs.dtype)  # (G, K)
        q = q_at(self.ddpg.qf, obs, grid.expand(b, g, -1))  # (B, G)
        out = {"qf_spread": (q.amax(1) - q.amin(1)).mean().item()}
        if regret is not None:
            r = regret(grid.expand(b, g, -1))  # (B, G)
            out["regret_spread"] = (r.amax(1) - r.amin(1)).mean().item()
        return out

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
        log.info(
            "trainer: strategy=%s reward=%s policy_state=%s grad_mode=%s device=%s",
            *(cfg.strategy, cfg.reward, cfg.policy_state, cfg.grad_mode, self.device),
        )

    def step(self, batch: ListBatch) -> dict[str, float]:
        """One training step on ``batch`` (not modified); returns metrics.

        Refused (nothing changes but ``nonfinite_steps``; metrics ``nonfinite_step`` = 1) when a
        row of the batch, a loss or a gradient is not finite: see the module docstring.
        """
        batch = batch.to(self.device)
        bad_rows = int(nonfinite_rows(batch).sum())
        if distributed.any_rank(bad_rows > 0, self.device):  # data parallel: all ranks refuse
            return self._refuse("input", {"nonfinite_rows": float(bad_rows)})
        # The strategy may step its own optimizers (the critic) before a later check fails: keep
        # its state to put back, so that a refused batch leaves no partial update (~1% of a step).
        strategy_state = copy.deepcopy(self.strategy.state_dict())
        with seeded(self.cfg.seed + 1 + self.num_steps, self.device):
            self.ranker.train()
            state = self.ranker.user_state(batch.user_feats, batch.history, batch.context)  # (B, S)
            h = self.ranker.encode(batch, user_state=state)  # (B, L, D)
            losses = self.ranker.losses_per_list(self.ranker.heads(h), batch)  # (B, K)
            # before the strategy: its reward would be NaN too
            if distributed.any_rank(not all_finite([losses]), self.device):
                return self._refuse("loss", {})
            ctx = StepContext(batch, state, h, losses)
            if self.strategy.has_policy:
                ctx.obs, ctx.next_obs = self._policy_obs(batch, state)
            weights, metrics = self.strategy.weights(ctx)
            loss = (weights.detach() * losses).sum(-1).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_grads_(self.ranker.parameters())  # data parallel: one update for all
            # the total gradient norm is non-finite iff a gradient is (clip_grad_norm_ with an
            # infinite max only measures); it is computed for clipping anyway
            max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(self.ranker.parameters(), max_norm)
            finite = all_finite([loss, weights, grad_norm])  # grad_norm is the same on every rank
            if metrics.get("nonfinite_step") or distributed.any_rank(not finite, self.device):
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

    def _policy_obs(self, batch: ListBatch, state: Tensor) -> tuple[Tensor, Tensor]:
        """The weight generator's observations (B, S) of s and s' (detached: the policy does not
        train the ranker); ``state`` (B, D) is the ranker's state of s, already computed."""
        obs = policy_obs(
            self.ranker,
            self.cfg.policy_state,
            batch.user_feats,
            batch.history,
            batch.context,
            user_state=state,
        )
        with torch.no_grad():
            next_obs = policy_obs(
                self.ranker,
                self.cfg.policy_state,
                batch.next_user_feats,
                batch.next_history,
                batch.next_context,
            )
        return obs.detach(), next_obs

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

    def reward_probe(self, batch: ListBatch, dwell_grid: Tensor) -> tuple[Tensor, Tensor]:
        """paperec only: the weight generator's w(s) (B, K) and the per-list objective (B, G) the
        actor ascends at the weights of each dwell weight d of ``dwell_grid`` (G,) (see
        :func:`dwell_grid_weights`): pareto -sqrt(w^T G w), the exact reward; engagement Q(s, w);
        hybrid Q(s, w) - hybrid_lambda * regret(w). Looks without training: no update, no dropout,
        the running gradient scale untouched."""
        strategy = self.strategy
        if not isinstance(strategy, PAPERecStrategy):
            raise ValueError("only the paperec strategy has a weight generator to probe")
        batch = batch.to(self.device)
        grid = dwell_grid_weights(self.cfg.ranker.objectives, dwell_grid.to(self.device))  # (G, K)
        b, g = batch.batch_size, grid.shape[0]
        training = self.ranker.training
        self.ranker.eval()
        try:
            state = self.ranker.user_state(batch.user_feats, batch.history, batch.context)  # (B, D)
            regret = None
            if strategy.needs_grads:
                h = self.ranker.encode(batch, user_state=state)  # (B, L, D)
                losses = self.ranker.losses_per_list(self.ranker.heads(h), batch)  # (B, K)
                ctx = StepContext(batch, state, h, losses)
                regret = ListRegret(strategy.reward_grads(ctx, update=False))
            with torch.no_grad():
                obs = policy_obs(
                    self.ranker,
                    self.cfg.policy_state,
                    batch.user_feats,
                    batch.history,
                    batch.context,
                    user_state=state,
                )  # (B, S)
                w = strategy.ddpg.actor(obs)  # (B, K)
                grid_w = grid.to(obs.dtype).expand(b, g, -1)  # (B, G, K)
                if self.cfg.reward == "pareto":
                    assert regret is not None
                    objective = -gram_norm(regret.gram, grid_w)  # (B, G)
                else:
                    objective = q_at(strategy.ddpg.qf, obs, grid_w)  # (B, G)
                    if self.cfg.reward == "hybrid":
                        assert regret is not None
                        objective = objective - self.cfg.hybrid_lambda * regret(grid_w)
        finally:
            self.ranker.train(training)
        return w, objective

    def actor_model(self) -> ActorModel:
        """A serving copy (ranker + weight generator) on CPU, in eval mode (paperec only); its
        actor config records what the generator reads (``obs``), so serving feeds it the same."""
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
        if self.strategy.has_policy:
            # a critic learned one reward on one observation: it cannot carry over to another
            # (checkpoints from before these fields were the published PAPERec: pareto on the ranker)
            for name, before in (("reward", "pareto"), ("policy_state", "ranker")):
                was, now = state["config"].get(name, before), getattr(self.cfg, name)
                if was != now:
                    raise ValueError(
                        f"the checkpoint was trained with {name}={was!r}, this trainer has {now!r}"
                    )
        if state["config"] != config_to_dict(self.cfg):
            log.warning("loading a checkpoint written with a different config")
        self.ranker.load_state_dict(state["ranker"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.strategy.load_state_dict(state["strategy"])
        self.num_steps = int(state["num_steps"])
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))  # absent in older checkpoints
