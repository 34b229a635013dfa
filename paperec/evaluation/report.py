"""From per-contender evaluation data to report.json, report.md and pareto.png.

Objective plane: CTR (clicks per shown item) and mean dwell seconds per shown item, both
maximized. Beside it, per-session totals (clicks, dwell seconds, lists, engagement per session)
and the comparisons paired by session (:mod:`paperec.evaluation.paired`). Uncertainty: one
bootstrap over the evaluation sessions shared by every statistic (``n_boot`` resamples; every
contender ran on the same sessions, so differences are paired). Hypervolume reference:
:func:`paperec.evaluation.pareto.reference_point` of all contenders' point estimates (10% below
the nadir), so every policy has a positive hypervolume; the hypervolume w.r.t. the origin is
reported too (comparable across runs).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from paperec.evaluation import paired
from paperec.evaluation.contenders import PolicySpec
from paperec.evaluation.headroom import Engagement, OracleData
from paperec.evaluation.online import EvalData
from paperec.evaluation.pareto import dominates, hypervolume, non_dominated, reference_point
from paperec.evaluation.stats import (
    Estimate,
    PairedBootstrap,
    diff_estimate,
    pearson,
    percentile_estimate,
    spearman,
)

log = logging.getLogger(__name__)

SIGNIFICANT = paired.SIGNIFICANT
PELTR = ("peltr", "peltr_running")
"""the learned global-weight baselines each personalized contender is compared with"""


def _point(d: EvalData) -> tuple[float, float]:
    imps = max(int(d.impressions.sum()), 1)
    return float(d.clicks.sum()) / imps, float(d.dwell_s.sum()) / imps


def _rates(d: EvalData, boot: PairedBootstrap) -> np.ndarray:
    """(n_boot, 2) replicates of (CTR, dwell per impression): ratios of resampled sums."""
    imps = np.maximum(boot.sums(d.impressions), 1e-12)
    return np.stack([boot.sums(d.clicks) / imps, boot.sums(d.dwell_s) / imps], axis=1)


def build_report(
    specs: list[PolicySpec],
    data: Mapping[str, EvalData],
    alpha: np.ndarray,
    objectives: tuple[str, ...],
    seed: int,
    engagement: Engagement | None = None,
    oracle: OracleData | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    engagement = engagement or Engagement()
    names = [s.name for s in specs]
    sessions = {len(data[n].lists) for n in names}
    if len(sessions) != 1:
        raise ValueError(f"contenders ran on different numbers of sessions: {sorted(sessions)}")
    boot = PairedBootstrap(sessions.pop(), n_boot, seed)
    points = {n: _point(data[n]) for n in names}
    reps: dict[str, np.ndarray] = {}  # (n_boot, 2) bootstrap replicates of each point
    policies: dict[str, dict[str, Any]] = {}
    for spec in specs:
        d = data[spec.name]
        reps[spec.name] = _rates(d, boot)
        p = points[spec.name]
        policies[spec.name] = {
            "strategy": spec.strategy,
            "personalized": spec.is_personalized,
            "serving_weights": list(spec.weights) if spec.weights else None,
            "mean_weights": dict(zip(objectives, d.list_weights.mean(axis=0).tolist(), strict=True)),
            "ctr": percentile_estimate(p[0], reps[spec.name][:, 0]).to_dict(),
            "dwell_per_impression_s": percentile_estimate(p[1], reps[spec.name][:, 1]).to_dict(),
            **paired.totals(d, engagement, boot),
            "sessions": len(d.lists),
            "impressions": int(d.impressions.sum()),
            "train_seconds": round(d.train_seconds, 2),
            "eval_seconds": round(d.eval_seconds, 2),
            "train_metrics_last10pct": d.train_metrics,
            "weight_preference_correlation": _weight_correlation(d, alpha, objectives),
            "reward_probe": d.reward_probe,
            "matched": None,
        }
        if d.matched is not None and d.matched_weights is not None:
            policies[spec.name]["matched"] = {
                "weights": dict(zip(objectives, d.matched_weights, strict=True)),
                **paired.totals(d.matched, engagement, boot),
            }

    ref = reference_point(list(points.values()))
    for n in names:
        hv_reps = np.array([hypervolume([tuple(r)], ref) for r in reps[n]])
        policies[n]["hypervolume"] = percentile_estimate(hypervolume([points[n]], ref), hv_reps).to_dict()
        policies[n]["hypervolume_origin"] = hypervolume([points[n]], (0.0, 0.0))
        policies[n]["dominated_by"] = [m for m in names if m != n and dominates(points[m], points[n])]

    dominance = []
    for a in names:
        for b in names:
            if a != b and dominates(points[a], points[b]):
                prob = float(np.mean([dominates(x, y) for x, y in zip(reps[a], reps[b], strict=True)]))
                dominance.append(
                    {"winner": a, "loser": b, "probability": prob, "significant": prob >= SIGNIFICANT}
                )

    personalized = [s.name for s in specs if s.is_personalized]
    comparators = [s.name for s in specs if not s.is_personalized]
    fixed = [s.name for s in specs if s.is_fixed_weight]
    front = [fixed[i] for i in non_dominated([points[n] for n in fixed])]
    front_hv = hypervolume([points[n] for n in front], ref)
    report: dict[str, Any] = {
        "seed": seed,
        "objectives": ["ctr", "dwell_per_impression_s"],
        "reference_point": list(ref),
        "bootstrap": {"resamples": n_boot, "unit": "session", "paired": True, "interval": "percentile"},
        "policies": policies,
        "fixed_weight_front": {"members": front, "hypervolume": front_hv},
        "dominance": dominance,
        "paired": {
            a: {b: paired.compare(data[a], data[b], engagement, boot) for b in comparators}
            for a in personalized
        },
        "terciles": {
            a: paired.terciles(data[a], data[a].matched, alpha, boot)  # type: ignore[arg-type]
            for a in personalized
            if data[a].matched is not None
        },
        "headroom": None if oracle is None else paired.headroom(oracle, data, engagement, boot),
    }
    hv = {n: policies[n]["hypervolume"]["value"] for n in names}
    best = max(names, key=lambda n: hv[n])
    summary: dict[str, Any] = {"largest_hypervolume": best}
    for learned in [*personalized, *(b for b in PELTR if b in points)]:
        with_it = hypervolume([points[n] for n in front] + [points[learned]], ref)
        report["fixed_weight_front"][f"hypervolume_with_{learned}"] = with_it
        summary[f"{learned}_dominated_by"] = policies[learned]["dominated_by"]
        summary[f"{learned}_extends_fixed_front"] = with_it > front_hv
    for a in personalized:
        summary[f"{a}_largest_hypervolume"] = best == a
        corr = policies[a]["weight_preference_correlation"]
        summary[f"{a}_weight_preference_pearson"] = None if corr is None else corr["pearson"]
        rp = policies[a]["reward_probe"] or {}
        summary[f"{a}_generator_vs_reward_optimum"] = rp.get("generator_vs_optimum")
        summary[f"{a}_reward_optimum_vs_preference"] = rp.get("optimum_vs_preference")
        for baseline in PELTR:
            if baseline in points:
                summary[f"{a}_vs_{baseline}"] = _compare(points, reps, a, baseline, ref)
    report["summary"] = summary
    return report


def _compare(
    points: Mapping[str, tuple[float, float]],
    reps: Mapping[str, np.ndarray],
    a: str,
    b: str,
    ref: tuple[float, float],
) -> dict[str, Any]:
    """a minus b, with bootstrap intervals; 'better beyond noise' = the hypervolume difference's
    95% interval lies above 0, or a dominates b in at least 95% of the resamples."""
    ra, rb = reps[a], reps[b]
    hv_a = np.array([hypervolume([tuple(r)], ref) for r in ra])
    hv_b = np.array([hypervolume([tuple(r)], ref) for r in rb])
    hv_diff = diff_estimate(hv_a, hv_b, hypervolume([points[a]], ref) - hypervolume([points[b]], ref))
    p_dom = float(np.mean([dominates(x, y) for x, y in zip(ra, rb, strict=True)]))
    return {
        "ctr_diff": diff_estimate(ra[:, 0], rb[:, 0], points[a][0] - points[b][0]).to_dict(),
        "dwell_diff": diff_estimate(ra[:, 1], rb[:, 1], points[a][1] - points[b][1]).to_dict(),
        "hypervolume_diff": hv_diff.to_dict(),
        "p_dominates": p_dom,
        "better_beyond_noise": bool(hv_diff.lo > 0 or p_dom >= SIGNIFICANT),
    }


def _weight_correlation(d: EvalData, alpha: np.ndarray, objectives: tuple[str, ...]) -> dict[str, Any] | None:
    """Correlation across users of the mean served dwell weight and the hidden trade-off."""
    if "dwell" not in objectives or len(d.list_user) == 0:
        return None
    k = objectives.index("dwell")
    users, inverse = np.unique(d.list_user, return_inverse=True)
    mean_w = np.bincount(inverse, weights=d.list_weights[:, k]) / np.bincount(inverse)
    est: Estimate | None = pearson(mean_w, alpha[users])
    if est is None:  # constant weights (global policies) or constant preferences (control)
        return None
    return {
        "pearson": est.to_dict(),
        "spearman": spearman(mean_w, alpha[users]),
        "users": len(users),
        # how much the weights vary at all: a collapsed generator gives a tiny spread
        "dwell_weight_mean": float(mean_w.mean()),
        "dwell_weight_sd_across_users": float(mean_w.std()),
    }


# ---------------------------------------------------------------------------------- rendering
def _fmt(e: Mapping[str, Any], digits: int) -> str:
    lo, hi = e["ci95"]
    return f"{e['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _pm(e: Mapping[str, Any], digits: int) -> str:
    """A paired difference with its interval and half-width as % of the comparator."""
    pct = e.get("half_width_pct_of_comparator")
    return _fmt(e, digits) + ("" if pct is None else f" (±{pct:.1f}%)")


def markdown(report: Mapping[str, Any]) -> str:
    overrides = report.get("simulator_overrides") or {}
    lines = [
        f"# Evaluation, seed {report['seed']}, {report.get('setting', 'default')} simulator"
        + (" (quick)" if report.get("quick") else ""),
        "",
        "Simulator overrides: "
        + (", ".join(f"{k}={v}" for k, v in overrides.items()) or "none")
        + " (the full simulator config is in report.json).",
        "",
        "Objectives (maximized): CTR = clicks per shown item; dwell = seconds per shown item. "
        "Brackets: 95% intervals of one bootstrap over evaluation sessions, shared by every "
        "contender (same sessions, common random numbers: differences are paired). Hypervolume "
        f"w.r.t. reference point ({report['reference_point'][0]:.4f}, {report['reference_point'][1]:.3f}).",
        "",
        "| policy | CTR | dwell s / impression | hypervolume | mean dwell weight | dominated by |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in report["policies"].items():
        lines.append(
            f"| {name} | {_fmt(p['ctr'], 4)} | {_fmt(p['dwell_per_impression_s'], 3)} | "
            f"{_fmt(p['hypervolume'], 5)} | {p['mean_weights'].get('dwell', float('nan')):.3f} | "
            f"{', '.join(p['dominated_by']) or '-'} |"
        )
    lines += _session_lines(report)
    front = report["fixed_weight_front"]
    s = report["summary"]
    lines += [
        "",
        f"Fixed-weight front: {', '.join(front['members'])}; hypervolume {front['hypervolume']:.5f}"
        + "".join(
            f"; with {k.removeprefix('hypervolume_with_')} {v:.5f}"
            for k, v in front.items()
            if k.startswith("hypervolume_with_")
        )
        + ".",
        f"Largest single-policy hypervolume: **{s['largest_hypervolume']}**.",
    ]
    for name, p in report["policies"].items():
        if p.get("personalized"):
            lines += _personalized_lines(name, p, s)
    sig = [d for d in report["dominance"] if d["significant"]]
    lines += ["", "Dominance in (CTR, dwell per impression) beyond noise (bootstrap probability >= 0.95): "]
    lines += [f"- {d['winner']} dominates {d['loser']} (p = {d['probability']:.2f})" for d in sig] or [
        "- none"
    ]
    return "\n".join(lines) + "\n"


def _session_lines(report: Mapping[str, Any]) -> list[str]:
    """Per-session totals, the paired differences, the terciles and the oracle headroom."""
    lines = [
        "",
        "## Per session",
        "",
        "| policy | clicks / session | dwell s / session | lists / session | engagement / session |",
        "|---|---|---|---|---|",
    ]
    for name, p in report["policies"].items():
        rows = [(name, p)] + ([(f"{name} at matched mean weight", p["matched"])] if p.get("matched") else [])
        for label, q in rows:
            lines.append(
                f"| {label} | {_fmt(q['clicks_per_session'], 2)} | {_fmt(q['dwell_s_per_session'], 1)} | "
                f"{_fmt(q['lists_per_session'], 2)} | {_fmt(q['engagement_per_session'], 2)} |"
            )
    pairs = report.get("paired") or {}
    if pairs:
        lines += [
            "",
            "Paired by session, personalized minus comparator (brackets: 95% paired-bootstrap "
            "percentile interval; ±: its half-width as % of the comparator's mean). P(dominates): "
            "clicks/session and dwell/session both >= in a resample.",
            "",
            "| policy | comparator | Δ clicks / session | Δ dwell s / session | Δ lists / session "
            "| P(dominates) | beyond noise |",
            "|---|---|---|---|---|---|---|",
        ]
        for a, by in pairs.items():
            for b, c in by.items():
                lines.append(
                    f"| {a} | {b} | {_pm(c['clicks_per_session'], 3)} | {_pm(c['dwell_s_per_session'], 2)} | "
                    f"{_pm(c['lists_per_session'], 3)} | {c['p_dominates']:.3f} | "
                    f"{'yes' if c['dominates_beyond_noise'] else 'no'} |"
                )
        lines.append("")
        for a, by in pairs.items():
            if "peltr" in by:
                d = by["peltr"]["dwell_s_per_session"]
                lines.append(
                    f"Achieved half-width of {a} - peltr in dwell/session: {d['half_width']:.2f} s = "
                    f"{d['half_width_pct_of_comparator']:.2f}% of peltr's {d['comparator_mean']:.1f} s "
                    f"({d['sessions_for_1pct']} sessions would give 1%)."
                )
    terc = report.get("terciles") or {}
    if terc:
        lines += [
            "",
            "Personalized minus the same ranker at its matched mean weight, per tercile of the "
            "hidden alpha (paired by session):",
            "",
            "| policy | tercile | sessions | Δ clicks / session | Δ dwell s / session |",
            "|---|---|---|---|---|",
        ]
        for a, t in terc.items():
            for group, g in [*t["groups"].items(), ("all", t["all"])]:
                lines.append(
                    f"| {a} | {group} | {g['sessions']} | {_pm(g['clicks_per_session'], 3)} | "
                    f"{_pm(g['dwell_s_per_session'], 2)} |"
                )
    room = report.get("headroom")
    if room:
        e = room["engagement"]
        best = room["chosen_map"]
        conservative = room["headroom_vs_best_global_on_eval"]
        lines += [
            "",
            f"Oracle headroom (engagement E = clicks / {e['click_scale']:g} + dwell s / "
            f"{e['dwell_scale_s']:g}): best global click weight {room['best_global_click_weight']:.1f}; "
            f"per-user map chosen on the selection stream c = {best['offset']:.1f}, s = {best['slope']:.1f}; "
            f"headroom {_fmt(room['headroom'], 3)} E per session "
            f"({'resolved' if room['resolved'] else 'not resolved: its interval reaches 0'}; against "
            f"the best global weight on the evaluation sessions {_fmt(conservative, 3)}; "
            f"oracle runtime {room['runtime_seconds']:.1f} s).",
        ]
        for a, c in room["captured_share"].items():
            share = "undefined (headroom not resolved)" if c["share"] is None else _fmt(c["share"], 2)
            lines.append(
                f"- {a}: gain over its matched mean weight {_fmt(c['gain_over_matched'], 3)} E per session, "
                f"captured share {share}"
            )
    return lines


def _personalized_lines(name: str, p: Mapping[str, Any], s: Mapping[str, Any]) -> list[str]:
    lines = ["", f"**{name}**: dominated by {', '.join(s.get(f'{name}_dominated_by', [])) or 'none'}."]
    corr = p["weight_preference_correlation"]
    if corr is not None:
        lines.append(
            f"Correlation of its per-user dwell weight with the hidden preference: Pearson "
            f"{_fmt(corr['pearson'], 3)}, Spearman {corr['spearman']:.3f} over {corr['users']} users "
            f"(per-user mean dwell weight {corr['dwell_weight_mean']:.4f}, "
            f"sd across users {corr['dwell_weight_sd_across_users']:.2g})."
        )
    else:
        lines.append("Weight-preference correlation: undefined (constant weights or constant preferences).")
    rp = p["reward_probe"]
    if rp and rp["users"]:

        def r(key: str) -> str:
            return "undefined" if rp[key] is None else _fmt(rp[key], 3)

        lines.append(
            f"Reward probe ({rp.get('mode', 'pareto')}; the {rp['users']} users with >= 3 of the final "
            f"buffer's {rp['lists']} lists): dwell weight vs its objective's per-user optimum, Pearson "
            f"{r('generator_vs_optimum')}; that optimum vs the hidden preference, "
            f"{r('optimum_vs_preference')} (mean optimum {rp['optimum_dwell_weight_mean']:.3f}, "
            f"mean generator weight {rp['generator_dwell_weight_mean']:.3f})."
        )
    for baseline in PELTR:
        c = s.get(f"{name}_vs_{baseline}")
        if c is None:
            continue
        lines.append(
            f"{name} minus {baseline}: CTR {_fmt(c['ctr_diff'], 4)}, dwell {_fmt(c['dwell_diff'], 3)}, "
            f"hypervolume {_fmt(c['hypervolume_diff'], 5)}; P(dominates) = {c['p_dominates']:.2f}; "
            f"better beyond noise: {'yes' if c['better_beyond_noise'] else 'no'}."
        )
    return lines


def plot(report: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    pol = report["policies"]
    fixed = [n for n, p in pol.items() if p["strategy"] in ("single", "fixed")]
    front = sorted(report["fixed_weight_front"]["members"], key=lambda n: pol[n]["ctr"]["value"])
    ax.plot(
        [pol[n]["ctr"]["value"] for n in front],
        [pol[n]["dwell_per_impression_s"]["value"] for n in front],
        "-",
        color="0.6",
        label="fixed-weight front",
        zorder=1,
    )
    styles = {
        "paperec_pareto": ("*", "tab:red", 14),
        "paperec_engagement": ("P", "tab:orange", 11),
        "paperec_hybrid": ("X", "tab:brown", 11),
        "peltr": ("D", "tab:blue", 8),
        "peltr_running": ("d", "tab:purple", 8),
    }
    for name, p in pol.items():
        marker, color, size = styles.get(name, ("o", "0.3" if name in fixed else "tab:green", 6))
        x, y = p["ctr"]["value"], p["dwell_per_impression_s"]["value"]
        xerr = [[x - p["ctr"]["ci95"][0]], [p["ctr"]["ci95"][1] - x]]
        yerr = [[y - p["dwell_per_impression_s"]["ci95"][0]], [p["dwell_per_impression_s"]["ci95"][1] - y]]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, color=color, markersize=size, capsize=2, zorder=2)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ref = report["reference_point"]
    ax.axvline(ref[0], color="0.85", lw=0.8, ls=":")
    ax.axhline(ref[1], color="0.85", lw=0.8, ls=":")
    ax.set_xlabel("CTR (clicks per shown item)")
    ax.set_ylabel("dwell seconds per shown item")
    ax.set_title(f"seed {report['seed']}, {report.get('setting', 'default')} simulator")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
