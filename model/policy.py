"""The deterministic policy (DDPG actor) and its action heads: model code, safe to serve.

The serving node imports this module (and :mod:`model.ranker`) but never the trainer.
Exploration noise is applied here, and :meth:`Actor.explore` returns the noise beside the
action, because serving logs both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from model.runtime import randn

Tensor = torch.Tensor


@dataclass
class ActorConfig:
    obs_dim: int = 64
    """state width S"""
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


def _noise(like: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    if std == 0.0:
        return torch.zeros_like(like)
    return std * randn(tuple(like.shape), generator, like.device, like.dtype)


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

    def explore(self, z: Tensor, std: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        noise = _noise(z, std, generator)
        return self(z + noise), noise


class TanhHead(nn.Module):
    """Bounded actions scale * tanh(z); Gaussian noise of std ``std * scale`` in action space, clipped."""

    def __init__(self, cfg: ActorConfig) -> None:
        super().__init__()
        self.scale = cfg.action_scale

    def forward(self, z: Tensor) -> Tensor:
        return self.scale * torch.tanh(z)

    def explore(self, z: Tensor, std: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        noise = _noise(z, std * self.scale, generator)
        return (self(z) + noise).clamp(-self.scale, self.scale), noise


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
        self, obs: Tensor, noise_std: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """(action (B, A), noise (B, A)) with exploration noise of scale ``noise_std``."""
        return self.head.explore(self.net(obs), noise_std, generator)
