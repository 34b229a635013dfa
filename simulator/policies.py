"""Model-free policies for logs and tests: random, and a heuristic on the observable proxies.

Both log objective weights like a real serving node: a base weight vector perturbed by Gaussian
noise in logit space (the same exploration scheme as :mod:`model.policy`), noise logged too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simulator.config import SimulatorConfig
from simulator.session import ListRequest, Ranking


def explore_weights(
    base: Sequence[float], noise_std: float, rng: np.random.Generator
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """softmax(log(base) + noise): weights stay on the simplex; returns (weights, noise)."""
    logits = np.log(np.clip(np.asarray(base, dtype=np.float64), 1e-12, None))
    noise = noise_std * rng.standard_normal(len(logits)) if noise_std > 0 else np.zeros(len(logits))
    z = logits + noise
    w = np.exp(z - z.max())
    w /= w.sum()
    return tuple(float(x) for x in w), tuple(float(x) for x in noise)


class RandomPolicy:
    """Uniformly random order, fixed equal weights (what ranked the list is logged as (1/2, 1/2))."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def rank(self, requests: Sequence[ListRequest]) -> list[Ranking]:
        return [
            Ranking(tuple(int(k) for k in self.rng.permutation(len(r.candidates))), (0.5, 0.5), (0.0, 0.0))
            for r in requests
        ]


class HeuristicPolicy:
    """Scores each candidate by a click proxy (observed interest + clickbait proxy) and a dwell
    proxy (observed interest + quality proxy + log length), z-scored per list, mixed by
    explored weights around ``base``. Knows the simulator's feature layout; never its latents."""

    def __init__(
        self, cfg: SimulatorConfig, base: Sequence[float] = (0.5, 0.5), noise_std: float = 0.3, seed: int = 0
    ) -> None:
        self.cfg = cfg
        self.base = tuple(base)
        self.noise_std = noise_std
        self.rng = np.random.default_rng(seed)

    def rank(self, requests: Sequence[ListRequest]) -> list[Ranking]:
        t = self.cfg.n_topics
        out = []
        for r in requests:
            items = np.asarray([c.features for c in r.candidates], dtype=np.float64)  # (C, T + 3)
            interest = items[:, :t] @ np.asarray(r.user_features[:t])
            click = _z(interest + items[:, t])
            dwell = _z(interest + items[:, t + 1] + items[:, t + 2])
            weights, noise = explore_weights(self.base, self.noise_std, self.rng)
            score = weights[0] * click + weights[1] * dwell
            order = np.argsort(-score, kind="stable")
            out.append(Ranking(tuple(int(k) for k in order), weights, noise))
        return out


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)
