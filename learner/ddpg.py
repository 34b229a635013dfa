"""DDPG (Lillicrap et al. 2016), generic over state and action widths; cleanrl-style update.

The actor comes from :mod:`model.policy` (simplex head for objective weights, tanh head for
ordinary control); this module adds the critic, the target networks and the optimizers.
``update`` learns from logged transitions (off-policy), so it takes the actions as given.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from learner import distributed
from learner.numeric import all_finite, grads_finite
from model.config import sub_config
from model.policy import Actor, ActorConfig

Tensor = torch.Tensor


@dataclass
class DDPGConfig:
    obs_dim: int = 64
    """state width S"""
    obs: str = "ranker"
    """what the state is, recorded in the actor's config (model.policy.ActorConfig.obs); DDPG reads
    only its width"""
    action_dim: int = 2
    """action width A"""
    hidden: int = 64
    """actor hidden width"""
    head: str = "simplex"
    """actor head: "simplex" or "tanh" (see model.policy)"""
    temperature: float = 1.0
    """simplex head: softmax temperature"""
    action_scale: float = 1.0
    """tanh head: action bound"""
    critic_hidden: int = 128
    """critic hidden width"""
    critics: int = 1
    """critics in the ensemble (1 = plain DDPG): each learns the same TD target from its own
    initialization; the actor and the target use their mean"""
    actor_lr: float = 3e-4
    """actor Adam learning rate"""
    critic_lr: float = 1e-3
    """critic Adam learning rate"""
    gamma: float = 0.9
    """discount factor"""
    tau: float = 0.005
    """target smoothing: target <- (1 - tau) target + tau online"""
    policy_frequency: int = 1
    """actor and target updates every this many critic updates"""
    preactivation_penalty: float = 0.0
    """weight of mean(z^2) of the actor's pre-head outputs z in its loss (0 = plain DDPG)"""
    actor_search: int = 0
    """simplex head: 0 = the actor ascends Q(s, mu(s)) (deterministic policy gradient); N > 0 =
    it regresses (cross-entropy) on the best of N weights drawn uniformly on the simplex per state
    under the critic, a step whose gradient does not vanish where the softmax saturates"""
    seed: int = 0
    """seeds the actor_search draws (with the update count: a step is a pure function of the state)"""

    def actor_config(self) -> ActorConfig:
        return sub_config(ActorConfig, self)


class QNetwork(nn.Module):
    """Q(s, a): an MLP on the concatenated state and action."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim + action_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        return self.net(torch.cat([obs, action], dim=-1)).squeeze(-1)  # (B,)

    def values(self, obs: Tensor, action: Tensor) -> Tensor:
        """Q(s, a) as an ensemble of one (1, B), like :meth:`QEnsemble.values`."""
        return self(obs, action).unsqueeze(0)


class QEnsemble(nn.Module):
    """N independently initialized critics; Q(s, a) is their mean.

    A critic that learns a small action effect under noisy rewards fits a different slope from
    each initialization and each minibatch; the actor, which follows the slope, inherits that
    noise. The mean of N critics has 1/N of its variance (as far as the members' errors are
    independent) at N times a tiny MLP's cost.
    """

    def __init__(self, n: int, obs_dim: int, action_dim: int, hidden: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(QNetwork(obs_dim, action_dim, hidden) for _ in range(n))

    def values(self, obs: Tensor, action: Tensor) -> Tensor:
        return torch.stack([q(obs, action) for q in self.members])  # (N, B)

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        return self.values(obs, action).mean(0)  # (B,)


def make_critic(cfg: DDPGConfig) -> QNetwork | QEnsemble:
    """One QNetwork (plain DDPG, the checkpoint layout of before ensembles) or a QEnsemble."""
    if cfg.critics < 1:
        raise ValueError(f"critics must be >= 1, got {cfg.critics}")
    if cfg.critics == 1:
        return QNetwork(cfg.obs_dim, cfg.action_dim, cfg.critic_hidden)
    return QEnsemble(cfg.critics, cfg.obs_dim, cfg.action_dim, cfg.critic_hidden)


def q_at(qf: nn.Module, obs: Tensor, weights: Tensor) -> Tensor:
    """Q(s_b, w_bm) of each state (B, S) at its M actions ``weights`` (B, M, A): (B, M)."""
    b, m, a = weights.shape
    return qf(obs.repeat_interleave(m, 0), weights.reshape(b * m, a)).view(b, m)


def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for tp, p in zip(target.parameters(), online.parameters(), strict=True):
            tp.lerp_(p, tau)


class DDPG:
    def __init__(self, cfg: DDPGConfig, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.actor = Actor(cfg.actor_config()).to(self.device)
        self.qf = make_critic(cfg).to(self.device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.qf_target = copy.deepcopy(self.qf).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.q_optimizer = torch.optim.Adam(self.qf.parameters(), lr=cfg.critic_lr)
        self.num_updates = 0
        if cfg.actor_search > 0 and cfg.head != "simplex":
            raise ValueError(f"actor_search needs the simplex head, got head={cfg.head!r}")

    def update(
        self,
        obs: Tensor,
        actions: Tensor,
        rewards: Tensor,
        next_obs: Tensor,
        dones: Tensor,
        *,
        actor_penalty: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, float]:
        """One critic TD step and (every policy_frequency) one actor + target step.

        obs, next_obs (B, S); actions (B, A); rewards, dones (B,). Inputs are not modified.
        ``actor_penalty``: maps the actor's actions (B, A) to a per-row penalty (B,) that the actor
        also minimizes (its loss is mean(-Q(s, mu(s)) + penalty(mu(s)))): a known, differentiable
        cost of the action that the critic need not learn by TD. With ``actor_search`` it also
        takes candidates (B, M, A) to (B, M): the search maximizes Q - penalty.
        A non-finite loss or gradient skips the optimizer step it precedes and returns
        ``nonfinite_step = 1`` (if the actor's is, the critic has stepped already: undoing it is
        the caller's, see ``Trainer.step``).
        """
        cfg = self.cfg
        with torch.no_grad():
            next_actions = self.actor_target(next_obs)
            next_q = self.qf_target(next_obs, next_actions)  # (B,) the ensemble's mean
            td_target = rewards + cfg.gamma * (1.0 - dones) * next_q
        member_values = self.qf.values(obs, actions)  # (N, B)
        qf_values = member_values.mean(0)  # (B,)
        # each member regresses on the same target: the sum keeps each member's step as in plain DDPG
        qf_loss = (member_values - td_target).pow(2).mean(1).sum()
        self.q_optimizer.zero_grad(set_to_none=True)
        qf_loss.backward()
        distributed.average_grads_(self.qf.parameters())  # data parallel: the same step on every rank
        # a non-finite loss or gradient must not reach the weights or Adam's moments (the averaged
        # gradients agree across ranks; the loss is this rank's: any rank's refusal is all ranks')
        if distributed.any_rank(not all_finite([qf_loss]), self.device) or not grads_finite(
            self.qf.parameters()
        ):
            self.q_optimizer.zero_grad(set_to_none=True)
            return {"nonfinite_step": 1.0}
        self.q_optimizer.step()
        # per member, so that the metric reads the same whatever the ensemble's size
        metrics = {"qf_loss": qf_loss.item() / member_values.shape[0], "qf_value": qf_values.mean().item()}

        self.num_updates += 1
        if self.num_updates % cfg.policy_frequency == 0:
            self.qf.requires_grad_(False)
            z = self.actor.net(obs)  # (B, A) pre-head outputs (logits for the simplex head)
            pi = self.actor.head(z)  # (B, A)
            if cfg.actor_search > 0:
                # policy improvement by search: the critic's best of N drawn weights is the target
                best = self._search(obs, actor_penalty)  # (B, A)
                actor_loss = -(best * torch.log_softmax(z / cfg.temperature, -1)).sum(-1).mean()
                actor_penalty = None  # already in the search's objective
                metrics["actor_q"] = self.qf(obs, pi).mean().item()
            else:
                # deterministic policy gradient: ascend Q(s, mu(s)) through the critic into the actor
                actor_loss = -self.qf(obs, pi).mean()
            if cfg.preactivation_penalty > 0:
                # A saturated head (softmax at a corner, tanh at its bound) passes almost no
                # gradient of Q back to z: once there, the actor cannot return, whatever the
                # critic learns. The penalty's gradient on z does not vanish and keeps z where
                # the head still responds.
                actor_loss = actor_loss + cfg.preactivation_penalty * z.pow(2).mean()
            if actor_penalty is not None:
                penalty = actor_penalty(pi).mean()
                actor_loss = actor_loss + penalty
                metrics["actor_penalty"] = penalty.item()
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.qf.requires_grad_(True)
            distributed.average_grads_(self.actor.parameters())
            actor_bad = distributed.any_rank(not all_finite([actor_loss]), self.device)
            if actor_bad or not grads_finite(self.actor.parameters()):
                # the critic has stepped: the caller undoes it (Trainer.step restores the state)
                self.actor_optimizer.zero_grad(set_to_none=True)
                return {**metrics, "nonfinite_step": 1.0}
            self.actor_optimizer.step()
            soft_update(self.actor_target, self.actor, cfg.tau)
            soft_update(self.qf_target, self.qf, cfg.tau)
            metrics["actor_loss"] = actor_loss.item()
        return metrics

    @torch.no_grad()
    def _search(self, obs: Tensor, penalty: Callable[[Tensor], Tensor] | None) -> Tensor:
        """For each state (B, S), the best of ``actor_search`` weights (B, A) drawn uniformly on
        the simplex, by Q(s, w) (minus ``penalty(w)``). The draws are seeded by (seed, update
        count), so a step stays a pure function of the learner's state and its batch."""
        b, m, k = obs.shape[0], self.cfg.actor_search, self.cfg.action_dim
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.num_updates)
        e = -torch.rand(b, m, k, generator=g).clamp_min(1e-12).log()  # (B, M, K) Exp(1)
        candidates = (e / e.sum(-1, keepdim=True)).to(obs)  # (B, M, K) Dirichlet(1): uniform
        q = q_at(self.qf, obs, candidates)  # (B, M)
        if penalty is not None:
            q = q - penalty(candidates)
        return candidates[torch.arange(b, device=obs.device), q.argmax(1)]  # (B, K)

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "qf": self.qf.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "qf_target": self.qf_target.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "q_optimizer": self.q_optimizer.state_dict(),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("actor", "qf", "actor_target", "qf_target", "actor_optimizer", "q_optimizer"):
            getattr(self, name).load_state_dict(state[name])
        self.num_updates = int(state["num_updates"])
