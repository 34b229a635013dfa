"""Pareto dominance and hypervolume of points in the objective plane (all objectives maximized).

Hypervolume of a set P w.r.t. a reference point r: the area of the union over p in P of the
boxes [r_1, p_1] x [r_2, p_2] (points not above r in every objective contribute nothing). For one
point it is (p_1 - r_1)(p_2 - r_2). Computed exactly by a sweep over the non-dominated points.
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]


def dominates(p: Sequence[float], q: Sequence[float]) -> bool:
    """p is at least as good as q in every objective and strictly better in one."""
    if len(p) != len(q):
        raise ValueError("points of different dimension")
    return all(a >= b for a, b in zip(p, q, strict=True)) and any(a > b for a, b in zip(p, q, strict=True))


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (duplicates all kept), in input order."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def hypervolume(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Area dominated by ``points`` (2 objectives) and bounded below by ``ref``."""
    if len(ref) != 2 or any(len(p) != 2 for p in points):
        raise ValueError("hypervolume is implemented for 2 objectives")
    r1, r2 = float(ref[0]), float(ref[1])
    inside = [(float(p[0]), float(p[1])) for p in points if p[0] > r1 and p[1] > r2]
    # sweep by the first objective, descending; each point adds the strip above the best
    # second objective seen so far
    inside.sort(key=lambda p: (-p[0], -p[1]))
    area, best2 = 0.0, r2
    for x, y in inside:
        if y > best2:
            area += (x - r1) * (y - best2)
            best2 = y
    return area


def reference_point(points: Sequence[Sequence[float]], margin: float = 0.1) -> Point:
    """The nadir of ``points`` (worst value per objective) moved down by ``margin`` times the
    ideal-nadir span, floored at 0: every point then has a positive hypervolume."""
    if not points:
        raise ValueError("no points")
    nadir = [min(p[k] for p in points) for k in range(2)]
    ideal = [max(p[k] for p in points) for k in range(2)]
    r = [max(0.0, lo - margin * (hi - lo)) for lo, hi in zip(nadir, ideal, strict=True)]
    return (r[0], r[1])
