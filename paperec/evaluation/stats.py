"""Uncertainty of evaluation metrics: bootstrap over sessions, and correlation intervals.

Sessions are the independent units (lists within a session share a user and a state), so CTR
and dwell per impression, which are ratios of per-session sums, are resampled session-wise.
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


def bootstrap_indices(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) session indices drawn with replacement."""
    if n < 1:
        raise ValueError("need at least one session")
    return rng.integers(0, n, size=(n_boot, n))


def ratio_replicates(numer: np.ndarray, denom: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """sum(numer) / sum(denom) on each bootstrap resample (rows of ``idx``)."""
    return numer[idx].sum(axis=1) / np.maximum(denom[idx].sum(axis=1), 1e-12)


def percentile_estimate(value: float, replicates: np.ndarray) -> Estimate:
    lo, hi = np.percentile(replicates, [2.5, 97.5])
    return Estimate(float(value), float(lo), float(hi))


def diff_estimate(a: np.ndarray, b: np.ndarray, value: float) -> Estimate:
    """Difference of two independently bootstrapped statistics (replicates paired by index)."""
    return percentile_estimate(value, a - b)


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
