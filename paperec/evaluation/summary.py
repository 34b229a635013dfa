"""Summarize several evaluation reports (e.g. settings x seeds) in markdown tables.

python -m paperec.evaluation.summary runs/*

Tables: per-session totals of every policy; paired differences of each personalized contender
vs PE-LTR (with the achieved half-widths); personalized vs matched mean weight per preference
tercile; oracle headroom and captured share; the reward probe of every mode.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _ci(e: Mapping[str, Any] | None, digits: int) -> str:
    if not e:
        return "n/a"
    lo, hi = e["ci95"]
    return f"{e['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _pm(e: Mapping[str, Any], digits: int) -> str:
    pct = e.get("half_width_pct_of_comparator")
    return _ci(e, digits) + ("" if pct is None else f" ±{pct:.1f}%")


def _run(r: Mapping[str, Any]) -> str:
    train = r.get("train_seed")  # a replicate training (--train-seed) is labelled as such
    seed = r["seed"] if train in (None, r["seed"]) else f"{r['seed']} (train {train})"
    return f"| {r['setting']} | {seed} |"


def totals_table(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| setting | seed | policy | clicks / session | dwell s / session | lists / session "
        "| engagement / session | CTR | dwell s / imp. | dominated by |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        for name, p in r["policies"].items():
            rows = [(name, p)]
            if p.get("matched"):
                rows.append((f"{name} @ matched weight", {**p["matched"], "dominated_by": ["n/a"]}))
            for label, q in rows:
                lines.append(
                    f"{_run(r)} {label} | {_ci(q['clicks_per_session'], 2)} | "
                    f"{_ci(q['dwell_s_per_session'], 1)} | {_ci(q['lists_per_session'], 2)} | "
                    f"{_ci(q['engagement_per_session'], 2)} | {_ci(q.get('ctr'), 4)} | "
                    f"{_ci(q.get('dwell_per_impression_s'), 3)} | "
                    + (", ".join(q["dominated_by"]) or "-")
                    + " |"
                )
    return lines


def paired_table(reports: Sequence[Mapping[str, Any]], comparator: str = "peltr") -> list[str]:
    lines = [
        f"| setting | seed | policy | Δ clicks / session vs {comparator} | Δ dwell s / session "
        "| Δ lists / session | P(dominates) | dwell half-width (s) | sessions for 1% |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        for name, by in (r.get("paired") or {}).items():
            c = by.get(comparator)
            if c is None:
                continue
            d = c["dwell_s_per_session"]
            lines.append(
                f"{_run(r)} {name} | {_pm(c['clicks_per_session'], 3)} | {_pm(d, 2)} | "
                f"{_pm(c['lists_per_session'], 3)} | {c['p_dominates']:.3f} | {d['half_width']:.2f} | "
                f"{d['sessions_for_1pct']} |"
            )
    return lines


def tercile_table(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| setting | seed | policy | tercile | sessions | Δ clicks / session vs matched weight "
        "| Δ dwell s / session |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        for name, t in (r.get("terciles") or {}).items():
            for group, g in [*t["groups"].items(), ("all", t["all"])]:
                lines.append(
                    f"{_run(r)} {name} | {group} | {g['sessions']} | {_pm(g['clicks_per_session'], 3)} | "
                    f"{_pm(g['dwell_s_per_session'], 2)} |"
                )
    return lines


def headroom_table(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| setting | seed | best global w_click | chosen map (c, s) | headroom (E / session) "
        "| policy | gain over matched weight | captured share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        h = r.get("headroom")
        if not h:
            continue
        head = (
            f"{_run(r)} {h['best_global_click_weight']:.1f} | "
            f"({h['chosen_map']['offset']:.1f}, {h['chosen_map']['slope']:.1f}) | {_ci(h['headroom'], 3)} |"
        )
        for name, c in h["captured_share"].items() or [("-", None)]:
            share = "n/a" if c is None else _ci(c["share"], 2) if c["share"] else "headroom not resolved"
            gain = "n/a" if c is None else _ci(c["gain_over_matched"], 3)
            lines.append(f"{head} {name} | {gain} | {share} |")
    return lines


def probe_table(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| setting | seed | policy | mode | users | generator vs optimum | optimum vs preference "
        "| generator vs preference | mean optimum / generator dwell weight |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        for name, p in r["policies"].items():
            rp = p.get("reward_probe")
            if not rp:
                continue
            means = (rp.get("optimum_dwell_weight_mean"), rp.get("generator_dwell_weight_mean"))
            lines.append(
                f"{_run(r)} {name} | {rp.get('mode', 'pareto')} | {rp['users']} | "
                f"{_ci(rp['generator_vs_optimum'], 3)} | {_ci(rp['optimum_vs_preference'], 3)} | "
                f"{_ci(rp['generator_vs_preference'], 3)} | "
                + " / ".join("n/a" if m is None else f"{m:.3f}" for m in means)
                + " |"
            )
    return lines


def summarize(reports: Sequence[Mapping[str, Any]]) -> str:
    sections = [
        ("Per-session totals", totals_table(reports)),
        ("Paired differences vs PE-LTR (by session)", paired_table(reports)),
        ("Personalized minus matched mean weight, per preference tercile", tercile_table(reports)),
        ("Oracle headroom and captured share", headroom_table(reports)),
        ("Reward probe", probe_table(reports)),
    ]
    out: list[str] = []
    for title, table in sections:
        out += [f"### {title}", "", *table, ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="evaluation output directories")
    args = parser.parse_args()
    reports = [json.loads((d / "report.json").read_text()) for d in args.dirs]
    reports.sort(key=lambda r: (r["setting"], r["seed"]))
    print(summarize(reports), end="")


if __name__ == "__main__":
    main()
