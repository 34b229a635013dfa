"""The canary's sequential test: always-valid confidence sequences on each objective's relative
change, candidate vs incumbent, and the promote / roll back / continue rule. Pure numpy.

Units and estimand. Each served list has its impressions (items shown) and, per objective, its
total (clicks; dwell seconds). An arm's value is the ratio of sums ``m = sum(y) / sum(n)`` over its
lists (clicks per impression, dwell seconds per impression), the estimand the dashboard shows. The
guarded quantity is the relative change of the canary's value against the personalized arm's over
the same period, ``r = m_canary / m_personalized - 1``. The variance is taken over *users*, the
unit the arms are assigned by (a hash of the user id): ``n_i`` and ``y_i`` below are a user's totals
over their lists so far. A user's lists share the user's tastes; counted as independent lists,
the variance would be too small whenever users come back (tests/unit/test_rollout_sequential.py
measures the false rollbacks that causes). ``ArmSums.add`` without a unit makes each list its own.

Variance (delta method). For a ratio of sums, ``Var(m) ~ sum((y_i - m n_i)^2) / sum(n)^2`` (the
linearization of ``m``; ``N / (N - 1)`` corrects the plug-in of ``m``), and for the ratio of the two
arms' independent values ``Var(r) ~ (Var(m_c) + (m_c / m_p)^2 Var(m_p)) / m_p^2``. An arm's
per-list variance is floored at a quarter of the other arm's (``SPREAD_FLOOR``): a canary without a
single click has none, and must still be judged.

Confidence sequence (Robbins' normal mixture). Treating ``r_hat`` as Gaussian around ``r`` with
variance ``v`` (the CLT in information time), the likelihood ratio mixed over a ``N(0, tau^2)``
alternative is a nonnegative martingale under ``r``; by Ville's inequality it exceeds ``1 / a``
at some time with probability at most ``a``. Inverting it gives, simultaneously for all times,

    |r_hat - r| < sqrt(v (v + tau^2) / tau^2 * (log((v + tau^2) / v) + 2 log(1 / a)))

(Robbins 1970; the mixture SPRT of Johari et al. 2017/2022, "Always valid inference"; the
asymptotic justification with a plug-in variance is Waudby-Smith et al. 2021, "Time-uniform
central limit theory"). ``tau`` sets the effect size the bound is tightest for: the guard-rail
``max_drop`` by default.

Error rate. Each of the K objectives gets a two-sided sequence at level ``a = alpha / K``: the
two-sided mixture bounds both directions at once, so with probability at least ``1 - alpha`` every
objective's sequence covers its true change at every look. A rollback needs some upper bound
below ``-max_drop`` and a promotion every lower bound above it, so a false rollback (every true
change >= -max_drop) or a false promotion (some true change < -max_drop) needs a miscovered
sequence: the probability of any false guard-rail decision per canary is at most ``alpha``, with
peeking after every list. tests/unit/test_rollout_sequential.py measures it.

Assumptions (documented in docs/rollout.md): users are independent (the arms split users by a
hash, so the two arms are independent too), the outcome of a list is final when it is counted (the
join window closed), and the arms' values are stationary during the canary. The bound is
asymptotic (a CLT over users, a plug-in variance): no decision before ``burn_in_lists`` lists per
arm, and a promotion only after ``min_lists``. A canary still undecided when both arms reached
``max_lists`` is rolled back: the conservative choice (the snapshot never showed it is not worse by
``max_drop``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

CONTINUE, PROMOTE, ROLLBACK = 0, 1, 2
"""Decision codes of :func:`decide` (arrays of them when given arrays)."""
DECISION_NAMES = {CONTINUE: "continue", PROMOTE: "promote", ROLLBACK: "rollback"}


@dataclass(frozen=True)
class SequentialConfig:
    """The sequential test's knobs (base.settings gives the first four as ``rollout_*``)."""

    alpha: float = 0.05
    """bound on the probability that a canary's guard-rail decision is false (any objective, either way)"""
    max_drop: float = 0.05
    """guard-rail: the largest relative fall of an objective's per-impression value tolerated"""
    min_lists: int = 200
    """lists per arm before a promotion"""
    max_lists: int = 20_000
    """lists per arm after which an undecided canary is rolled back (conservative)"""
    burn_in_lists: int = 30
    """lists per arm before any bound is computed (the plug-in variance needs a few)"""
    mixture_scale: float = 0.0
    """tau of the normal mixture, on the relative change: the effect size the bound is tightest for
    (0: max_drop)"""

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"rollout_alpha must be in (0, 1), got {self.alpha}")
        if not 0.0 <= self.max_drop < 1.0:
            raise ValueError(f"rollout_max_drop must be in [0, 1), got {self.max_drop}")
        if self.burn_in_lists < 2:
            raise ValueError(f"burn_in_lists must be >= 2, got {self.burn_in_lists}")
        if not self.burn_in_lists <= self.min_lists <= self.max_lists:
            raise ValueError(
                f"need burn_in_lists ({self.burn_in_lists}) <= rollout_min_lists ({self.min_lists}) "
                f"<= rollout_max_lists ({self.max_lists})"
            )
        if self.mixture_scale < 0.0:
            raise ValueError(f"mixture_scale must be >= 0, got {self.mixture_scale}")

    @property
    def tau(self) -> float:
        # a zero guard-rail still needs a positive mixing scale: 5% is a typical effect size
        return self.mixture_scale or self.max_drop or 0.05


def radius(v: npt.ArrayLike, tau: float, a: float) -> Array:
    """Half-width of the normal-mixture confidence sequence at level ``a`` for an estimate with
    variance ``v`` (elementwise; inf where ``v`` is not positive and finite)."""
    v = np.asarray(v, dtype=np.float64)
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = v * (v + t2) / t2 * (np.log((v + t2) / v) + 2.0 * math.log(1.0 / a))
        out = np.sqrt(r2)
    return np.where((v > 0) & np.isfinite(v), out, np.inf)


def ratio_and_spread(
    lists: npt.ArrayLike,
    n: npt.ArrayLike,
    nn: npt.ArrayLike,
    y: npt.ArrayLike,
    yy: npt.ArrayLike,
    yn: npt.ArrayLike,
) -> tuple[Array, Array]:
    """An arm's ratio of sums ``m = y / n`` and the per-list variance of its linearization,
    ``s2 = sum((y_i - m n_i)^2) / (N - 1)``, from per-list sums (count N, sum n, sum n^2, sum y,
    sum y^2, sum y n); elementwise, NaN where undefined. ``Var(m) ~ s2 N / sum(n)^2``."""
    lists, n, nn, y, yy, yn = (np.asarray(x, dtype=np.float64) for x in (lists, n, nn, y, yy, yn))
    with np.errstate(divide="ignore", invalid="ignore"):
        m = y / n
        # sum((y_i - m n_i)^2) expanded; clipped at 0 against rounding
        resid = np.maximum(yy - 2.0 * m * yn + m * m * nn, 0.0)
        s2 = resid / (lists - 1.0)
    return m, s2


def ratio_and_variance(
    lists: npt.ArrayLike,
    n: npt.ArrayLike,
    nn: npt.ArrayLike,
    y: npt.ArrayLike,
    yy: npt.ArrayLike,
    yn: npt.ArrayLike,
) -> tuple[Array, Array]:
    """An arm's ratio of sums and its delta-method variance ``s2 N / sum(n)^2``."""
    m, s2 = ratio_and_spread(lists, n, nn, y, yy, yn)
    with np.errstate(divide="ignore", invalid="ignore"):
        return m, s2 * np.asarray(lists, dtype=np.float64) / np.square(np.asarray(n, dtype=np.float64))


SPREAD_FLOOR = 0.25
"""Each arm's per-list variance is taken as at least this share of the other arm's: an arm without
a single click has zero variance and would otherwise never be judged (a broken snapshot). Only
ever widens a bound, so the error guarantee stands."""


@dataclass(frozen=True)
class Bounds:
    """One objective's relative change, canary vs personalized, with its confidence sequence."""

    canary: float
    """the canary arm's per-impression value"""
    personalized: float
    change: float
    """relative change m_canary / m_personalized - 1 (NaN: not defined yet)"""
    lower: float
    upper: float


def relative_change(
    canary: tuple[npt.ArrayLike, ...], personalized: tuple[npt.ArrayLike, ...], tau: float, a: float
) -> tuple[Array, Array, Array, Array, Array]:
    """(m_c, m_p, r_hat, lower, upper) of the relative change from each arm's six sums (see
    :func:`ratio_and_variance`), elementwise; bounds are -inf/inf where undefined."""
    mc, s2c = ratio_and_spread(*canary)
    mp, s2p = ratio_and_spread(*personalized)
    nc, lc = np.asarray(canary[1], dtype=np.float64), np.asarray(canary[0], dtype=np.float64)
    np_, lp = np.asarray(personalized[1], dtype=np.float64), np.asarray(personalized[0], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        vc = np.maximum(s2c, SPREAD_FLOOR * s2p) * lc / (nc * nc)
        vp = np.maximum(s2p, SPREAD_FLOOR * s2c) * lp / (np_ * np_)
        q = mc / mp
        r = q - 1.0
        v = (vc + q * q * vp) / (mp * mp)
    half = radius(v, tau, a)
    ok = np.isfinite(r) & np.isfinite(half)
    with np.errstate(invalid="ignore"):
        # a value cannot fall by more than 100%: the (symmetric) bound is clipped there
        lower = np.where(ok, np.maximum(r - half, -1.0), -np.inf)
        upper = np.where(ok, r + half, np.inf)
    return mc, mp, r, lower, upper


def decide(
    lower: npt.ArrayLike,
    upper: npt.ArrayLike,
    lists_canary: npt.ArrayLike,
    lists_personalized: npt.ArrayLike,
    cfg: SequentialConfig,
) -> npt.NDArray[np.int64]:
    """The rule, elementwise (objectives on axis 0 of ``lower``/``upper``):

    - ROLLBACK when both arms have ``burn_in_lists`` and some objective's upper bound is below
      ``-max_drop`` (the guard-rail is crossed beyond the sequence), or when both arms reached
      ``max_lists`` undecided;
    - PROMOTE when both arms have ``min_lists`` and every objective's lower bound is above
      ``-max_drop`` (non-inferiority);
    - CONTINUE otherwise.
    """
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    nc, np_ = np.asarray(lists_canary), np.asarray(lists_personalized)
    fewest = np.minimum(nc, np_)
    crossed = (upper < -cfg.max_drop).any(axis=0) & (fewest >= cfg.burn_in_lists)
    safe = (lower > -cfg.max_drop).all(axis=0) & (fewest >= cfg.min_lists)
    exhausted = fewest >= cfg.max_lists
    out = np.where(crossed, ROLLBACK, np.where(safe, PROMOTE, np.where(exhausted, ROLLBACK, CONTINUE)))
    return out.astype(np.int64)


@dataclass
class ArmSums:
    """Running sums of one arm for K objectives, over its units: a unit is a user (``add``'s
    ``unit``: its lists are pooled, so the variance is cluster-robust), or each list its own
    (``unit`` None). Pure and small: ``add`` one list, read :meth:`sums`;
    ``state_dict``/``load_state_dict`` round-trip it."""

    objectives: int
    lists: int = 0
    """lists added"""
    units: int = 0
    """distinct units (users) among them"""
    n: float = 0.0
    nn: float = 0.0
    y: list[float] = field(default_factory=list)
    yy: list[float] = field(default_factory=list)
    yn: list[float] = field(default_factory=list)
    per_unit: dict[str, list[float]] = field(default_factory=dict)
    """unit -> [impressions, objective totals...] so far (only for named units)"""

    def __post_init__(self) -> None:
        for name in ("y", "yy", "yn"):
            if not getattr(self, name):
                setattr(self, name, [0.0] * self.objectives)

    def add(self, impressions: int, values: Sequence[float], unit: str | None = None) -> None:
        """One list: its impressions, its per-objective totals (clicks, dwell seconds) and its
        unit (the user; None: the list is a unit of its own)."""
        if len(values) != self.objectives:
            raise ValueError(f"expected {self.objectives} objective values, got {len(values)}")
        n = float(impressions)
        old = self.per_unit.get(unit) if unit is not None else None
        if old is None:
            old = [0.0] * (1 + self.objectives)
            self.units += 1
        new = [old[0] + n, *(o + float(v) for o, v in zip(old[1:], values, strict=True))]
        if unit is not None:
            self.per_unit[unit] = new
        # the unit's totals replace its old ones in the sums of squares and products
        self.lists += 1
        self.n += n
        self.nn += new[0] * new[0] - old[0] * old[0]
        for k in range(self.objectives):
            self.y[k] += new[k + 1] - old[k + 1]
            self.yy[k] += new[k + 1] * new[k + 1] - old[k + 1] * old[k + 1]
            self.yn[k] += new[k + 1] * new[0] - old[k + 1] * old[0]

    def sums(self, k: int) -> tuple[float, float, float, float, float, float]:
        """Objective ``k``'s six sums over units, as :func:`ratio_and_variance` takes them."""
        return (self.units, self.n, self.nn, self.y[k], self.yy[k], self.yn[k])

    def value(self, k: int) -> float:
        return self.y[k] / self.n if self.n > 0 else math.nan

    def state_dict(self) -> dict[str, Any]:
        return {
            "objectives": self.objectives,
            "lists": self.lists,
            "units": self.units,
            "n": self.n,
            "nn": self.nn,
            "y": list(self.y),
            "yy": list(self.yy),
            "yn": list(self.yn),
            "per_unit": {u: list(t) for u, t in self.per_unit.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["objectives"]) != self.objectives:
            raise ValueError(f"state has {state['objectives']} objectives, expected {self.objectives}")
        self.lists, self.units = int(state["lists"]), int(state["units"])
        self.n, self.nn = float(state["n"]), float(state["nn"])
        self.y, self.yy, self.yn = (list(map(float, state[k])) for k in ("y", "yy", "yn"))
        self.per_unit = {str(u): list(map(float, t)) for u, t in state["per_unit"].items()}


@dataclass(frozen=True)
class Verdict:
    """The test's state after the lists counted so far: a decision code and the evidence."""

    decision: int
    bounds: dict[str, Bounds]
    lists_canary: int
    lists_personalized: int
    units_canary: int = 0
    units_personalized: int = 0

    @property
    def name(self) -> str:
        return DECISION_NAMES[self.decision]

    def evidence(self) -> dict[str, float]:
        """Flat numbers for the decision record (finite only: the record's evidence is JSON)."""
        out = {
            "lists.canary": float(self.lists_canary),
            "lists.personalized": float(self.lists_personalized),
            "users.canary": float(self.units_canary),
            "users.personalized": float(self.units_personalized),
        }
        for name, b in self.bounds.items():
            for key, value in (
                ("canary", b.canary),
                ("personalized", b.personalized),
                ("change", b.change),
                ("lower", b.lower),
                ("upper", b.upper),
            ):
                if math.isfinite(value):
                    out[f"{name}.{key}"] = value
        return out


def verdict(
    objectives: Sequence[str], canary: ArmSums, personalized: ArmSums, cfg: SequentialConfig
) -> Verdict:
    """Bounds of every objective and the decision of :func:`decide` for two arms' sums."""
    a = cfg.alpha / len(objectives)
    bounds: dict[str, Bounds] = {}
    lower, upper = [], []
    for k, name in enumerate(objectives):
        mc, mp, r, lo, hi = relative_change(canary.sums(k), personalized.sums(k), cfg.tau, a)
        bounds[name] = Bounds(float(mc), float(mp), float(r), float(lo), float(hi))
        lower.append(float(lo))
        upper.append(float(hi))
    code = int(decide(lower, upper, canary.lists, personalized.lists, cfg))
    return Verdict(code, bounds, canary.lists, personalized.lists, canary.units, personalized.units)


def reason(v: Verdict, cfg: SequentialConfig) -> str:
    """The decision in words, for the record and the dashboard."""
    fewest = min(v.lists_canary, v.lists_personalized)

    def show(name: str) -> str:
        b = v.bounds[name]
        return f"{name} {b.change:+.1%} [{b.lower:+.1%}, {b.upper:+.1%}]"

    listed = "; ".join(show(n) for n in v.bounds)
    counts = f"{v.lists_canary} canary / {v.lists_personalized} personalized lists"
    if v.decision == ROLLBACK:
        crossed = [n for n, b in v.bounds.items() if b.upper < -cfg.max_drop]
        if crossed and fewest >= cfg.burn_in_lists:
            return (
                f"guard-rail crossed: {', '.join(crossed)} fell by more than {cfg.max_drop:.0%} "
                f"(upper bound below -{cfg.max_drop:.0%}) after {counts}: {listed}"
            )
        return (
            f"undecided after {counts} (max {cfg.max_lists} per arm): rolled back, not shown to be "
            f"within -{cfg.max_drop:.0%}: {listed}"
        )
    if v.decision == PROMOTE:
        return f"non-inferior: every lower bound above -{cfg.max_drop:.0%} after {counts}: {listed}"
    return f"undecided after {counts}: {listed}"


__all__ = [
    "CONTINUE",
    "PROMOTE",
    "ROLLBACK",
    "ArmSums",
    "Bounds",
    "SequentialConfig",
    "Verdict",
    "decide",
    "radius",
    "ratio_and_spread",
    "ratio_and_variance",
    "reason",
    "relative_change",
    "verdict",
]
