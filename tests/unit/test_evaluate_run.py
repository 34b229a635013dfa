"""The evaluation harness with tiny budgets: serving models, replay buffer, one whole run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.featurize import ListView, list_inputs, transition_batch
from model.policy import Actor, ActorConfig
from paperec.evaluation.buffer import TensorReplay
from paperec.evaluation.contenders import Contender, default_specs
from paperec.evaluation.online import Budget
from paperec.evaluation.runner import EvaluationSpec, run_evaluation
from simulator import Simulator, SimulatorConfig, TransitionLinker
from simulator.model_policy import set_constant_weights

SIM = SimulatorConfig(n_users=40, n_items=200, seed=2)
TINY_BUDGET = Budget(
    train_steps=3, lists_per_step=8, warmup_lists=32, batch_size=16, buffer_size=256, parallel=8,
    eval_sessions=12, eval_parallel=12,
)  # fmt: skip


def test_constant_weight_actor() -> None:
    actor = Actor(ActorConfig(obs_dim=4, action_dim=3, hidden=8))
    set_constant_weights(actor, (0.2, 0.3, 0.5))
    out = actor(torch.randn(5, 4))
    assert torch.allclose(out, torch.tensor([0.2, 0.3, 0.5]).expand(5, 3), atol=1e-6)
    set_constant_weights(actor, (1.0, 0.0, 0.0))
    assert actor(torch.randn(1, 4))[0, 0].item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        set_constant_weights(actor, (1.0, 0.0))


def test_ranker_config_fits_the_simulator_and_policies_rank() -> None:
    rcfg = SIM.ranker_config()
    from learner.training import PAPERecConfig

    learner = PAPERecConfig(ranker=rcfg, device="cpu")
    for spec in default_specs((0.5,))[::2]:  # ctr_only, dwell_only, peltr_running, paperec_engagement
        contender = Contender(spec, learner)
        sim = Simulator(SIM)
        results = list(
            sim.run(contender.policy(0.1, torch.Generator().manual_seed(0)), sim.random_sessions(2))
        )
        for r in results:
            w = r.impression.weights
            assert abs(sum(w) - 1) < 1e-9
            if spec.weights is not None:
                assert w == pytest.approx(spec.weights, abs=0.15)  # noise in logit space


def test_model_policy_ranks_by_the_serving_score() -> None:
    from learner.training import PAPERecConfig
    from model.scoring import score

    contender = Contender(default_specs(())[-1], PAPERecConfig(ranker=SIM.ranker_config(), device="cpu"))
    sim = Simulator(SIM)
    req = sim.request(sim.start(sim.random_session(0)))
    ranking = contender.policy(0.0, None).rank([req])[0]
    view = ListView(req.user_features, req.history, req.context, [c.item_id for c in req.candidates],
                    [c.features for c in req.candidates])  # fmt: skip
    scores = score(contender.model, list_inputs([view], contender.model.ranker.cfg)).scores[0]
    assert list(ranking.order) == torch.argsort(scores, descending=True, stable=True).tolist()


def test_tensor_replay_matches_transition_batch() -> None:
    sim = Simulator(SIM)
    linker, transitions = TransitionLinker(), []
    from simulator import RandomPolicy

    for r in sim.run(RandomPolicy(), sim.random_sessions(10)):
        transitions.extend(linker.add(r))
    rcfg = SIM.ranker_config()
    buf = TensorReplay(capacity=len(transitions), cfg=rcfg, list_len=SIM.list_len)
    buf.add(transitions[:5])
    buf.add(transitions[5:])
    assert len(buf) == len(transitions)
    ref = transition_batch(transitions, rcfg)
    stored = buf.rows(torch.arange(len(transitions)))
    for name in ref.__dataclass_fields__:
        assert torch.equal(getattr(stored, name), getattr(ref, name)), name
    assert buf.sample(8, np.random.default_rng(0)).batch_size == 8
    # transitions: consecutive lists of a session, done exactly at its end
    assert sum(t.done for t in transitions) == 10 and len(linker) == 0


def test_tiny_evaluation_writes_a_complete_report(tmp_path: Path) -> None:
    names = {"ctr_only", "fixed_0.50", "dwell_only", "peltr", "paperec_pareto", "paperec_hybrid"}
    spec = EvaluationSpec(seed=1, simulator=SIM, budget=TINY_BUDGET, grid=(0.5,), workers=1, progress=False,
                          policies=tuple(names), simulator_overrides={"dwell_satisfied_s": 90.0})  # fmt: skip
    report = run_evaluation(spec, tmp_path)
    for name in ("report.json", "report.md", "pareto.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved["policies"]) == names
    totals = ("clicks_per_session", "dwell_s_per_session", "lists_per_session", "engagement_per_session")
    for p in saved["policies"].values():
        for key in ("ctr", "dwell_per_impression_s", "hypervolume", *totals):
            lo, hi = p[key]["ci95"]
            assert lo <= p[key]["value"] <= hi or np.isclose(lo, hi)
        assert p["sessions"] == TINY_BUDGET.eval_sessions
        assert (p["matched"] is not None) == p["personalized"]
    assert saved["policies"]["ctr_only"]["weight_preference_correlation"] is None  # global weights
    assert saved["policies"]["ctr_only"]["reward_probe"] is None  # no weight generator to probe
    for mode in ("pareto", "hybrid"):
        probe = saved["policies"][f"paperec_{mode}"]["reward_probe"]
        assert probe["lists"] > 0 and "generator_vs_optimum" in probe and probe["mode"] == mode
        assert f"paperec_{mode}_vs_peltr" in saved["summary"]
        # paired by session against every global-weight contender, and the matched mean weight
        assert set(saved["paired"][f"paperec_{mode}"]) == names - {"paperec_pareto", "paperec_hybrid"}
        assert set(saved["terciles"][f"paperec_{mode}"]["groups"]) <= {"click-seekers", "middle", "readers"}
        assert f"paperec_{mode}" in saved["headroom"]["captured_share"]
    assert "largest_hypervolume" in saved["summary"] and saved["fixed_weight_front"]["members"]
    assert report["setting"] == "default" and saved["budget"]["train_steps"] == 3
    assert saved["simulator_overrides"] == {"dwell_satisfied_s": 90.0}
    assert saved["simulator"]["dwell_satisfied_s"] == 90.0 and saved["simulator"]["seed"] == 1
    md = (tmp_path / "report.md").read_text()
    assert "| paperec_hybrid |" in md and "Achieved half-width of paperec_hybrid - peltr" in md


def test_control_run_has_no_preference_correlation(tmp_path: Path) -> None:
    spec = EvaluationSpec(seed=1, setting="control", simulator=SIM, budget=TINY_BUDGET, progress=False,
                          policies=("paperec_pareto",), oracle=False)  # fmt: skip
    report = run_evaluation(spec, None)
    assert report["setting"] == "control" and report["simulator"]["heterogeneous"] is False
    assert report["policies"]["paperec_pareto"]["weight_preference_correlation"] is None
    assert report["terciles"]["paperec_pareto"]["cuts"] is None  # constant alpha: no terciles
    assert report["headroom"] is None


def test_contender_state_dict_round_trip() -> None:
    from learner.training import PAPERecConfig
    from model.batch import ListBatch

    learner = PAPERecConfig(ranker=SIM.ranker_config(), device="cpu")
    peltr = next(s for s in default_specs(()) if s.name == "peltr")
    a, b = Contender(peltr, learner), Contender(peltr, learner)
    a.step(ListBatch.synthetic(learner.ranker, 8, torch.Generator().manual_seed(0)))
    b.load_state_dict(a.state_dict())
    assert b.serving_weights == a.serving_weights != (0.5, 0.5)
    x = torch.randn(1, learner.ranker.d_model)
    assert torch.allclose(b.model.actor(x), a.model.actor(x))
    for pa, pb in zip(a.trainer.ranker.parameters(), b.trainer.ranker.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_summary_of_reports(tmp_path: Path) -> None:
    from paperec.evaluation.summary import summarize

    spec = EvaluationSpec(
        seed=1, simulator=SIM, budget=TINY_BUDGET, progress=False, policies=("peltr", "paperec_engagement")
    )
    table = summarize([run_evaluation(spec, None)])
    assert "| default | 1 | paperec_engagement |" in table  # per-session totals
    assert "| default | 1 | paperec_engagement @ matched weight |" in table
    assert "| default | 1 | paperec_engagement | engagement |" in table  # the reward probe
    for title in ("Paired differences vs PE-LTR", "per preference tercile", "Oracle headroom"):
        assert title in table


def test_a_train_seed_replicates_training_on_the_same_world() -> None:
    """--train-seed reseeds training alone: the default is --seed (the same run), another value a
    replicate training of every policy on the same simulated world and evaluation sessions."""
    base = EvaluationSpec(
        seed=1, simulator=SIM, budget=TINY_BUDGET, progress=False, policies=("fixed_0.50",), oracle=False
    )

    def outcome(report: dict[str, Any]) -> tuple[float, float]:
        p = report["policies"]["fixed_0.50"]
        return p["clicks_per_session"]["value"], p["dwell_s_per_session"]["value"]

    default = run_evaluation(base, None)
    same = run_evaluation(dataclasses.replace(base, train_seed=1), None)
    other = run_evaluation(dataclasses.replace(base, train_seed=5), None)
    assert (default["train_seed"], default["learner"]["seed"]) == (1, 1)
    assert outcome(same) == outcome(default)
    assert (other["train_seed"], other["learner"]["seed"], other["simulator"]["seed"]) == (5, 5, 1)
    assert outcome(other) != outcome(default)


def test_learner_overrides_are_parsed_by_field_type() -> None:
    from paperec.evaluate import parse_overrides

    parsed = parse_overrides(
        [
            "list_scaled_reward=False",
            "counterfactual_actions=0",
            "grad_normalize=loss",
            "fixed_weights=[0.3,0.7]",
        ]
    )
    assert parsed == {
        "list_scaled_reward": False,  # not the (truthy) string "False"
        "counterfactual_actions": 0,
        "grad_normalize": "loss",
        "fixed_weights": (0.3, 0.7),
    }
    for bad in ("list_scaled_reward=maybe", "no_such_field=1", "gamma"):
        with pytest.raises(ValueError):
            parse_overrides([bad])


def test_peltr_runs_as_published_and_with_the_running_scale() -> None:
    specs = {s.name: s for s in default_specs((0.5,))}
    cfg = EvaluationSpec(seed=0, learner_overrides={"grad_normalize": "l2"}).learner_config()
    published = Contender(specs["peltr"], cfg).trainer.cfg
    running = Contender(specs["peltr_running"], cfg).trainer.cfg
    assert (published.strategy, published.grad_normalize) == ("peltr", "none")  # whatever --learner says
    assert (running.strategy, running.grad_normalize) == ("peltr", "running")
    assert Contender(specs["paperec_pareto"], cfg).trainer.cfg.grad_normalize == "l2"
    assert {m: Contender(specs[f"paperec_{m}"], cfg).trainer.cfg.reward for m in ("pareto", "hybrid")} == {
        "pareto": "pareto",
        "hybrid": "hybrid",
    }
