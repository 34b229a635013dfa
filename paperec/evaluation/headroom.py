"""Oracle headroom: what per-user weights could win in this simulator with perfect predictions.

The oracle (:mod:`simulator.oracle`) ranks with the true click probabilities and expected dwell.
On the evaluation stream's sessions (the contenders' sessions: common random numbers) it serves

* every global click weight of ``GLOBAL_GRID`` (11 points, dwell weight 1 - w), and
* one per-user map from the declared family w_click(alpha_u) = clip(c - s (alpha_u - mean alpha),
  0, 1), c in ``MAP_OFFSETS``, s in ``MAP_SLOPES`` (readers, high alpha, get less click weight;
  s = 0 are the global weights), chosen on a *selection* stream of as many sessions (its own
  random draws), so the choice is not fit to the evaluation sessions' luck.

Engagement per session E = clicks / engagement_click_scale + dwell seconds /
engagement_dwell_scale_s (the learner config's constants). The report's *headroom* is
E(best map) - max_w E(global w): the max of a linear functional over the global front's convex
hull lies at one of its vertices, so the grid's best point stands for every mixture of global
weights. Both maxima are taken the same way: chosen on the selection stream (the best global
weight is the best s = 0 map), measured on the evaluation sessions, and their difference
bootstrapped paired by session. (The maximum of 11 noisy means taken on the evaluation sessions
themselves is biased upward, the winner's curse, and would bias the headroom down; the report
gives that conservative variant too.)

Cost: the session draws are taken once per stream and every map is replayed on them in lock
step over all sessions (:class:`simulator.oracle.OracleSessions`); ``runtime_seconds`` records
it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from paperec.evaluation.online import EVAL_STREAM, TRAIN_STREAM
from simulator.oracle import OracleSessions, SessionTotals
from simulator.session import Simulator
from simulator.world import World

log = logging.getLogger(__name__)

SELECTION_STREAM = 3
"""the oracle's map selection sessions: neither training nor evaluation luck"""
assert SELECTION_STREAM not in (TRAIN_STREAM, EVAL_STREAM)
GLOBAL_GRID = tuple(round(0.1 * i, 1) for i in range(11))
"""global click weights 0, 0.1, ..., 1"""
MAP_OFFSETS = GLOBAL_GRID
"""c: a map's click weight at the mean preference (the s = 0 maps are the global weights)"""
MAP_SLOPES = (0.0, 0.5, 1.0, 2.0, 4.0)
"""s: how fast the click weight falls with alpha (4: near click-seekers 1, readers 0)"""


@dataclass(frozen=True)
class Engagement:
    """E = clicks / click_scale + dwell seconds / dwell_scale_s (learner config constants)."""

    click_scale: float = 1.0
    dwell_scale_s: float = 60.0

    def of(self, clicks: np.ndarray, dwell_s: np.ndarray) -> np.ndarray:
        return np.asarray(clicks) / self.click_scale + np.asarray(dwell_s) / self.dwell_scale_s


@dataclass
class OracleData:
    """The oracle on the evaluation sessions: each global weight and the chosen per-user map."""

    global_totals: list[SessionTotals]  # one per GLOBAL_GRID weight
    map_totals: SessionTotals  # the chosen map
    chosen: tuple[float, float]  # (c, s) of the best map on the selection stream
    chosen_global: float  # the best global click weight on the selection stream
    selection_engagement: np.ndarray  # (len(MAP_OFFSETS), len(MAP_SLOPES)) mean E on the selection stream
    mean_alpha: float
    runtime_seconds: float


def click_weight_map(alpha: np.ndarray, c: float, s: float) -> np.ndarray:
    """w_click(alpha_u) = clip(c - s (alpha_u - mean alpha), 0, 1) for every user (U,)."""
    return np.clip(c - s * (alpha - alpha.mean()), 0.0, 1.0)


def oracle_headroom(world: World, sessions: int, engagement: Engagement) -> OracleData:
    """Choose the map on the selection stream, then serve it and every global weight on the
    evaluation stream's first ``sessions`` sessions."""
    t0 = time.perf_counter()
    alpha = world.users.alpha

    def draws(stream_id: int) -> OracleSessions:
        sim = Simulator(world.cfg, world, stream_id=stream_id)
        return OracleSessions(sim, sim.random_sessions(sessions))

    select = draws(SELECTION_STREAM)
    table = np.zeros((len(MAP_OFFSETS), len(MAP_SLOPES)))
    for i, c in enumerate(MAP_OFFSETS):
        for j, s in enumerate(MAP_SLOPES):
            t = select.run(click_weight_map(alpha, c, s))
            table[i, j] = engagement.of(t.clicks, t.dwell_s).mean()
    best_c, best_s = np.unravel_index(int(np.argmax(table)), table.shape)  # ties: the first (s = 0)
    chosen = (MAP_OFFSETS[int(best_c)], MAP_SLOPES[int(best_s)])
    chosen_global = MAP_OFFSETS[int(np.argmax(table[:, MAP_SLOPES.index(0.0)]))]
    del select
    evaluation = draws(EVAL_STREAM)
    global_totals = [evaluation.run(np.full(len(alpha), w)) for w in GLOBAL_GRID]
    map_totals = evaluation.run(click_weight_map(alpha, *chosen))
    runtime = time.perf_counter() - t0
    log.info("oracle headroom: map c=%.1f s=%.1f, %d sessions per stream, %.1fs", *chosen, sessions, runtime)
    return OracleData(global_totals, map_totals, chosen, chosen_global, table, float(alpha.mean()), runtime)
