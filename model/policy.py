"""The deterministic policy (DDPG actor) and its action heads: model code, safe to serve.

The serving node imports this module (and :mod:`model.ranker`) but never the trainer.
Exploration noise is applied here, and :meth:`Actor.explore` returns the noise and the
log-propensity beside the action, because serving logs all three.

Exploration (``schemas.Exploration``) is a mixture drawn per list (one categorical draw per row
picks the component): with probability ``uniform_share`` the weights are uniform on the simplex
(Dirichlet(1, ..., 1)), independent of the actor; with probability ``wide_share`` Gaussian noise
of std ``wide_std`` on the simplex head's logits z; else of std ``noise_std``. The uniform
component covers the whole simplex whatever the actor does: once the softmax saturates, logit
noise around it (even of std 1) never serves interior weights, so the critic could never learn
them. The served weights w = softmax((z + n) / T) have a density in additive-log-ratio
coordinates y_k = log(w_k / w_K), k < K (the simplex's K - 1 free coordinates, a bijection). A
Gaussian component:

    y = ((z_k - z_K) + (n_k - n_K)) / T ~ N(mu, (s / T)^2 (I + 1 1^T)),  mu_k = (z_k - z_K) / T

(the difference of two independent N(0, s^2) is the 1 on the diagonal, the shared n_K the 1 1^T
off it), so with d = y - mu, det(I + 1 1^T) = K and (I + 1 1^T)^-1 = I - 1 1^T / K:

    log N_s(y) = -(K-1)/2 log(2 pi) - (K-1) log(s/T) - log(K)/2 - (|d|^2 - (sum d)^2 / K) / (2 (s/T)^2)

The uniform component: density (K-1)! on the simplex (w_1..w_{K-1}) times the Jacobian
|dw_{1..K-1} / dy| = prod_k w_k (all K weights), so log U(y) = log((K-1)!) + sum_k log w_k.

The policy is the mixture log p(y) = logsumexp_c [log pi_c + log p_c(y)] over its continuous
components c with pi_c > 0 (pi = 1 - wide_share - uniform_share, wide_share, uniform_share; a
Gaussian one also needs s_c > 0). A Gaussian component with s = 0 is a point mass (no density):
lists served with exactly zero noise get NaN, and an off-policy estimator must treat them as a
point mass of probability pi_c (even where the uniform component gives their weights a density).
A uniform row reports as its noise the logit perturbation that yields its weights, T (log w -
log softmax(z / T)), so w = softmax((z + noise) / T) holds for every row. :func:`log_propensity`
gives the density of any weights under any policy's logits (offline, off-policy estimates); the
tanh head's propensities are NaN (its actions are not objective weights and are clipped); its
uniform component is uniform on the action box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

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


class ExplorationDraw(NamedTuple):
    noise: Tensor
    """(B, A) Gaussian logit noise of each row's component (zero on uniform rows)"""
    uniform: Tensor
    """(B,) bool: rows the uniform component serves"""
    u: Tensor | None
    """(B, A) float64 uniform variates in (0, 1) for those rows (None when uniform_share == 0)"""


def draw_exploration(
    like: Tensor, exploration: Exploration, generator: torch.Generator | None
) -> ExplorationDraw:
    """One draw of the exploration mixture for each row of ``like`` (B, A), from ``generator``:
    the component (one uniform variate per row: [0, wide_share) wide, then uniform_share
    uniform, the rest base), the Gaussian noise and the uniform component's variates."""
    e = exploration
    no_uniform = torch.zeros(like.shape[:-1], dtype=torch.bool, device=like.device)
    if e.wide_share == 0.0 and e.uniform_share == 0.0:
        return ExplorationDraw(_noise(like, e.noise_std, generator), no_uniform, None)  # as before
    gen_device = generator.device if generator is not None else like.device
    eps = randn(tuple(like.shape), generator, like.device, like.dtype)  # (B, A)
    c = torch.rand(like.shape[:-1], generator=generator, device=gen_device).to(like.device)  # (B,)
    std = torch.where(c < e.wide_share, e.wide_std, e.noise_std).to(like.dtype)  # (B,)
    if e.uniform_share == 0.0:
        return ExplorationDraw(std.unsqueeze(-1) * eps, no_uniform, None)  # draws as wide exploration did
    uniform = (c >= e.wide_share) & (c < e.wide_share + e.uniform_share)  # (B,)
    u = torch.rand(tuple(like.shape), generator=generator, device=gen_device, dtype=torch.float64)
    u = u.to(like.device).clamp_min(1e-300)  # (0, 1): its log is finite
    noise = torch.where(uniform.unsqueeze(-1), 0.0, std.unsqueeze(-1) * eps)
    return ExplorationDraw(noise, uniform, u)


def exploration_noise(like: Tensor, exploration: Exploration, generator: torch.Generator | None) -> Tensor:
    """The Gaussian logit noise of :func:`draw_exploration` (B, A): per row std ``wide_std`` with
    probability ``wide_share``, else ``noise_std``, zero on rows the uniform component serves."""
    return draw_exploration(like, exploration, generator).noise


def _mixture_log_density(d: Tensor, log_w: Tensor, exploration: Exploration, temperature: float) -> Tensor:
    """log p of the offsets ``d`` = y - mu (B, K-1), at weights with logs ``log_w`` (B, K), under
    the exploration mixture (see the module docstring); NaN where it has no continuous component."""
    e = exploration
    k = d.shape[-1] + 1
    quad = (d * d).sum(-1) - d.sum(-1) ** 2 / k  # (B,) d^T (I - 1 1^T / K) d
    terms = []
    base_share = 1.0 - e.wide_share - e.uniform_share
    for share, std in ((base_share, e.noise_std), (e.wide_share, e.wide_std)):
        if share > 0.0 and std > 0.0:
            s = std / temperature
            norm = math.log(share) - (k - 1) * (0.5 * math.log(2 * math.pi) + math.log(s)) - 0.5 * math.log(k)
            terms.append(norm - quad / (2 * s * s))
    if e.uniform_share > 0.0:
        terms.append(math.log(e.uniform_share) + math.lgamma(k) + log_w.sum(-1))  # log (K-1)! prod w
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
    NaN) must be matched as such by the caller. NaN when no component has a density.
    """
    z, log_w = logits.double(), weights.double().log()
    mean = (z[..., :-1] - z[..., -1:]) / temperature  # (B, K-1)
    y = log_w[..., :-1] - log_w[..., -1:]  # (B, K-1)
    return _mixture_log_density(y - mean, log_w, as_exploration(exploration), temperature)


class SimplexHead(nn.Module):
    """Weights on the simplex: softmax(z / T). Exploration noise is added in logit space.

    Noise on the logits keeps every explored action on the simplex and strictly positive, with
    no projection step that would clip weights to exactly 0 (and flatten the critic's input
    distribution at the boundary). The reported noise is the logit-space perturbation (for
    uniform rows, the one that yields their weights).
    """

    def __init__(self, cfg: ActorConfig) -> None:
        super().__init__()
        self.temperature = cfg.temperature

    def forward(self, z: Tensor) -> Tensor:
        return torch.softmax(z / self.temperature, dim=-1)

    def explore(
        self, z: Tensor, exploration: Exploration, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        t = self.temperature
        draw = draw_exploration(z, exploration, generator)
        noise = draw.noise  # (B, K)
        if draw.u is not None:
            # Dirichlet(1, ..., 1) = normalized standard exponentials; its log-weights in float64
            e = -draw.u.log()  # (B, K)
            log_u = e.log() - e.sum(-1, keepdim=True).log()
            to_uniform = t * (log_u - torch.log_softmax(z.double() / t, -1))  # (B, K)
            noise = torch.where(draw.uniform.unsqueeze(-1), to_uniform.to(z.dtype), noise)
        # y - mu is exactly the noise's log ratios / T: no round trip through the softmax.
        n = noise.double()
        d = (n[..., :-1] - n[..., -1:]) / t  # (B, K-1)
        log_w = torch.log_softmax((z.double() + n) / t, -1)  # (B, K)
        logp = _mixture_log_density(d, log_w, exploration, t)  # (B,)
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
        scaled = Exploration(e.noise_std * self.scale, e.wide_std * self.scale, e.wide_share, e.uniform_share)
        draw = draw_exploration(z, scaled, generator)
        noise = draw.noise  # (B, A)
        if draw.u is not None:  # uniform on the action box [-scale, scale]^A
            box = (self.scale * (2 * draw.u - 1)).to(z.dtype) - self(z)
            noise = torch.where(draw.uniform.unsqueeze(-1), box, noise)
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
