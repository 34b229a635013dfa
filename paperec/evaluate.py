"""``paperec evaluate``: train and evaluate CTR-only, dwell-only, fixed global weights, PE-LTR
and PAPERec in each reward mode on the simulator, with the same budget, and write a report.

    paperec evaluate --seed 0 --out runs/eval-0                      # the full run
    paperec evaluate --seed 0 --out runs/quick --quick               # a small budget
    paperec evaluate --seed 0 --out runs/control --setting control   # no preference heterogeneity
    paperec evaluate --seed 0 --out runs/readers --setting readers --simulator n_users=1000

Writes DIR/report.json, DIR/report.md and DIR/pareto.png (see docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from base.config_flags import parse_assignments
from base.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seeds the simulator, models and sampling")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help="small budget: a check that everything runs")
    parser.add_argument(
        "--setting",
        default=None,
        help="simulator setting (paperec/evaluation/settings.py): default; control (no preference "
        "heterogeneity); readers (continuation keeps rising with dwell). Default: default",
    )
    parser.add_argument("--control", action="store_true", help="alias of --setting control")
    parser.add_argument(
        "--simulator",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a simulator.config.SimulatorConfig field after the setting, e.g. "
        "dwell_satisfied_s=120 (repeatable; typed by the field)",
    )
    parser.add_argument("--steps", type=int, help="learner steps per policy (overrides the budget)")
    parser.add_argument(
        "--eval-sessions", type=int, help="evaluation sessions per policy (overrides the budget)"
    )
    parser.add_argument(
        "--grid",
        type=str,
        help="comma-separated click weights of the fixed-weight policies, e.g. 0.9,0.5,0.1",
    )
    parser.add_argument("--policies", type=str, help="comma-separated subset of policies to run")
    parser.add_argument(
        "--learner",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a learner.training.PAPERecConfig field for every policy, e.g. grad_normalize=loss "
        "(repeatable; the value is parsed as JSON, else taken as a string)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes (0: min(CPU cores, 2)); results do not depend on it",
    )
    parser.add_argument(
        "--train-seed",
        type=int,
        help="seeds training alone (models, exploration, replay sampling; default: --seed); the world "
        "and the evaluation sessions stay --seed's: runs differing only in it are replicate trainings",
    )
    parser.add_argument("--no-oracle", action="store_true", help="skip the oracle headroom")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["grad_normalize=loss", "gamma=0.5"]`` -> {"grad_normalize": "loss", "gamma": 0.5}.

    A patch of PAPERecConfig fields, not generated ``--learner-*`` flags: each policy of the
    evaluation starts from its own config (strategy, fixed weights, ranker of the simulator), and
    the patch applies to all of them; the policy-defining fields cannot be patched."""
    from learner.training import PAPERecConfig

    return parse_assignments(
        PAPERecConfig, items, "--learner", exclude={"ranker", "seed", "device", "strategy"}
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    # imported here: torch is heavy, and `paperec --help` should stay fast
    from paperec.evaluation.runner import EvaluationSpec, run_evaluation
    from paperec.evaluation.settings import SETTINGS, parse_simulator_overrides

    if args.setting is not None and args.setting not in SETTINGS:
        print(f"error: --setting {args.setting!r}: one of {sorted(SETTINGS)}")
        return 2
    if args.control and args.setting not in (None, "control"):
        print(f"error: --control is --setting control, not --setting {args.setting}")
        return 2
    try:
        overrides = parse_overrides(args.learner)
        simulator = parse_simulator_overrides(args.simulator)
    except ValueError as e:
        print(f"error: {e}")
        return 2
    spec = EvaluationSpec(
        seed=args.seed,
        train_seed=args.train_seed,
        learner_overrides=overrides,
        setting="control" if args.control else (args.setting or "default"),
        simulator_overrides=simulator,
        quick=args.quick,
        grid=tuple(float(x) for x in args.grid.split(",")) if args.grid else None,
        policies=tuple(args.policies.split(",")) if args.policies else None,
        workers=args.workers or min(os.cpu_count() or 1, 2),
        progress=not args.no_progress,
        oracle=not args.no_oracle,
    )
    budget = spec.the_budget()
    if args.steps is not None:
        budget = dataclasses.replace(budget, train_steps=args.steps)
    if args.eval_sessions is not None:
        budget = dataclasses.replace(budget, eval_sessions=args.eval_sessions)
    spec = dataclasses.replace(spec, budget=budget)
    report = run_evaluation(spec, args.out)
    print((args.out / "report.md").read_text())
    print(f"runtime {report['runtime_seconds']} s; wrote {args.out}/report.json, report.md, pareto.png")
    return 0
