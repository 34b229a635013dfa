"""The deterministic policy (DDPG actor) and its action heads: model code, safe to serve.

The serving node imports this module (and :mod:`model.ranker`) but never the trainer.
Exploration noise is applied here, and :meth:`Actor.explore` returns the noise and the
log-propensity beside the action, because serving logs all three.

Exploration (``schemas.Exploration``) is Gaussian noise on the simplex head's logits z: per list,
with probability ``wide_share`` of std ``wide_std``, else of std ``noise_std``. The served weights
w = softmax((z + n) / T) have a density in additive-log-ratio coordinates y_k = log(w_k / w_K),
k < K (the simplex's K - 1 free coordinates, a bijection):

    y = ((z_k - z_K) + (n_k - n_K)) / T ~ N(mu, (s / T)^2 (I + 1 1^T)),  mu_k = (z_k - z_K) / T

(the difference of two independent N(0, s^2) is the 1 on the diagonal, the shared n_K the 1 1^T
off it), so with d = y - mu, det(I + 1 1^T) = K and (I + 1 1^T)^-1 = I - 1 1^T / K:

    log N_s(y) = -(K-1)/2 log(2 pi) - (K-1) log(s/T) - log(K)/2 - (|d|^2 - (sum d)^2 / K) / (2 (s/T)^2)

and the policy is the mixture log p(y) = logsumexp_c [log pi_c + log N_(s_c)(y)] over its
components c with pi_c > 0 and s_c > 0 (pi = 1 - wide_share, wide_share). A component with s = 0
is a point mass (no density): lists served with exactly zero noise get NaN, and an off-policy
estimator must treat them as a point mass of probability pi_c. :func:`log_propensity` gives the
density of any weights under any policy's logits (offline, off-policy estimates); the tanh head's
propensities are NaN (its actions are not objective weights and are clipped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from model.runtime import randn
from schemas import Exploration

Tensor = torch.Tensor


@dataclass
class ActorConfig:
    obs_dim: int = 64
    """state width S"""
    obs: str = "ranker"
    """what the actor reads (see model.scoring.policy_obs): "ranker" (the ranker's user state, as
    published) or "features" (user features + context); older configs, without it, mean "ranker"
    """
    action_dim: int = 2
    """action width (K objective weights for the weight generator)"""
    hidden: int = 64
    """width of the actor's two hidden layers"""
    head: str = "simplex"
    """action head: "simplex" (weights, softmax) or "tanh" (bounded control)"""
    temperature: float = 1.0
    """simplex head: softmax temperature"""
    action_scale: float = 1.0
    """tanh head: actions lie in [-action_scale, action_scale]"""


def as_exploration(exploration: Exploration | float) -> Exploration:
    """A float is plain logit noise of that std (what callers passed before wide exploration)."""
    if isinstance(exploration, Exploration):
        return exploration
    return Exploration(noise_std=float(exploration))


def _noise(like: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    if std == 0.0:
        return torch.zeros_like(like)
    return std * randn(tuple(like.shape), generator, like.device, like.dtype)


def exploration_noise(like: Tensor, exploration: Exploration, generator: torch.Generator | None) -> Tensor:
    """Logit noise shaped like ``like`` (B, A): per row std ``wide_std`` with probability
    ``wide_share`` (a Bernoulli from ``generator``), else ``noise_std``."""
    e = exploration
    if e.wide_share == 0.0:
        return _noise(like, e.noise_std, generator)  # draws exactly as before wide exploration
    eps = randn(tuple(like.shape), generator, like.device, like.dtype)  # (B, A)
    gen_device = generator.device if generator is not None else like.device
    u = torch.rand(like.shape[:-1], generator=generator, device=gen_device).to(like.device)  # (B,)
    std = torch.where(u < e.wide_share, e.wide_std, e.noise_std).to(like.dtype)  # (B,)
    return std.unsqueeze(-1) * eps


def _mixture_log_density(d: Tensor, exploration: Exploration, temperature: float) -> Tensor:
    """log p of the offsets ``d`` = y - mu (B, K-1) under the exploration mixture (see the module
    docstring); NaN where the mixture has no continuous component."""
    e = exploration
    k = d.shape[-1] + 1
    quad = (d * d).sum(-1) - d.sum(-1) ** 2 / k  # (B,) d^T (I - 1 1^T / K) d
    terms = []
    for share, std in ((1.0 - e.wide_share, e.noise_std), (e.wide_share, e.wide_std)):
        if share > 0.0 and std > 0.0:
            s = std / temperature
            norm = math.log(share) - (k - 1) * (0.5 * math.log(2 * math.pi) + math.log(s)) - 0.5 * math.log(k)
            terms.append(norm - quad / (2 * s * s))
    if not terms:
        return torch.full_like(quad, math.nan)
    return torch.logsumexp(torch.stack(terms), dim=0)  # (B,)


def log_propensity(
    logits: Tensor, weights: Tensor, exploration: Exploration | float, temperature: float = 1.0
) -> Tensor:
    """Log density (B,) of the served ``weights`` (B, K) on the simplex, in additive-log-ratio
    coordinates, under the policy with ``logits`` (B, K) (the actor's pre-noise outputs) and
    ``exploration`` at softmax ``temperature``: the mixture of the module docstring, in float64.

    Offline use: the density of logged weights under any snapshot's policy (off-policy
    estimates). Only the continuous part: weights a point-mass component served (logged with
    NaN) must be matched as such by the caller. NaN when no component has noise.
    """
    z, w = logits.double(), weights.double()
    mean = (z[..., :-1] - z[..., -1:]) / temperature  # (B, K-1)
    y = w[..., :-1].log() - w[..., -1:].log()  # (B, K-1)
    return _mixture_log_density(y - mean, as_exploration(exploration), temperature)


class SimplexHead(nn.Module):
    """Weights on the simplex: softmax(z / T). Exploration noise is added in logit space.

    Noise on the logits keeps every explored action on the simplex and strictly positive, with
    no projection step that would clip weights to exactly 0 (and flatten the critic's input
    distribution at the boundary). The reported noise is the logit-space perturbation.
    """

    def __init__(self, cfg: ActorConfig) -> None:
        super().__init__()
        self.temperature = cfg.temperature

    def forward(self, z: Tensor) -> Tensor:
        return torch.softmax(z / self.temperature, dim=-1)

    def explore(
        self, z: Tensor, exploration: Exploration, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        noise = exploration_noise(z, exploration, generator)  # (B, K)
        # y - mu is exactly the noise's log ratios / T: no round trip through the softmax.
        n = noise.double()
        d = (n[..., :-1] - n[..., -1:]) / self.temperature  # (B, K-1)
        logp = _mixture_log_density(d, exploration, self.temperature)  # (B,)
        logp = logp.masked_fill((noise == 0).all(-1), math.nan)  # served from a point mass
        return self(z + noise), noise, logp


class TanhHead(nn.Module):
    """Bounded actions scale * tanh(z); Gaussian noise of std ``std * scale`` in action space, clipped."""

    def __init__(self, cfg: ActorConfig) -> None:
        super().__init__()
        self.scale = cfg.action_scale

    def forward(self, z: Tensor) -> Tensor:
        return self.scale * torch.tanh(z)

    def explore(
        self, z: Tensor, exploration: Exploration, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The propensity is NaN: clipped bounded controls, not objective weights, never logged."""
        e = exploration
        noise = exploration_noise(
            z, Exploration(e.noise_std * self.scale, e.wide_std * self.scale, e.wide_share), generator
        )
        nan = torch.full(z.shape[:-1], math.nan, dtype=torch.float64, device=z.device)
        return (self(z) + noise).clamp(-self.scale, self.scale), noise, nan


HEADS: dict[str, type[SimplexHead] | type[TanhHead]] = {"simplex": SimplexHead, "tanh": TanhHead}


class Actor(nn.Module):
    def __init__(self, cfg: ActorConfig) -> None:
        super().__init__()
        if cfg.head not in HEADS:
            raise ValueError(f"unknown action head {cfg.head!r}; one of {sorted(HEADS)}")
        self.cfg = cfg
        self.net = nn.Sequential(
            nn.Linear(cfg.obs_dim, cfg.hidden),
            nn.ReLU(),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.ReLU(),
            nn.Linear(cfg.hidden, cfg.action_dim),
        )
        self.head = HEADS[cfg.head](cfg)

    def forward(self, obs: Tensor) -> Tensor:
        return self.head(self.net(obs))  # (B, A)

    def explore(
        self, obs: Tensor, exploration: Exploration | float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(action (B, A), noise (B, A), log-propensity (B,), float64) explored with
        ``exploration`` (a float: plain noise of that std); see the module docstring."""
        return self.head.explore(self.net(obs), as_exploration(exploration), generator)
