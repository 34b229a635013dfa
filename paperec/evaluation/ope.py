"""Validation of the off-policy estimators (:mod:`rollout.ope`) in the simulator: do SNIPS and
DR, from the logs of one exploring weight policy, cover a different target policy's true value?

    paperec evaluate-ope --out runs/ope      # the declared run (about 3 minutes on 2 idle cores)
    paperec evaluate-ope --quick             # seed 0, 1000 lists: a check that it runs
    python -m paperec.evaluation.ope --out runs/ope

Declared before any result (``OPEValidationConfig``): seeds 0, 1, 2 of the default simulator;
log sizes 1000, 4000 and 16000 lists (the first n lists of one log per seed); one ranker for
logging and target, the oracle's scores (``simulator.oracle``: true click probability and
expected dwell, the per-list normalization of serving) at the served weights, since the logged
propensity is of the weights and both policies must share the ranker. Both weight policies are
``model.scoring.ActorModel`` weight generators reading the logged features (``obs="features"``),
explored by ``model.policy`` (the serving draw and its logged log-propensity):

* logging: constant weights (0.5, 0.5) with the learner's default exploration (logit noise 0.1,
  a quarter of the lists uniform on the simplex);
* target: a user-dependent map, click logit minus dwell logit = TARGET_OFFSET - TARGET_SLOPE *
  (the user's observable trade-off proxy), with logit noise 0.3 (readers get the dwell weight).

Two truths per seed, both from the simulator:

* *on-policy*: the target served on sessions of its own stream (``truth_lists`` lists), CTR and
  dwell per impression with a cluster-robust interval by user: the issue's "true on-policy value";
* *logged states*: on every logged list, the target's weights drawn and its ranking shown to the
  same user with response draws of a separate stream (a counterfactual list, the session goes on
  with the logged one): the value the per-list estimators estimate. The two differ by the change
  in which lists arise (e.g. session lengths), which no per-list estimator sees (docs/rollout.md).

Coverage is reported over the declared runs (3 seeds x 3 sizes) and, for more intervals of the
smaller sizes, over the disjoint chunks of each seed's log (16 x 1000 and 4 x 4000 lists).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from base.settings import Settings
from model.featurize import ListView, list_inputs
from model.policy import ActorConfig
from model.scoring import ActorModel, policy_obs, policy_obs_dim
from rollout.ope import (
    OUTCOMES,
    GateConfig,
    LoggedLists,
    OPEResult,
    doubly_robust,
    judge,
    logged_lists,
    on_policy,
    snips,
    target_policy,
)
from schemas import Exploration, ListOutcome
from simulator.behaviour import click_probability, read_fraction, respond
from simulator.config import SimulatorConfig
from simulator.model_policy import set_constant_weights
from simulator.session import ListRequest, ListResult, Ranking, Simulator
from simulator.world import STREAM_BEHAVIOUR, World, stream, user_index

log = logging.getLogger(__name__)

LOG_STREAM, TRUTH_STREAM, SHADOW_STREAM = 4, 5, 6
"""simulator streams of the logs, of the on-policy truth, and of the counterfactual responses
(the evaluation uses 1-3)"""
TARGET_OFFSET, TARGET_SLOPE = 0.0, 2.0
"""the target's click-minus-dwell logit at trade-off proxy p: TARGET_OFFSET - TARGET_SLOPE * p"""


@dataclass(frozen=True)
class OPEValidationConfig:
    """The validation's settings, fixed before any result."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """simulator (and model) seeds: one world, one log and one truth each"""
    log_sizes: tuple[int, ...] = (1000, 4000, 16000)
    """lists the estimators get: the first n lists of the seed's log"""
    truth_lists: int = 64000
    """lists of the target's own sessions for the on-policy truth"""
    logging_weights: tuple[float, ...] = (0.5, 0.5)
    """the logging policy's constant weights (click, dwell)"""
    logging_exploration: Exploration = field(
        default_factory=lambda: Exploration(noise_std=0.1, wide_std=1.0, wide_share=0.0, uniform_share=0.25)
    )
    """the learner's default exploration when the validation was declared and ran (docs/rollout.md);
    the default is half uniform lists since issue 17's second round, a fresh validation may set it"""
    target_exploration: Exploration = field(default_factory=lambda: Exploration(noise_std=0.3))
    """the target's exploration: logit noise only"""
    draws: int = 64
    """DR: target draws per state"""
    parallel: int = 128
    """concurrent simulated sessions"""


# ------------------------------------------------------------------------------------ policies
def logging_model(sim: SimulatorConfig, weights: Sequence[float], seed: int) -> ActorModel:
    """A weight generator with constant ``weights`` (its ranker is unused: the oracle ranks)."""
    model = _features_model(sim, seed)
    set_constant_weights(model.actor, weights)
    return model


@torch.no_grad()
def target_model(sim: SimulatorConfig, seed: int) -> ActorModel:
    """A weight generator whose click-minus-dwell logit is TARGET_OFFSET - TARGET_SLOPE * p, p the
    user's observable trade-off proxy (feature ``n_topics``), set by hand: the first layer passes
    relu(p) and relu(-p), the second copies them, the last combines them (p = relu(p) - relu(-p))."""
    model = _features_model(sim, seed)
    l1, l2, l3 = (m for m in model.actor.net if isinstance(m, torch.nn.Linear))
    for layer in (l1, l2, l3):
        layer.weight.zero_()
        layer.bias.zero_()
    l1.weight[0, sim.n_topics], l1.weight[1, sim.n_topics] = 1.0, -1.0
    l2.weight[0, 0], l2.weight[1, 1] = 1.0, 1.0
    half = TARGET_SLOPE / 2.0
    l3.weight[0, 0], l3.weight[0, 1], l3.weight[1, 0], l3.weight[1, 1] = -half, half, half, -half
    l3.bias[0], l3.bias[1] = TARGET_OFFSET / 2.0, -TARGET_OFFSET / 2.0
    return model


def _features_model(sim: SimulatorConfig, seed: int) -> ActorModel:
    torch.manual_seed(seed)
    ranker = sim.ranker_config()
    actor = ActorConfig(obs="features", obs_dim=policy_obs_dim(ranker, "features"), action_dim=2)
    return ActorModel(ranker, actor).eval()


def oracle_order(world: World, user: int, candidates: np.ndarray, click_weight: float) -> np.ndarray:
    """Candidate positions by the oracle's score at click weight w (``simulator.oracle``)."""
    p = click_probability(world, user, candidates)
    e = (
        p
        * read_fraction(world, user, candidates, np.zeros(len(candidates)))
        * world.items.length_s[candidates]
    )
    score = click_weight * p / p.max() + (1.0 - click_weight) * e / e.max()
    return np.argsort(-score, kind="stable")


class OracleRanked:
    """Weights from ``model``'s generator, explored by ``model.policy`` as serving explores (its
    log-propensity logged); the ranking by the oracle's scores at those weights. With a
    ``shadow`` policy, each list is also answered counterfactually: the shadow's weights, its
    ranking, the same user's response from ``shadow_rng`` (``shadow_outcomes``, by request id)."""

    def __init__(
        self,
        world: World,
        model: ActorModel,
        exploration: Exploration,
        generator: torch.Generator,
        shadow: OracleRanked | None = None,
        shadow_rng: np.random.Generator | None = None,
    ) -> None:
        self.world, self.model, self.exploration, self.generator = world, model, exploration, generator
        self.shadow, self.shadow_rng = shadow, shadow_rng
        self.shadow_outcomes: dict[str, tuple[int, float, int]] = {}  # clicks, dwell s, items shown
        self._item = {f"item-{i}": i for i in range(len(world.items))}

    @torch.no_grad()
    def weights(self, requests: Sequence[ListRequest]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        views = [ListView(r.user_features, r.history, r.context, [], []) for r in requests]
        inputs = list_inputs(views, self.model.ranker.cfg)
        obs = policy_obs(self.model.ranker, "features", inputs.user_feats, inputs.history, inputs.context)
        w, noise, logp = self.model.actor.explore(obs, self.exploration, self.generator)
        w64 = w.double()
        return (w64 / w64.sum(-1, keepdim=True)).numpy(), noise.double().numpy(), logp.numpy()

    def rank(self, requests: Sequence[ListRequest]) -> list[Ranking]:
        weights, noise, logp = self.weights(requests)
        out = []
        for r, w, n, lp in zip(requests, weights, noise, logp, strict=True):
            user, cands = self._user_items(r)
            order = oracle_order(self.world, user, cands, float(w[0]))
            lp_logged = None if np.isnan(lp) else float(lp)
            out.append(
                Ranking(
                    tuple(int(k) for k in order),
                    tuple(w.tolist()),
                    tuple(n.tolist()),
                    log_propensity=lp_logged,
                )
            )
        if self.shadow is not None and self.shadow_rng is not None:
            self._answer_shadow(requests)
        return out

    def _user_items(self, r: ListRequest) -> tuple[int, np.ndarray]:
        return user_index(r.user_id), np.array([self._item[c.item_id] for c in r.candidates])

    def _answer_shadow(self, requests: Sequence[ListRequest]) -> None:
        assert self.shadow is not None and self.shadow_rng is not None
        n_shown = self.world.cfg.list_len
        weights, _, _ = self.shadow.weights(requests)
        for r, w in zip(requests, weights, strict=True):
            user, cands = self._user_items(r)
            shown = cands[oracle_order(self.world, user, cands, float(w[0]))[:n_shown]]
            resp = respond(self.world, user, shown, self.shadow_rng)
            self.shadow_outcomes[r.request_id] = (resp.n_clicks, resp.total_dwell_s, len(shown))


# ------------------------------------------------------------------------------------ runs
def list_outcome(res: ListResult) -> ListOutcome:
    """The list outcome record the streams would join for ``res`` (every feedback in time)."""
    imp, r = res.impression, res.response
    return ListOutcome(
        request_id=imp.request_id,
        user_id=imp.user_id,
        ts_ms=imp.ts_ms,
        closed_at_ms=imp.ts_ms + r.duration_ms,
        impression=imp,
        clicks=tuple(int(c) for c in r.clicks),
        dwell_ms=tuple(int(d) for d in r.dwell_ms),
        complete=True,
    )


def simulate(sim: Simulator, policy: OracleRanked, lists: int, parallel: int) -> list[ListResult]:
    """The first ``lists`` lists of endless random sessions of ``sim``'s stream."""
    out: list[ListResult] = []
    for res in sim.run(policy, sim.endless_sessions(), parallel=parallel):
        out.append(res)
        if len(out) >= lists:
            break
    return out


def session_lists(outcomes: np.ndarray, impressions: np.ndarray, sessions: np.ndarray) -> LoggedLists:
    """Per-list outcomes (n, 2) as :class:`rollout.ope.LoggedLists` for :func:`rollout.ope.on_policy`,
    clustered by simulated session: sessions are the simulator's independent units (a user drawn
    uniformly and its own luck), so a truth's interval is over sessions, not users."""
    n = len(impressions)
    return LoggedLists(
        outcomes=outcomes.reshape(n, 2),
        impressions=impressions.astype(np.float64),
        weights=np.zeros((n, 2)),
        log_propensity=np.full(n, np.nan),
        state=np.zeros((n, 0)),
        clusters=sessions.astype(np.int64),
    )


def result_lists(results: Sequence[ListResult]) -> LoggedLists:
    """The simulated lists' own outcomes, clustered by session."""
    return session_lists(
        np.array([[r.response.n_clicks, r.response.total_dwell_s] for r in results], dtype=np.float64),
        np.array([len(r.impression.items) for r in results]),
        np.array([r.session for r in results]),
    )


def _interval(res: OPEResult, j: str) -> dict[str, float]:
    e = res.values[j]
    return {"value": e.value, "lo": e.lo, "hi": e.hi, "se": e.se}


def validate_seed(cfg: OPEValidationConfig, seed: int) -> dict[str, Any]:
    """One seed: the log (with counterfactual target lists), the on-policy truth, the estimates."""
    t0 = time.perf_counter()
    sim_cfg = SimulatorConfig(seed=seed)
    world = World.build(sim_cfg)
    logging_m = logging_model(sim_cfg, cfg.logging_weights, seed)
    target_m = target_model(sim_cfg, seed)
    n_log = max(cfg.log_sizes)
    shadow = OracleRanked(world, target_m, cfg.target_exploration, torch.Generator().manual_seed(seed + 1000))
    logger = OracleRanked(
        world,
        logging_m,
        cfg.logging_exploration,
        torch.Generator().manual_seed(seed),
        shadow=shadow,
        shadow_rng=stream(seed, STREAM_BEHAVIOUR, SHADOW_STREAM),
    )
    logs = simulate(Simulator(sim_cfg, world, stream_id=LOG_STREAM), logger, n_log, cfg.parallel)
    t_log = time.perf_counter() - t0
    on_target = OracleRanked(
        world, target_m, cfg.target_exploration, torch.Generator().manual_seed(seed + 2000)
    )
    truth_runs = simulate(
        Simulator(sim_cfg, world, stream_id=TRUTH_STREAM), on_target, cfg.truth_lists, cfg.parallel
    )
    truth = on_policy(result_lists(truth_runs))
    t_truth = time.perf_counter() - t0 - t_log
    outcomes = [list_outcome(r) for r in logs]
    counterfactual = np.array(
        [logger.shadow_outcomes[r.impression.request_id] for r in logs], dtype=np.float64
    )  # (n, 3): clicks, dwell s, items shown
    sessions = np.array([r.session for r in logs])
    states_truth_all = on_policy(session_lists(counterfactual[:, :2], counterfactual[:, 2], sessions))
    runs: list[dict[str, Any]] = []
    for n, start in _chunks(cfg.log_sizes, n_log):
        logged = logged_lists(outcomes[start : start + n])
        target = target_policy(target_m, cfg.target_exploration, logged.records)
        cf = counterfactual[start : start + n]
        states_truth = cf[:, :2].sum(0) / cf[:, 2].sum()
        estimates = {
            "snips": snips(logged, target.log_density(logged.weights)),
            "dr": doubly_robust(logged, target, draws=cfg.draws, seed=seed),
        }
        logging_value = on_policy(logged)
        for name, res in estimates.items():
            for k, j in enumerate(OUTCOMES):
                runs.append(
                    {
                        "seed": seed,
                        "n": n,
                        "start": start,
                        "declared": start == 0,
                        "estimator": name,
                        "objective": j,
                        "ess": res.ess,
                        **_interval(res, j),
                        "truth_on_policy": truth.values[j].value,
                        "truth_logged_states": float(states_truth[k]),
                        "logging_value": logging_value.values[j].value,
                    }
                )
    # the gate's verdict on the target at the largest size (its guard-rail at the default 5%)
    full = logged_lists(outcomes)
    verdict = judge(full, target_policy(target_m, cfg.target_exploration, full.records), GateConfig())
    return {
        "seed": seed,
        "truth_on_policy": {j: _interval(truth, j) for j in OUTCOMES},
        "truth_lists": len(truth_runs),
        "truth_logged_states": {j: _interval(states_truth_all, j) for j in OUTCOMES},
        "logging_on_policy": {j: _interval(on_policy(result_lists(logs)), j) for j in OUTCOMES},
        "gate": {"ok": verdict.ok, "reason": verdict.reason, "evidence": verdict.evidence},
        "runs": runs,
        "seconds": {"log": t_log, "truth": t_truth, "total": time.perf_counter() - t0},
    }


def _chunks(sizes: Sequence[int], total: int) -> list[tuple[int, int]]:
    """(n, start) of every disjoint chunk of each size in a log of ``total`` lists (start 0 first)."""
    return [(n, start) for n in sorted(sizes) for start in range(0, total - n + 1, n)]


# ------------------------------------------------------------------------------------ summary
def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per estimator, objective and size: mean bias and |bias| (vs both truths), mean interval
    half-width, coverage over the declared runs and over all disjoint chunks."""
    rows = []
    keys = sorted({(r["estimator"], r["objective"], r["n"]) for r in runs}, key=lambda k: (k[1], k[0], k[2]))
    for est, obj, n in keys:
        sel = [r for r in runs if (r["estimator"], r["objective"], r["n"]) == (est, obj, n)]
        declared = [r for r in sel if r["declared"]]

        def covered(rs: Sequence[dict[str, Any]], truth: str) -> float:
            return float(np.mean([r["lo"] <= r[truth] <= r["hi"] for r in rs]))

        rows.append(
            {
                "estimator": est,
                "objective": obj,
                "n": n,
                "chunks": len(sel),
                "declared": len(declared),
                "mean_ess": float(np.mean([r["ess"] for r in sel])),
                "bias_on_policy": float(np.mean([r["value"] - r["truth_on_policy"] for r in declared])),
                "bias_logged_states": float(
                    np.mean([r["value"] - r["truth_logged_states"] for r in declared])
                ),
                "abs_bias_on_policy": float(
                    np.mean([abs(r["value"] - r["truth_on_policy"]) for r in declared])
                ),
                "half_width": float(np.mean([(r["hi"] - r["lo"]) / 2 for r in declared])),
                "coverage_declared_on_policy": covered(declared, "truth_on_policy"),
                "coverage_declared_logged_states": covered(declared, "truth_logged_states"),
                "coverage_chunks_on_policy": covered(sel, "truth_on_policy"),
                "coverage_chunks_logged_states": covered(sel, "truth_logged_states"),
            }
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| seed | objective | target on-policy | target on the logged states | logging policy |",
        "|---|---|---|---|---|",
    ]
    digits = {"click": 4, "dwell": 3}
    n_seeds = len(report["seeds"])
    for s in report["seeds"]:
        for j, d in digits.items():
            cells = [
                _ci(s[key][j], d) for key in ("truth_on_policy", "truth_logged_states", "logging_on_policy")
            ]
            lines.append(f"| {s['seed']} | {j} | {' | '.join(cells)} |")
    lines += [
        "",
        "| objective | estimator | lists | mean ESS | bias vs on-policy | bias vs logged states | "
        f"half-width | covers on-policy ({n_seeds} seeds) | covers logged states ({n_seeds} seeds) | "
        "covers on-policy (chunks) | covers logged states (chunks) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["summary"]:
        d = digits[r["objective"]]
        lines.append(
            f"| {r['objective']} | {r['estimator']} | {r['n']} | {r['mean_ess']:.0f} | "
            f"{r['bias_on_policy']:+.{d}f} | {r['bias_logged_states']:+.{d}f} | {r['half_width']:.{d}f} | "
            f"{_share(r['coverage_declared_on_policy'], r['declared'])} | "
            f"{_share(r['coverage_declared_logged_states'], r['declared'])} | "
            f"{_share(r['coverage_chunks_on_policy'], r['chunks'])} | "
            f"{_share(r['coverage_chunks_logged_states'], r['chunks'])} |"
        )
    lines.append("")
    for s in report["seeds"]:
        verdict = "passed" if s["gate"]["ok"] else "rejected"
        lines.append(f"- seed {s['seed']}, the gate on the target ({verdict}): {s['gate']['reason']}")
    lines.append("")
    lines.append(f"Runtime: {report['runtime_seconds']:.0f} s ({report['threads']} torch threads).")
    return "\n".join(lines) + "\n"


def _ci(e: dict[str, float], d: int) -> str:
    return f"{e['value']:.{d}f} [{e['lo']:.{d}f}, {e['hi']:.{d}f}]"


def _share(p: float, of: int) -> str:
    return f"{round(p * of)}/{of}"


def run_validation(cfg: OPEValidationConfig, out_dir: Path | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    seeds = []
    for seed in cfg.seeds:
        seeds.append(validate_seed(cfg, seed))
        log.info("ope validation: seed %d done, %.0f s", seed, seeds[-1]["seconds"]["total"])
    runs = [r for s in seeds for r in s["runs"]]
    report = {
        "config": {**asdict(cfg), "target_offset": TARGET_OFFSET, "target_slope": TARGET_SLOPE},
        "seeds": seeds,
        "summary": summarize(runs),
        "runtime_seconds": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "ope.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (out_dir / "ope.md").write_text(markdown(report))
        log.info("wrote %s/ope.json and ope.md", out_dir)
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="write ope.json and ope.md to this directory")
    parser.add_argument(
        "--quick", action="store_true", help="seed 0, 1000 lists, 4000 truth lists: a check that it runs"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    torch.set_num_threads(1)  # tiny networks: one thread is fastest, and the machine is shared
    cfg = OPEValidationConfig()
    if args.quick:
        cfg = OPEValidationConfig(seeds=(0,), log_sizes=(1000,), truth_lists=4000)
    print(markdown(run_validation(cfg, args.out)), end="")
    return 0


if __name__ == "__main__":
    import sys

    from base import command
    from paperec.evaluation import ope

    sys.exit(
        command.main("python -m paperec.evaluation.ope", ope, description=(__doc__ or "").split("\n\n")[0])
    )
