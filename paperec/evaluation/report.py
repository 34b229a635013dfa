"""From per-contender evaluation data to report.json, report.md and pareto.png.

Objective plane: CTR (clicks per shown item) and mean dwell seconds per shown item, both
maximized. Uncertainty: bootstrap over evaluation sessions (``n_boot`` resamples per contender).
Hypervolume reference: :func:`paperec.evaluation.pareto.reference_point` of all contenders'
point estimates (10% below the nadir), so every policy has a positive hypervolume; the
hypervolume w.r.t. the origin is reported too (comparable across runs).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from paperec.evaluation.contenders import PolicySpec
from paperec.evaluation.online import EvalData
from paperec.evaluation.pareto import dominates, hypervolume, non_dominated, reference_point
from paperec.evaluation.stats import (
    Estimate,
    bootstrap_indices,
    diff_estimate,
    pearson,
    percentile_estimate,
    ratio_replicates,
    spearman,
)

log = logging.getLogger(__name__)

SIGNIFICANT = 0.95  # bootstrap probability at which a dominance counts as beyond noise
LEARNED = ("paperec", "peltr", "peltr_running")
"""Policies that learn their weights; PAPERec is compared with each of the others."""


def _point(d: EvalData) -> tuple[float, float]:
    imps = max(int(d.impressions.sum()), 1)
    return float(d.clicks.sum()) / imps, float(d.dwell_s.sum()) / imps


def build_report(
    specs: list[PolicySpec],
    data: Mapping[str, EvalData],
    alpha: np.ndarray,
    objectives: tuple[str, ...],
    seed: int,
    n_boot: int = 1000,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    names = [s.name for s in specs]
    points = {n: _point(data[n]) for n in names}
    reps: dict[str, np.ndarray] = {}  # (n_boot, 2) bootstrap replicates of each point
    policies: dict[str, dict[str, Any]] = {}
    for spec in specs:
        d = data[spec.name]
        idx = bootstrap_indices(len(d.lists), n_boot, rng)
        ctr = ratio_replicates(d.clicks.astype(float), d.impressions.astype(float), idx)
        dwell = ratio_replicates(d.dwell_s, d.impressions.astype(float), idx)
        length = d.lists[idx].mean(axis=1)
        reps[spec.name] = np.stack([ctr, dwell], axis=1)
        p = points[spec.name]
        policies[spec.name] = {
            "strategy": spec.strategy,
            "serving_weights": list(spec.weights) if spec.weights else None,
            "mean_weights": dict(zip(objectives, d.list_weights.mean(axis=0).tolist(), strict=True)),
            "ctr": percentile_estimate(p[0], ctr).to_dict(),
            "dwell_per_impression_s": percentile_estimate(p[1], dwell).to_dict(),
            "session_length": percentile_estimate(float(d.lists.mean()), length).to_dict(),
            "sessions": len(d.lists),
            "impressions": int(d.impressions.sum()),
            "train_seconds": round(d.train_seconds, 2),
            "eval_seconds": round(d.eval_seconds, 2),
            "train_metrics_last10pct": d.train_metrics,
            "weight_preference_correlation": _weight_correlation(d, alpha, objectives),
            "reward_probe": d.reward_probe,
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

    fixed = [s.name for s in specs if s.is_fixed_weight]
    front = [fixed[i] for i in non_dominated([points[n] for n in fixed])]
    front_hv = hypervolume([points[n] for n in front], ref)
    report: dict[str, Any] = {
        "seed": seed,
        "objectives": ["ctr", "dwell_per_impression_s"],
        "reference_point": list(ref),
        "policies": policies,
        "fixed_weight_front": {"members": front, "hypervolume": front_hv},
        "dominance": dominance,
    }
    hv = {n: policies[n]["hypervolume"]["value"] for n in names}
    best = max(names, key=lambda n: hv[n])
    summary: dict[str, Any] = {"largest_hypervolume": best}
    for learned in LEARNED:
        if learned in points:
            with_it = hypervolume([points[n] for n in front] + [points[learned]], ref)
            report["fixed_weight_front"][f"hypervolume_with_{learned}"] = with_it
            summary[f"{learned}_dominated_by"] = policies[learned]["dominated_by"]
            summary[f"{learned}_extends_fixed_front"] = with_it > front_hv
    if "paperec" in points:
        summary["paperec_largest_hypervolume"] = best == "paperec"
        corr = policies["paperec"]["weight_preference_correlation"]
        summary["paperec_weight_preference_pearson"] = None if corr is None else corr["pearson"]
        rp = policies["paperec"]["reward_probe"] or {}
        summary["paperec_generator_vs_reward_optimum"] = rp.get("generator_vs_optimum")
        summary["paperec_reward_optimum_vs_preference"] = rp.get("optimum_vs_preference")
    for baseline in LEARNED[1:]:
        if "paperec" in points and baseline in points:
            summary[f"paperec_vs_{baseline}"] = _compare(points, reps, "paperec", baseline, ref)
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


def markdown(report: Mapping[str, Any]) -> str:
    lines = [
        f"# Evaluation, seed {report['seed']}, {report.get('setting', 'default')} simulator"
        + (" (quick)" if report.get("quick") else ""),
        "",
        "Objectives (maximized): CTR = clicks per shown item; dwell = seconds per shown item. "
        "Brackets: 95% bootstrap intervals over evaluation sessions. Hypervolume w.r.t. "
        f"reference point ({report['reference_point'][0]:.4f}, {report['reference_point'][1]:.3f}).",
        "",
        "| policy | CTR | dwell s / impression | session length | hypervolume | mean dwell weight "
        "| dominated by |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in report["policies"].items():
        lines.append(
            f"| {name} | {_fmt(p['ctr'], 4)} | {_fmt(p['dwell_per_impression_s'], 3)} | "
            f"{_fmt(p['session_length'], 2)} | {_fmt(p['hypervolume'], 5)} | "
            f"{p['mean_weights'].get('dwell', float('nan')):.3f} | {', '.join(p['dominated_by']) or '-'} |"
        )
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
    if "paperec_dominated_by" in s:
        lines.append(f"PAPERec dominated by: {', '.join(s['paperec_dominated_by']) or 'none'}.")
    corr = report["policies"].get("paperec", {}).get("weight_preference_correlation")
    if corr is not None:
        lines.append(
            f"Correlation of PAPERec's per-user dwell weight with the hidden preference: Pearson "
            f"{_fmt(corr['pearson'], 3)}, Spearman {corr['spearman']:.3f} over {corr['users']} users "
            f"(per-user mean dwell weight {corr['dwell_weight_mean']:.4f}, "
            f"sd across users {corr['dwell_weight_sd_across_users']:.2g})."
        )
    elif "paperec" in report["policies"]:
        lines.append("Weight-preference correlation: undefined (constant weights or constant preferences).")
    rp = report["policies"].get("paperec", {}).get("reward_probe")
    if rp and rp["users"]:

        def r(key: str) -> str:
            return "undefined" if rp[key] is None else _fmt(rp[key], 3)

        lines.append(
            f"Reward probe (the {rp['users']} users with >= 3 of the final buffer's {rp['lists']} lists): "
            f"PAPERec's dwell weight vs its reward's per-user optimum, Pearson {r('generator_vs_optimum')}; "
            f"that optimum vs the hidden preference, {r('optimum_vs_preference')} "
            f"(mean optimum {rp['optimum_dwell_weight_mean']:.3f}, mean generator weight "
            f"{rp['generator_dwell_weight_mean']:.3f})."
        )
    for baseline in LEARNED[1:]:
        if f"paperec_vs_{baseline}" not in s:
            continue
        c = s[f"paperec_vs_{baseline}"]
        lines.append(
            f"PAPERec minus {baseline}: CTR {_fmt(c['ctr_diff'], 4)}, dwell {_fmt(c['dwell_diff'], 3)}, "
            f"hypervolume {_fmt(c['hypervolume_diff'], 5)}; P(PAPERec dominates) = {c['p_dominates']:.2f}; "
            f"better beyond noise: {'yes' if c['better_beyond_noise'] else 'no'}."
        )
    sig = [d for d in report["dominance"] if d["significant"]]
    lines += ["", "Dominance beyond noise (bootstrap probability >= 0.95): "]
    lines += [f"- {d['winner']} dominates {d['loser']} (p = {d['probability']:.2f})" for d in sig] or [
        "- none"
    ]
    return "\n".join(lines) + "\n"


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
        "paperec": ("*", "tab:red", 14),
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
