"""How a simulated user responds to one shown list: position bias, clicks (at most
``max_clicks``), a continuous dwell time given a click, satisfaction and leaving.

Every list consumes the same number of random draws whatever happens in it, so two policies
evaluated with the same seed face the same "luck" list by list (common random numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.config import SimulatorConfig
from simulator.world import World


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


@dataclass(frozen=True)
class Response:
    clicks: np.ndarray  # (L,) int 0/1 by shown position
    dwell_ms: np.ndarray  # (L,) int, 0 where not clicked
    click_offset_ms: np.ndarray  # (L,) time from the impression to the click (0 where none)
    scanned: int  # positions the user looked at before stopping
    duration_ms: int  # time spent on the list: scanning plus reading
    satisfaction: float
    leave: bool

    @property
    def n_clicks(self) -> int:
        return int(self.clicks.sum())

    @property
    def total_dwell_s(self) -> float:
        return float(self.dwell_ms.sum()) / 1000.0


def examination(cfg: SimulatorConfig, n: int) -> np.ndarray:
    """P(the user looks at position k), k = 0..n-1: strictly decreasing in k."""
    return (np.arange(n, dtype=np.float64) + 1.0) ** -cfg.position_decay


def click_probability(world: World, user: int, items: np.ndarray) -> np.ndarray:
    """P(click | examined) of ``user`` for ``items`` (n,)."""
    cfg = world.cfg
    alpha = world.users.alpha[user]
    logit = (
        cfg.click_bias
        + cfg.click_interest * world.affinity(user, items)
        + cfg.click_bait * (1.0 - alpha) * world.items.bait[items]
        + cfg.click_quality * alpha * world.items.quality[items]
    )
    return sigmoid(logit)


def read_fraction(world: World, user: int, items: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Fraction of each item's length read after a click, given standard normal ``noise``."""
    cfg = world.cfg
    alpha = world.users.alpha[user]
    logit = (
        cfg.read_bias
        + cfg.read_interest * world.affinity(user, items)
        + cfg.read_quality * (0.5 + alpha) * world.items.quality[items]
        - cfg.read_bait * world.items.bait[items]
        + cfg.read_noise * noise
    )
    return sigmoid(logit)


def satisfaction(cfg: SimulatorConfig, alpha: float, n_clicks: int, dwell_s: float) -> float:
    """S = (1 - alpha) U_click + alpha U_read, both in [0, 1]."""
    u_click = min(n_clicks, cfg.max_clicks) / cfg.max_clicks
    u_read = 1.0 - float(np.exp(-dwell_s / cfg.dwell_satisfied_s))
    return (1.0 - alpha) * u_click + alpha * u_read


def leave_probability(cfg: SimulatorConfig, s: float) -> float:
    return float(sigmoid(cfg.leave_bias - cfg.leave_satisfaction * s))


def respond(world: World, user: int, items: np.ndarray, rng: np.random.Generator) -> Response:
    """The user's response to ``items`` (catalog indices, shown in this order, top first)."""
    cfg = world.cfg
    n = len(items)
    # fixed number of draws per list (common random numbers across policies)
    u_exam, u_click, read_noise = rng.random(n), rng.random(n), rng.standard_normal(n)
    u_leave = rng.random()

    looks = u_exam < examination(cfg, n)
    clicks_if_seen = u_click < click_probability(world, user, items)
    dwell_if_clicked = np.maximum(
        cfg.min_dwell_s, read_fraction(world, user, items, read_noise) * world.items.length_s[items]
    )
    clicks = np.zeros(n, dtype=np.int64)
    dwell_ms = np.zeros(n, dtype=np.int64)
    offsets = np.zeros(n, dtype=np.int64)
    clock = 0  # ms since the impression: scanning top-down, reading what is clicked
    scanned = 0
    for k in range(n):
        if clicks.sum() >= cfg.max_clicks:
            break  # at most the clicks a list allows
        scanned = k + 1
        clock += cfg.scan_ms
        if looks[k] and clicks_if_seen[k]:
            clicks[k] = 1
            offsets[k] = clock
            dwell_ms[k] = round(1000.0 * dwell_if_clicked[k])
            clock += int(dwell_ms[k])
    alpha = float(world.users.alpha[user])
    s = satisfaction(cfg, alpha, int(clicks.sum()), float(dwell_ms.sum()) / 1000.0)
    leave = bool(u_leave < leave_probability(cfg, s))
    return Response(clicks, dwell_ms, offsets, scanned, clock, s, leave)
