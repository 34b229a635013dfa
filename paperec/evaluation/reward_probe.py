"""What PAPERec's weight generator learned, measured against what its objective asks for.

For each list the trainer gives the objective the actor ascends at weights (1 - d, d), d the
dwell weight, on a grid of ``GRID`` dwell weights (:meth:`learner.training.Trainer.reward_probe`):

* ``pareto``: the exact reward -||sum_k w_k g_k|| = -sqrt(w^T G w), G the Gram matrix of the
  list's per-objective gradients as the reward sees them;
* ``engagement``: the critic's Q(s, w);
* ``hybrid``: Q(s, w) - hybrid_lambda * regret(w), the regret exact from G.

A user's *optimum* is the dwell weight maximizing the mean objective over the user's lists (for
pareto the critic's target does not depend on w beyond the reward, the next state being the logged
one, so this is where the actor should converge). Three correlations across users, each Pearson
with a Fisher-z interval:

* generator vs optimum: does the weight generator learn what its objective asks (per user)?
* optimum vs preference: does what the objective asks have anything to do with the hidden alpha_u?
* generator vs preference: the evaluation's weight-preference correlation, on these states.

They separate the two possible reasons for a weight-preference correlation that is not
positive: a generator that fails to learn its objective, or an objective that does not point
at the preference. The probe looks at the replay buffer's lists after training (the most recent
``buffer_size`` transitions) with the final ranker and critic, without training.
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
"""dwell weights searched for each user's optimum: 0, 1/200, ..., 1"""
MIN_LISTS = 3
"""users with fewer lists in the buffer are left out (their optimum is too noisy)"""
CHUNK = 256


def dwell_grid() -> np.ndarray:
    """The ``GRID`` dwell weights 0, 1/(GRID - 1), ..., 1."""
    return np.linspace(0.0, 1.0, GRID)


def optimal_dwell_weight(objective: np.ndarray) -> float:
    """The grid dwell weight maximizing the mean over lists of ``objective`` (n, GRID)."""
    return float(dwell_grid()[int(np.argmax(objective.mean(axis=0)))])


def probe(trainer: Trainer, buffer: TensorReplay, alpha: np.ndarray) -> dict[str, Any] | None:
    """Per-user optimum, generator weight and hidden alpha, correlated across users; None unless
    the objectives are exactly click and dwell."""
    objectives = trainer.cfg.ranker.objectives
    if sorted(objectives) != ["click", "dwell"] or len(buffer) == 0:
        return None
    dwell = objectives.index("dwell")
    grid = torch.from_numpy(dwell_grid())
    weights, values = [], []
    for start in range(0, len(buffer), CHUNK):
        chunk = buffer.rows(torch.arange(start, min(start + CHUNK, len(buffer))))
        w, objective = trainer.reward_probe(chunk, grid.to(torch.float32))  # (B, K), (B, GRID)
        weights.append(w[:, dwell].cpu().double().numpy())
        values.append(objective.cpu().double().numpy())
    w_all, v_all = np.concatenate(weights), np.concatenate(values)
    users = np.array([user_index(u) for u in buffer.users[: len(buffer)]])

    optimum, generator, kept, n_lists = [], [], [], 0
    for u in np.unique(users):
        rows = np.flatnonzero(users == u)
        if len(rows) < MIN_LISTS:
            continue
        optimum.append(optimal_dwell_weight(v_all[rows]))
        generator.append(float(w_all[rows].mean()))
        kept.append(u)
        n_lists += len(rows)
    opt, gen, pref = np.array(optimum), np.array(generator), alpha[np.array(kept, dtype=np.int64)]

    def corr(x: np.ndarray, y: np.ndarray) -> dict[str, Any] | None:
        est = pearson(x, y)
        return None if est is None else est.to_dict()

    return {
        "mode": trainer.cfg.reward,
        "users": len(kept),
        "lists": n_lists,
        "generator_vs_optimum": corr(gen, opt),
        "optimum_vs_preference": corr(opt, pref),
        "generator_vs_preference": corr(gen, pref),
        "optimum_dwell_weight_mean": float(opt.mean()) if len(opt) else None,
        "generator_dwell_weight_mean": float(gen.mean()) if len(gen) else None,
    }
