"""Per-session totals and the comparisons paired by session: what a user gets from a session.

Per contender: clicks, dwell seconds, lists and engagement E per session (E = clicks /
engagement_click_scale + dwell s / engagement_dwell_scale_s), each a mean over the evaluation
sessions with a bootstrap interval. Every contender (and the oracle) is evaluated on the same
sessions (common random numbers), so comparisons are paired by session: the mean over sessions
of (a_i - b_i), bootstrapped by resampling sessions, the same resample for every column
(:class:`paperec.evaluation.stats.PairedBootstrap`; percentile intervals). Reported beside each
difference: its half-width, that half-width as % of the comparator's mean, and the number of
sessions the same paired variance would need for a half-width of 1% (n (half-width % / 1)^2).

* :func:`compare`: a personalized contender vs a comparator, with P(dominates) on session
  totals (clicks/session and dwell/session both >= 0 and one > 0 in a resample; beyond noise at
  >= 0.95).
* :func:`terciles`: personalized vs the same ranker at its matched mean weight, per tercile of
  the hidden alpha (click-seekers, middle, readers) and over everyone.
* :func:`headroom`: the oracle's best per-user map minus its best global weight (both chosen on
  the selection stream), and each personalized contender's captured share of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from paperec.evaluation.headroom import GLOBAL_GRID, MAP_OFFSETS, MAP_SLOPES, Engagement, OracleData
from paperec.evaluation.online import EvalData
from paperec.evaluation.stats import PairedBootstrap, p_dominates, paired_diff, percentile_estimate
from simulator.oracle import SessionTotals

SIGNIFICANT = 0.95
"""bootstrap probability at which a dominance counts as beyond noise"""
TOTALS = ("clicks_per_session", "dwell_s_per_session", "lists_per_session", "engagement_per_session")
TERCILES = ("click-seekers", "middle", "readers")
"""low, middle and high thirds of the hidden alpha (the population's tercile cut points)"""


def per_session(d: EvalData | SessionTotals, engagement: Engagement) -> dict[str, np.ndarray]:
    """The per-session values (n,) behind :data:`TOTALS`."""
    return {
        "clicks_per_session": d.clicks.astype(np.float64),
        "dwell_s_per_session": d.dwell_s.astype(np.float64),
        "lists_per_session": d.lists.astype(np.float64),
        "engagement_per_session": engagement.of(d.clicks, d.dwell_s),
    }


def totals(d: EvalData, engagement: Engagement, boot: PairedBootstrap) -> dict[str, Any]:
    """Mean per session of each of :data:`TOTALS`, with bootstrap intervals."""
    return {
        k: percentile_estimate(float(v.mean()), boot.means(v)).to_dict()
        for k, v in per_session(d, engagement).items()
    }


def compare(
    a: EvalData | SessionTotals, b: EvalData | SessionTotals, engagement: Engagement, boot: PairedBootstrap
) -> dict[str, Any]:
    """a - b on each session total, paired by session, and P(a dominates b) on (clicks, dwell)."""
    va, vb = per_session(a, engagement), per_session(b, engagement)
    out: dict[str, Any] = {}
    reps = {}
    for k in TOTALS:
        diff, reps[k] = paired_diff(va[k], vb[k], boot)
        out[k] = diff.to_dict()
        pct = out[k]["half_width_pct_of_comparator"]
        out[k]["sessions_for_1pct"] = None if pct is None else int(np.ceil(boot.n * pct**2))
    p = p_dominates(np.stack([reps["clicks_per_session"], reps["dwell_s_per_session"]], axis=1))
    out["p_dominates"] = p
    out["dominates_beyond_noise"] = p >= SIGNIFICANT
    return out


def terciles(
    personalized: EvalData, matched: EvalData, alpha: np.ndarray, boot: PairedBootstrap
) -> dict[str, Any]:
    """Personalized minus matched mean weight (clicks/session, dwell s/session), paired by
    session, per tercile of the sessions' users' hidden alpha and over everyone; no terciles
    when alpha is constant (the control)."""
    metrics = ("clicks_per_session", "dwell_s_per_session")
    unit = Engagement()  # only clicks and dwell are compared here
    va, vb = per_session(personalized, unit), per_session(matched, unit)

    def group(within: np.ndarray | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sessions": int(boot.n if within is None else within.sum()),
        }
        for k in metrics:
            diff, _ = paired_diff(va[k], vb[k], boot, within)
            out[k] = diff.to_dict()
        return out

    result: dict[str, Any] = {"all": group(None), "cuts": None, "groups": {}}
    if np.ptp(alpha) < 1e-12:
        return result
    cuts = np.quantile(alpha, [1 / 3, 2 / 3])
    which = np.digitize(alpha[personalized.user], cuts)  # 0, 1, 2 per session
    result["cuts"] = [float(c) for c in cuts]
    for t, name in enumerate(TERCILES):
        within = which == t
        if within.any():
            result["groups"][name] = group(within)
    return result


def headroom(
    oracle: OracleData,
    contenders: Mapping[str, EvalData],
    engagement: Engagement,
    boot: PairedBootstrap,
) -> dict[str, Any]:
    """The oracle's headroom E(best map) - E(best global weight), both chosen on the selection
    stream, paired by session; and each personalized contender's captured share (E(contender) -
    E(matched)) / headroom (the ratio of the paired replicates; None unless the headroom's
    interval lies above 0: a ratio to a denominator that may be 0 has no interval)."""
    e_global = np.stack([engagement.of(t.clicks, t.dwell_s) for t in oracle.global_totals], axis=1)
    e_map = engagement.of(oracle.map_totals.clicks, oracle.map_totals.dwell_s)  # (n,)
    gain_map = e_map - e_global[:, GLOBAL_GRID.index(oracle.chosen_global)]
    reps = boot.means(gain_map)
    value = float(gain_map.mean())
    room = percentile_estimate(value, reps)
    resolved = room.lo > 0
    # conservative: against the best global weight of the evaluation sessions, in each resample
    best_on_eval = int(np.argmax(e_global.mean(axis=0)))
    eval_max = percentile_estimate(
        float((e_map - e_global[:, best_on_eval]).mean()),
        boot.means(e_map) - boot.means(e_global).max(axis=1),
    )
    captured: dict[str, Any] = {}
    for name, d in contenders.items():
        if d.matched is None:
            continue
        gain = engagement.of(d.clicks, d.dwell_s) - engagement.of(d.matched.clicks, d.matched.dwell_s)
        gain_reps = boot.means(gain)
        share = percentile_estimate(float(gain.mean()) / value, gain_reps / reps) if resolved else None
        captured[name] = {
            "gain_over_matched": percentile_estimate(float(gain.mean()), gain_reps).to_dict(),
            "share": None if share is None else share.to_dict(),
        }
    return {
        "engagement": {"click_scale": engagement.click_scale, "dwell_scale_s": engagement.dwell_scale_s},
        "global": [
            {"click_weight": w, "engagement_per_session": float(e)}
            for w, e in zip(GLOBAL_GRID, e_global.mean(axis=0), strict=True)
        ],
        "best_global_click_weight": oracle.chosen_global,
        "family": {"offsets": list(MAP_OFFSETS), "slopes": list(MAP_SLOPES), "mean_alpha": oracle.mean_alpha},
        "chosen_map": {"offset": oracle.chosen[0], "slope": oracle.chosen[1]},
        "selection_engagement": oracle.selection_engagement.tolist(),
        "map_engagement_per_session": float(e_map.mean()),
        "headroom": room.to_dict(),
        "headroom_vs_best_global_on_eval": eval_max.to_dict(),
        "resolved": resolved,  # the interval lies above 0: the shares are defined
        "captured_share": captured,
        "sessions": boot.n,
        "runtime_seconds": round(oracle.runtime_seconds, 2),
    }
