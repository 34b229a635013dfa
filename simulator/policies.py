"""Model-free policies for logs and tests: random, and a heuristic on the observable proxies.

Both log objective weights like a real serving node. The heuristic explores a base weight vector
with Gaussian noise in logit space (the exploration scheme of :mod:`model.policy`, wide lists
included) and logs the noise and the log-propensity of the weights: it is a logging policy whose
propensities off-policy estimators can use. The random policy's weights are fixed (no propensity).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model.policy import as_exploration, log_propensity
from schemas import Exploration
from simulator.config import SimulatorConfig
from simulator.session import ListRequest, Ranking


def explore_weights(
    base: Sequence[float], exploration: Exploration | float, rng: np.random.Generator
) -> tuple[tuple[float, ...], tuple[float, ...], float | None]:
    """softmax(log(base) + noise): weights stay on the simplex. The noise has std ``wide_std``
    with probability ``wide_share``, else ``noise_std`` (a float: plain noise of that std); with
    probability ``uniform_share`` the weights are uniform on the simplex instead.
    Returns (weights, noise, log-propensity of the weights; None when the noise is zero)."""
    e = as_exploration(exploration)
    logits = np.log(np.clip(np.asarray(base, dtype=np.float64), 1e-12, None))
    if e.uniform_share > 0:  # weights uniform on the simplex on that share (model.policy's mixture)
        eps, c = rng.standard_normal(len(logits)), rng.random()
        if e.wide_share <= c < e.wide_share + e.uniform_share:
            uniform = np.log(rng.dirichlet(np.ones(len(logits))))
            noise = uniform - (logits - np.logaddexp.reduce(logits))  # softmax(logits + noise) = it
        else:
            noise = (e.wide_std if c < e.wide_share else e.noise_std) * eps
    elif e.wide_share > 0:  # the Bernoulli is drawn only then: plain exploration draws as it did
        eps = rng.standard_normal(len(logits))
        noise = (e.wide_std if rng.random() < e.wide_share else e.noise_std) * eps
    else:
        noise = e.noise_std * rng.standard_normal(len(logits)) if e.noise_std > 0 else np.zeros(len(logits))
    z = logits + noise
    w = np.exp(z - z.max())
    w /= w.sum()
    logp = None
    if noise.any():
        logp = float(log_propensity(torch.from_numpy(logits)[None], torch.from_numpy(w)[None], e)[0])
    return tuple(float(x) for x in w), tuple(float(x) for x in noise), logp


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
        self,
        cfg: SimulatorConfig,
        base: Sequence[float] = (0.5, 0.5),
        exploration: Exploration | float = 0.3,
        seed: int = 0,
    ) -> None:
        self.cfg = cfg
        self.base = tuple(base)
        self.exploration = as_exploration(exploration)
        self.rng = np.random.default_rng(seed)

    def rank(self, requests: Sequence[ListRequest]) -> list[Ranking]:
        t = self.cfg.n_topics
        out = []
        for r in requests:
            items = np.asarray([c.features for c in r.candidates], dtype=np.float64)  # (C, T + 3)
            interest = items[:, :t] @ np.asarray(r.user_features[:t])
            click = _z(interest + items[:, t])
            dwell = _z(interest + items[:, t + 1] + items[:, t + 2])
            weights, noise, logp = explore_weights(self.base, self.exploration, self.rng)
            score = weights[0] * click + weights[1] * dwell
            order = np.argsort(-score, kind="stable")
            out.append(Ranking(tuple(int(k) for k in order), weights, noise, log_propensity=logp))
        return out


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)
