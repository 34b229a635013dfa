"""What PAPERec's weight generator learned, measured against what its reward asks for.

The reward of weights w on a list is -||sum_k w_k g_k|| = -sqrt(w^T G w), G (K, K) the Gram
matrix of the list's per-objective gradients as the reward sees them. The critic learns the
expected reward of (s, w), and w changes nothing else in its target (the next state is the
logged one), so for a user the weights the actor should converge to are those minimizing the
mean of sqrt(w^T G w) over the user's lists: the user's *reward optimum*. With two objectives
it is found on a grid of dwell weights.

Three correlations across users, each Pearson with a Fisher-z interval:

* generator vs optimum: does the weight generator learn what its reward asks (per user)?
* optimum vs preference: does what the reward asks have anything to do with the hidden alpha_u?
* generator vs preference: the evaluation's weight-preference correlation, on these states.

They separate the two possible reasons for a weight-preference correlation that is not
positive: a generator that fails to learn its objective, or an objective that does not point
at the preference. The probe looks at the replay buffer's lists after training (the most recent
``buffer_size`` transitions) with the final ranker, without training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from learner.training import Trainer
from paperec.evaluation.buffer import TensorReplay
from paperec.evaluation.stats import pearson
from simulator.world import user_index

GRID = 201
"""dwell weights searched for each user's reward optimum: 0, 1/200, ..., 1"""
MIN_LISTS = 3
"""users with fewer lists in the buffer are left out (their optimum is too noisy)"""
CHUNK = 256


def reward_optimal_dwell_weight(grams: np.ndarray, dwell: int) -> float:
    """The dwell weight w_d in [0, 1] (click weight 1 - w_d) minimizing the mean over lists of
    sqrt(w^T G w), for ``grams`` (n, 2, 2); ``dwell`` is the dwell objective's index."""
    w = np.zeros((GRID, 2))
    w[:, dwell] = np.linspace(0.0, 1.0, GRID)
    w[:, 1 - dwell] = 1.0 - w[:, dwell]
    quad = np.einsum("gi,nij,gj->gn", w, grams, w)  # (GRID, n)
    norms = np.sqrt(np.maximum(quad, 0.0)).mean(axis=1)  # (GRID,)
    return float(w[int(np.argmin(norms)), dwell])


def probe(trainer: Trainer, buffer: TensorReplay, alpha: np.ndarray) -> dict[str, Any] | None:
    """Per-user reward optimum, generator weight and hidden alpha, correlated across users; None
    unless the objectives are exactly click and dwell."""
    objectives = trainer.cfg.ranker.objectives
    if sorted(objectives) != ["click", "dwell"] or len(buffer) == 0:
        return None
    dwell = objectives.index("dwell")
    weights, grams = [], []
    for start in range(0, len(buffer), CHUNK):
        w, g = trainer.reward_probe(buffer.rows(torch.arange(start, min(start + CHUNK, len(buffer)))))
        weights.append(w[:, dwell].cpu().double().numpy())
        grams.append(g.cpu().double().numpy())
    w_all, g_all = np.concatenate(weights), np.concatenate(grams)
    users = np.array([user_index(u) for u in buffer.users[: len(buffer)]])

    optimum, generator, kept, n_lists = [], [], [], 0
    for u in np.unique(users):
        rows = np.flatnonzero(users == u)
        if len(rows) < MIN_LISTS:
            continue
        optimum.append(reward_optimal_dwell_weight(g_all[rows], dwell))
        generator.append(float(w_all[rows].mean()))
        kept.append(u)
        n_lists += len(rows)
    opt, gen, pref = np.array(optimum), np.array(generator), alpha[np.array(kept, dtype=np.int64)]

    def corr(x: np.ndarray, y: np.ndarray) -> dict[str, Any] | None:
        est = pearson(x, y)
        return None if est is None else est.to_dict()

    return {
        "users": len(kept),
        "lists": n_lists,
        "generator_vs_optimum": corr(gen, opt),
        "optimum_vs_preference": corr(opt, pref),
        "generator_vs_preference": corr(gen, pref),
        "optimum_dwell_weight_mean": float(opt.mean()) if len(opt) else None,
        "generator_dwell_weight_mean": float(gen.mean()) if len(gen) else None,
    }
