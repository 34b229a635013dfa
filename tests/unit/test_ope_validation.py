"""The OPE validation in the simulator (paperec/evaluation/ope.py), tiny: the hand-set target map,
the gate on list outcome records, and one small seeded validation whose intervals must cover."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model.scoring import ActorModel
from paperec.evaluation.ope import (
    LOG_STREAM,
    OPEValidationConfig,
    OracleRanked,
    list_outcome,
    logging_model,
    markdown,
    run_validation,
    simulate,
    target_model,
)
from rollout.ope import GateConfig, gate, logged_lists, target_policy
from schemas import ListOutcome
from simulator import Simulator, SimulatorConfig, World

CFG = OPEValidationConfig()


def test_target_map_gives_readers_the_dwell_weight() -> None:
    sim = SimulatorConfig(seed=0)
    model = target_model(sim, seed=0)
    obs = torch.zeros(3, sim.user_dim + sim.context_dim)
    obs[:, sim.n_topics] = torch.tensor([-1.0, 0.0, 1.0])  # click seeker, neutral, reader
    z = model.actor.net(obs).detach()
    assert torch.allclose(z[:, 0] - z[:, 1], torch.tensor([2.0, 0.0, -2.0]))
    w = model.actor(obs).detach()[:, 0]
    assert w[0] > 0.85 and abs(float(w[1]) - 0.5) < 1e-6 and w[2] < 0.15


def _records(n: int, seed: int = 0) -> tuple[list[ListOutcome], ActorModel]:
    sim = SimulatorConfig(seed=seed)
    world = World.build(sim)
    model = logging_model(sim, CFG.logging_weights, seed)
    policy = OracleRanked(world, model, CFG.logging_exploration, torch.Generator().manual_seed(seed))
    results = simulate(Simulator(sim, world, stream_id=LOG_STREAM), policy, n, parallel=64)
    return [list_outcome(r) for r in results], model


def test_gate_on_records_of_the_incumbent_itself() -> None:
    outcomes, model = _records(800)
    cfg = GateConfig(min_lists=500, min_ess=100)
    verdict = gate(model, CFG.logging_exploration, outcomes, cfg)
    e = verdict.evidence
    assert verdict.ok and "passed" in verdict.reason
    assert e["ope.lists"] == 800 and e["ope.point_mass_lists"] == 0 and e["ope.ess"] == pytest.approx(800)
    for j in ("click", "dwell"):
        assert e[f"ope.{j}.rel_snips"] == pytest.approx(0.0, abs=1e-6)  # float32 serving logits
        assert e[f"ope.{j}.rel_dr_lo"] < e[f"ope.{j}.rel_dr"] < e[f"ope.{j}.rel_dr_hi"]
    few = gate(model, CFG.logging_exploration, outcomes[:100], cfg)
    assert few.ok and "not judged" in few.reason and few.evidence["ope.lists"] == 100


def test_gate_skips_records_it_cannot_read_and_never_raises() -> None:
    outcomes, _ = _records(600)
    odd = dataclasses.replace(
        outcomes[5], impression=dataclasses.replace(outcomes[5].impression, user_features=(0.0,))
    )
    logged = logged_lists([odd, *outcomes])
    assert len(logged) == 600 and odd.impression not in logged.records  # unlike most: skipped
    assert len(logged_lists([])) == 0
    empty = gate(target_model(SimulatorConfig(seed=0), 0), CFG.target_exploration, [], GateConfig())
    assert empty.ok and "not judged" in empty.reason
    # a candidate whose features differ from the logs cannot be estimated: left to the canary
    other = SimulatorConfig(seed=0, n_topics=4)
    verdict = gate(target_model(other, 0), CFG.target_exploration, outcomes, GateConfig(min_lists=100))
    assert verdict.ok and "not judged" in verdict.reason and "user_features" in verdict.reason


def test_target_logits_from_records_match_the_served_map() -> None:
    outcomes, _ = _records(200)
    model = target_model(SimulatorConfig(seed=0), seed=0)
    target = target_policy(model, CFG.target_exploration, [o.impression for o in outcomes])
    proxy = np.array([o.impression.user_features[SimulatorConfig().n_topics] for o in outcomes])
    assert np.allclose((target.logits[:, 0] - target.logits[:, 1]).numpy(), -2.0 * proxy, atol=1e-5)


def test_a_small_validation_covers_both_truths() -> None:
    cfg = OPEValidationConfig(seeds=(0,), log_sizes=(2000,), truth_lists=6000)
    report = run_validation(cfg)
    runs = report["seeds"][0]["runs"]
    assert {(r["estimator"], r["objective"]) for r in runs} == {
        (e, j) for e in ("snips", "dr") for j in ("click", "dwell")
    }
    for r in runs:
        assert r["lo"] <= r["truth_on_policy"] <= r["hi"], r
        assert r["lo"] <= r["truth_logged_states"] <= r["hi"], r
        assert r["ess"] < r["n"] / 5  # a different policy: the estimates rest on few lists
    seed = report["seeds"][0]
    # the target is not the logging policy: its true dwell per impression is lower
    assert seed["truth_on_policy"]["dwell"]["hi"] < seed["logging_on_policy"]["dwell"]["value"]
    text = markdown(report)
    assert "| dwell | dr | 2000 |" in text and "gate on the target" in text
