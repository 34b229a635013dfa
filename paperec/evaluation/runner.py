"""One evaluation run: every contender trained and evaluated on the same simulator with the
same budget and seeds, the oracle headroom on the same evaluation sessions, then the report.
Contenders and the oracle are independent (each a pure function of the run's settings), so they
can run in worker processes; results do not depend on the count.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import logging
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from learner.training import PAPERecConfig
from model.config import config_to_dict
from paperec.evaluation.contenders import Contender, PolicySpec, default_specs
from paperec.evaluation.headroom import Engagement, OracleData, oracle_headroom
from paperec.evaluation.online import Budget, EvalData, run_contender
from paperec.evaluation.report import build_report, markdown, plot
from paperec.evaluation.settings import simulator_config
from simulator.config import SimulatorConfig
from simulator.world import World

log = logging.getLogger(__name__)

QUICK_BUDGET = Budget(
    train_steps=150, lists_per_step=16, warmup_lists=256, eval_sessions=600, eval_parallel=128
)
FULL_BUDGET = Budget()
QUICK_GRID = (0.75, 0.5, 0.25)
FULL_GRID = (0.9, 0.7, 0.5, 0.3, 0.1)


@dataclass(frozen=True)
class EvaluationSpec:
    seed: int = 0
    setting: str = "default"  # paperec.evaluation.settings.SETTINGS
    simulator_overrides: dict[str, Any] = field(default_factory=dict)  # fields, applied after the setting
    quick: bool = False
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    budget: Budget | None = None  # default: QUICK_BUDGET or FULL_BUDGET
    grid: tuple[float, ...] | None = None  # click weights of the fixed-weight policies
    learner_overrides: dict[str, Any] = field(default_factory=dict)
    policies: tuple[str, ...] | None = None  # run only these (by name); None = all
    workers: int = 1
    threads: int = 1  # torch threads per process (tiny models: 1 is fastest)
    progress: bool = True
    oracle: bool = True  # the oracle headroom on the evaluation sessions
    train_seed: int | None = None
    """seeds what training draws (the models' init and per-step randomness, the exploration, the
    replay sampling); None = ``seed``. The world and its sessions stay ``seed``'s: runs that differ
    only in it are replicate trainings evaluated on the same sessions (the training's own noise)"""

    def training_seed(self) -> int:
        return self.seed if self.train_seed is None else self.train_seed

    def simulator_config(self) -> SimulatorConfig:
        base = self.simulator.replace(seed=self.seed)
        return simulator_config(base, self.setting, self.simulator_overrides)

    def engagement(self) -> Engagement:
        cfg = self.learner_config()
        return Engagement(cfg.engagement_click_scale, cfg.engagement_dwell_scale_s)

    def the_budget(self) -> Budget:
        return self.budget or (QUICK_BUDGET if self.quick else FULL_BUDGET)

    def learner_config(self) -> PAPERecConfig:
        ranker = self.simulator_config().ranker_config()
        return PAPERecConfig(ranker=ranker, seed=self.training_seed(), device="cpu", **self.learner_overrides)

    def specs(self) -> list[PolicySpec]:
        grid = self.grid if self.grid is not None else (QUICK_GRID if self.quick else FULL_GRID)
        specs = default_specs(grid)
        if self.policies is not None:
            unknown = set(self.policies) - {s.name for s in specs}
            if unknown:
                raise ValueError(f"unknown policies {sorted(unknown)}; known: {[s.name for s in specs]}")
            specs = [s for s in specs if s.name in self.policies]
        return specs


def _run_one(
    spec: EvaluationSpec, policy: PolicySpec, progress: bool, log_level: int | None = None
) -> EvalData:
    if log_level is not None and not logging.getLogger().handlers:  # a spawned worker: log like the parent
        logging.basicConfig(
            level=log_level, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
        )
    torch.set_num_threads(spec.threads)
    world = World.build(spec.simulator_config())
    contender = Contender(policy, spec.learner_config())
    return run_contender(contender, world, spec.the_budget(), spec.training_seed(), progress)


def _run_oracle(spec: EvaluationSpec) -> OracleData:
    world = World.build(spec.simulator_config())
    return oracle_headroom(world, spec.the_budget().eval_sessions, spec.engagement())


def run_evaluation(spec: EvaluationSpec, out_dir: Path | None = None) -> dict[str, Any]:
    """Train and evaluate every contender and the oracle; write report.json, report.md,
    pareto.png to out_dir."""
    t0 = time.perf_counter()
    sim_cfg = spec.simulator_config()
    specs = spec.specs()
    log.info(
        "evaluation: seed %d, %s simulator (overrides %s), %d policies, %d workers",
        spec.seed,
        spec.setting,
        spec.simulator_overrides or "none",
        len(specs),
        spec.workers,
    )
    results: dict[str, EvalData] = {}
    oracle: OracleData | None = None
    if spec.workers <= 1:
        for p in tqdm(specs, desc="policies", disable=not spec.progress):
            results[p.name] = _run_one(spec, p, spec.progress)
        oracle = _run_oracle(spec) if spec.oracle else None
    else:
        ctx = mp.get_context("spawn")  # no fork after torch has started its threads
        with cf.ProcessPoolExecutor(max_workers=spec.workers, mp_context=ctx) as pool:
            level = logging.getLogger().getEffectiveLevel()
            futures: dict[cf.Future[Any], str] = {
                pool.submit(_run_one, spec, p, False, level): p.name for p in specs
            }
            if spec.oracle:
                futures[pool.submit(_run_oracle, spec)] = "oracle"
            bar = tqdm(
                cf.as_completed(futures), total=len(futures), desc="policies", disable=not spec.progress
            )
            for fut in bar:
                if futures[fut] == "oracle":
                    oracle = fut.result()
                else:
                    results[futures[fut]] = fut.result()
                bar.set_postfix_str(futures[fut])
    world = World.build(sim_cfg)
    objectives = tuple(spec.learner_config().ranker.objectives)
    report = build_report(specs, results, world.users.alpha, objectives, spec.seed, spec.engagement(), oracle)
    report.update(
        setting=spec.setting,
        simulator_overrides=spec.simulator_overrides,
        quick=spec.quick,
        simulator=sim_cfg.to_dict(),
        budget=dataclasses.asdict(spec.the_budget()),
        learner=config_to_dict(spec.learner_config()),
        workers=spec.workers,
        train_seed=spec.training_seed(),
        runtime_seconds=round(time.perf_counter() - t0, 1),
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / "report.md").write_text(markdown(report))
        plot(report, out_dir / "pareto.png")
        log.info("wrote %s/report.json, report.md, pareto.png", out_dir)
    return report
