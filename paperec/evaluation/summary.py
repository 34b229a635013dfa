"""Summarize several evaluation reports (e.g. seeds x settings) in one markdown table.

python -m paperec.evaluation.summary runs/full-default-* runs/full-control-*
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _ci(e: dict[str, Any], digits: int) -> str:
    lo, hi = e["ci95"]
    return f"{e['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def summarize(reports: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| setting | seed | policy | CTR | dwell s / imp. | session length | hypervolume | dominated by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        for name in ("peltr", "peltr_running", "paperec"):
            p = r["policies"].get(name)
            if p is None:
                continue
            lines.append(
                f"| {r['setting']} | {r['seed']} | {name} | {_ci(p['ctr'], 4)} | "
                f"{_ci(p['dwell_per_impression_s'], 3)} | {_ci(p['session_length'], 2)} | "
                f"{_ci(p['hypervolume'], 4)} | {', '.join(p['dominated_by']) or '-'} |"
            )
    lines += [
        "",
        "| setting | seed | largest hypervolume | fixed front HV | + PE-LTR | + PAPERec "
        "| PAPERec dwell weight | weight-preference Pearson | generator vs reward optimum "
        "| reward optimum vs preference | PAPERec - PE-LTR HV | PAPERec better beyond noise |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        s, f = r["summary"], r["fixed_weight_front"]
        corr = s.get("paperec_weight_preference_pearson")
        vs = s.get("paperec_vs_peltr", {})
        pap = r["policies"].get("paperec", {})
        probes = (s.get("paperec_generator_vs_reward_optimum"), s.get("paperec_reward_optimum_vs_preference"))
        lines.append(
            f"| {r['setting']} | {r['seed']} | {s['largest_hypervolume']} | {f['hypervolume']:.4f} | "
            f"{f.get('hypervolume_with_peltr', float('nan')):.4f} | "
            f"{f.get('hypervolume_with_paperec', float('nan')):.4f} | "
            f"{pap.get('mean_weights', {}).get('dwell', float('nan')):.3f} | "
            f"{_ci(corr, 3) if corr else 'n/a'} | "
            + "".join(f"{_ci(e, 3) if e else 'n/a'} | " for e in probes)
            + f"{_ci(vs['hypervolume_diff'], 4) if vs else 'n/a'} | "
            f"{('yes' if vs.get('better_beyond_noise') else 'no') if vs else 'n/a'} |"
        )
    return "\n".join(lines) + "\n"


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
