"""Uncertainty of evaluation metrics: bootstrap over sessions, and correlation intervals.

Sessions are the independent units (lists within a session share a user and a state), so CTR
and dwell per impression, which are ratios of per-session sums, are resampled session-wise.

Every contender is evaluated on the same sessions (session i: the same user and the same random
draws, common random numbers), so one resampling of sessions serves every statistic of a run
(:class:`PairedBootstrap`): replicate r draws the same sessions for every contender, and a
difference between two contenders is bootstrapped *paired by session*. Per-session outcomes of
two policies on the same user and luck are strongly correlated, so the paired difference is far
tighter than the difference of two independent intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": [self.lo, self.hi]}


def percentile_estimate(value: float, replicates: np.ndarray) -> Estimate:
    lo, hi = np.percentile(replicates, [2.5, 97.5])
    return Estimate(float(value), float(lo), float(hi))


def diff_estimate(a: np.ndarray, b: np.ndarray, value: float) -> Estimate:
    """Difference of two statistics from their replicates on the same resamples (paired by index)."""
    return percentile_estimate(value, a - b)


class PairedBootstrap:
    """One bootstrap over ``n`` sessions shared by every statistic: ``counts[r, i]`` is how often
    resample r draws session i. Any statistic that is a function of per-session sums is
    bootstrapped by :meth:`sums` (a matrix product), so 20 000 sessions x 1000 resamples take
    well under a second per column. Deterministic given ``seed``."""

    def __init__(self, n: int, n_boot: int, seed: int, chunk: int = 64) -> None:
        if n < 1:
            raise ValueError("need at least one session")
        rng = np.random.default_rng(seed)
        self.n, self.n_boot, self.chunk = n, n_boot, chunk
        self.counts = np.empty((n_boot, n), dtype=np.uint16)  # 40 MB at 20 000 x 1000
        for start in range(0, n_boot, chunk):
            rows = min(chunk, n_boot - start)
            idx = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
            self.counts[start : start + rows] = np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n)

    def sums(self, x: np.ndarray) -> np.ndarray:
        """Replicate sums of per-session values ``x`` (n,) -> (n_boot,) or (n, m) -> (n_boot, m)."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[0] != self.n:
            raise ValueError(f"{x.shape[0]} sessions, the bootstrap has {self.n}")
        out = np.empty((self.n_boot, *x.shape[1:]))
        for start in range(0, self.n_boot, self.chunk):
            out[start : start + self.chunk] = self.counts[start : start + self.chunk].astype(np.float64) @ x
        return out

    def means(self, x: np.ndarray) -> np.ndarray:
        """Replicate means of per-session values (each resample has n sessions)."""
        return self.sums(x) / self.n


@dataclass(frozen=True)
class PairedDiff:
    """mean(a) - mean(b) over the same sessions, with its paired-bootstrap 95% interval."""

    diff: Estimate
    comparator_mean: float  # mean(b)

    @property
    def half_width(self) -> float:
        return (self.diff.hi - self.diff.lo) / 2.0

    def to_dict(self) -> dict[str, Any]:
        pct = 100.0 * self.half_width / abs(self.comparator_mean) if self.comparator_mean else None
        return {
            **self.diff.to_dict(),
            "half_width": self.half_width,
            "half_width_pct_of_comparator": pct,
            "comparator_mean": self.comparator_mean,
        }


def paired_diff(
    a: np.ndarray, b: np.ndarray, boot: PairedBootstrap, within: np.ndarray | None = None
) -> tuple[PairedDiff, np.ndarray]:
    """Mean over sessions of a - b, per-session values of the same sessions, with its replicates
    (n_boot,) and their percentile interval; ``within`` (n,) bool restricts the mean to a subgroup
    of sessions (a resample's subgroup mean: its sum over the subgroup's resampled sessions)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if within is None:
        reps, value, ref = boot.means(d), float(d.mean()), float(np.mean(b))
    else:
        m = within.astype(np.float64)
        reps = boot.sums(d * m) / np.maximum(boot.sums(m), 1.0)
        value, ref = float(d[within].mean()), float(np.asarray(b)[within].mean())
    return PairedDiff(percentile_estimate(value, reps), ref), reps


def p_dominates(diffs: np.ndarray) -> float:
    """Share of replicates in which every objective's difference (columns of ``diffs`` (n_boot,
    K)) is >= 0 and one is > 0: P(a dominates b) under the bootstrap."""
    return float(np.mean((diffs >= 0).all(axis=1) & (diffs > 0).any(axis=1)))


def pearson(x: np.ndarray, y: np.ndarray) -> Estimate | None:
    """Pearson r with a Fisher-z 95% interval; None when undefined (n < 4 or a constant)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < 4 or np.std(x) < 1e-12 or np.std(y) < 1e-12:
        return None
    r = float(np.corrcoef(x, y)[0, 1])
    r_c = min(max(r, -0.999999), 0.999999)
    z, se = math.atanh(r_c), 1.0 / math.sqrt(n - 3)
    return Estimate(r, math.tanh(z - Z95 * se), math.tanh(z + Z95 * se))


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when undefined."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 4 or np.std(x) < 1e-12 or np.std(y) < 1e-12:
        return None
    est = pearson(_ranks(x), _ranks(y))
    return None if est is None else est.value


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    # average the ranks of ties
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]
