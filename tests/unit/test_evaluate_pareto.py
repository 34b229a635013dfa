"""Dominance, hypervolume and the statistics of the evaluation, against hand-derived values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from paperec.evaluation.pareto import dominates, hypervolume, non_dominated, reference_point
from paperec.evaluation.stats import PairedBootstrap, pearson, spearman


def test_dominates() -> None:
    assert dominates((2, 2), (1, 2))
    assert dominates((2, 3), (1, 2))
    assert not dominates((2, 2), (2, 2))  # equal points do not dominate each other
    assert not dominates((3, 1), (1, 3))  # a trade-off
    assert not dominates((1, 2), (2, 2))


def test_non_dominated() -> None:
    pts = [(1, 3), (2, 2), (3, 1), (1, 1), (2, 2)]
    assert non_dominated(pts) == [0, 1, 2, 4]


def test_hypervolume_hand_values() -> None:
    ref = (0.0, 0.0)
    assert hypervolume([(2, 3)], ref) == 6.0
    # staircase (1,3), (2,2), (3,1): 3*1 + 2*(2-1) + 1*(3-2) = 6
    assert hypervolume([(1, 3), (2, 2), (3, 1)], ref) == 6.0
    # a dominated point adds nothing; order does not matter
    assert hypervolume([(3, 1), (1, 1), (2, 2), (1, 3)], ref) == 6.0
    # shifted reference: boxes [1,3]x[0.5,1], [1,2]x[0.5,2], [1,1]x.. -> 2*0.5 + 1*1 + 0 = 2
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (1.0, 0.5)) == pytest.approx(2.0)
    # points not above the reference in every objective contribute nothing
    assert hypervolume([(0.5, 10)], (1.0, 0.0)) == 0.0
    assert hypervolume([], ref) == 0.0
    with pytest.raises(ValueError):
        hypervolume([(1, 2, 3)], (0, 0, 0))


def test_hypervolume_matches_a_grid_count() -> None:
    rng = np.random.default_rng(0)
    pts = rng.random((6, 2))
    xs = (np.arange(400) + 0.5) / 400
    grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)
    covered = np.zeros(len(grid), dtype=bool)
    for p in pts:
        covered |= (grid[:, 0] <= p[0]) & (grid[:, 1] <= p[1])
    assert hypervolume(pts.tolist(), (0, 0)) == pytest.approx(covered.mean(), abs=5e-3)


def test_reference_point() -> None:
    assert reference_point([(0.1, 5.0), (0.2, 3.0)]) == pytest.approx((0.09, 2.8))
    assert reference_point([(0.0, 1.0), (1.0, 1.0)]) == (0.0, 1.0)  # floored at 0; zero span


def test_correlations_match_scipy() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(size=50)
    est = pearson(x, y)
    assert est is not None and est.value == pytest.approx(sps.pearsonr(x, y)[0])
    assert est.lo < est.value < est.hi
    y[3] = y[4]  # a tie
    assert spearman(x, y) == pytest.approx(sps.spearmanr(x, y)[0])
    assert pearson(x, np.ones(50)) is None and spearman(np.ones(50), y) is None


def test_ratio_bootstrap() -> None:
    numer, denom = np.array([1.0, 2.0, 3.0]), np.array([10.0, 10.0, 10.0])
    boot = PairedBootstrap(3, 500, seed=0)
    assert (boot.counts.sum(axis=1) == 3).all()  # every resample draws n sessions
    reps = boot.sums(numer) / boot.sums(denom)
    assert reps.min() >= 0.1 and reps.max() <= 0.3
    # a resample's ratio is that of its drawn sessions' sums
    r = 7
    drawn = np.repeat(np.arange(3), boot.counts[r])
    assert reps[r] == pytest.approx(numer[drawn].sum() / denom[drawn].sum())
