"""Issue 17's evaluation: declared settings, --simulator, paired statistics, the matched mean
weight policy, the vectorized oracle and its headroom, and the CLI end to end (tiny budgets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from learner.training import PAPERecConfig
from paperec.evaluation import paired
from paperec.evaluation.contenders import Contender, default_specs
from paperec.evaluation.headroom import GLOBAL_GRID, MAP_OFFSETS, MAP_SLOPES, Engagement, oracle_headroom
from paperec.evaluation.settings import SETTINGS, parse_simulator_overrides, simulator_config
from paperec.evaluation.stats import PairedBootstrap, p_dominates, paired_diff
from simulator import Simulator, SimulatorConfig, World
from simulator.oracle import OraclePolicy, OracleSessions

SIM = SimulatorConfig(n_users=40, n_items=200, seed=2)


# ---------------------------------------------------------------- settings and --simulator
def test_settings_are_declared_and_overrides_come_after() -> None:
    base = SimulatorConfig(seed=3)
    assert set(SETTINGS) == {"default", "control", "readers"}
    assert simulator_config(base, "default") == base
    assert simulator_config(base, "control") == base.control()
    readers = simulator_config(base, "readers")
    assert readers == base.replace(dwell_satisfied_s=300.0)
    # an override wins over the setting
    assert simulator_config(base, "readers", {"dwell_satisfied_s": 120.0}).dwell_satisfied_s == 120.0
    with pytest.raises(ValueError, match="unknown setting"):
        simulator_config(base, "nope")


def test_simulator_overrides_are_typed_by_field() -> None:
    parsed = parse_simulator_overrides(["dwell_satisfied_s=300", "n_users=100", "heterogeneous=false"])
    assert parsed == {"dwell_satisfied_s": 300.0, "n_users": 100, "heterogeneous": False}
    assert isinstance(parsed["dwell_satisfied_s"], float) and isinstance(parsed["n_users"], int)
    with pytest.raises(ValueError, match="no_such_field"):
        parse_simulator_overrides(["no_such_field=1"])
    for bad in ("n_users=1.5", "n_users=many", "dwell_satisfied_s=long", "heterogeneous=1", "seed=4"):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            parse_simulator_overrides([bad])
    with pytest.raises(ValueError, match="list_len"):  # validated as a whole config
        parse_simulator_overrides(["list_len=50"])


# ---------------------------------------------------------------- paired statistics
def _sessions(n: int, shift: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Session outcomes of two policies on the same sessions: a large per-session component
    (user and luck) shared by both, a small own noise, and a known mean difference ``shift``."""
    shared = rng.gamma(2.0, 5.0, n)  # sd ~ 7
    return shared + shift + rng.normal(0.0, 1.0, n), shared + rng.normal(0.0, 1.0, n)


def test_paired_difference_covers_the_truth_and_shrinks_like_one_over_sqrt_n() -> None:
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    for rep in range(40):
        a, b = _sessions(1000, 0.3, rng)
        diff, _ = paired_diff(a, b, PairedBootstrap(1000, 400, seed=rep))
        covered += diff.diff.lo <= 0.3 <= diff.diff.hi
        widths.append(diff.half_width)
    assert 34 <= covered <= 40  # nominal 95%: 38 of 40
    # half-width ~ 1.96 sd(a - b) / sqrt(n), sd(a - b) = sqrt(2)
    assert np.mean(widths) == pytest.approx(1.96 * np.sqrt(2.0 / 1000), rel=0.1)
    a4, b4 = _sessions(4000, 0.3, rng)
    quarter, _ = paired_diff(a4, b4, PairedBootstrap(4000, 400, seed=99))
    assert quarter.half_width / np.mean(widths) == pytest.approx(0.5, abs=0.08)
    # pairing is what gives the power: unpaired, the shared sd ~7 would enter
    unpaired = 1.96 * np.sqrt((a4.var() + b4.var()) / 4000)
    assert quarter.half_width < unpaired / 3
    assert quarter.to_dict()["half_width_pct_of_comparator"] == pytest.approx(
        100 * quarter.half_width / b4.mean()
    )


def test_subgroup_difference_and_dominance() -> None:
    rng = np.random.default_rng(1)
    a, b = _sessions(3000, 0.0, rng)
    group = rng.random(3000) < 0.3
    a = a + np.where(group, 2.0, 0.0)  # only the subgroup gains
    boot = PairedBootstrap(3000, 500, seed=0)
    inside, _ = paired_diff(a, b, boot, group)
    outside, _ = paired_diff(a, b, boot, ~group)
    assert inside.diff.value == pytest.approx((a - b)[group].mean())
    assert inside.diff.lo > 1.5 and outside.diff.lo < 0 < outside.diff.hi
    # P(dominates): both >= 0 and one > 0 in a resample
    assert p_dominates(np.array([[1.0, 1.0], [1.0, -1.0], [0.0, 0.0], [0.0, 1.0]])) == 0.5
    _, better = paired_diff(a + 1.0, b, boot)
    _, worse = paired_diff(a - 1.0, b, boot)
    assert p_dominates(np.stack([better, better], axis=1)) == 1.0
    assert p_dominates(np.stack([better, worse], axis=1)) == 0.0  # a trade-off never dominates


def test_bootstrap_of_20000_sessions_takes_seconds() -> None:
    import time

    t0 = time.perf_counter()
    boot = PairedBootstrap(20_000, 1000, seed=0)
    boot.means(np.random.default_rng(0).random((20_000, 8)))
    assert time.perf_counter() - t0 < 15.0  # ~1-2 s on a shared 2-core machine


# ---------------------------------------------------------------- matched mean weight
def test_matched_weight_policy_leaves_the_trained_actor_untouched() -> None:
    spec = next(s for s in default_specs(()) if s.name == "paperec_pareto")
    contender = Contender(spec, PAPERecConfig(ranker=SIM.ranker_config(), device="cpu"))
    trained = {k: v.clone() for k, v in contender.model.actor.state_dict().items()}
    sim = Simulator(SIM)
    requests = [sim.request(sim.start(sim.random_session(i))) for i in range(6)]
    before = [r.weights for r in contender.policy(0.0, None).rank(requests)]

    matched = contender.constant_weight_policy((0.3, 0.7))
    for r in matched.rank(requests):
        assert r.weights == pytest.approx((0.3, 0.7), abs=1e-6)
    assert matched.model.ranker is contender.trainer.ranker  # the same trained ranker
    assert matched.model.actor is not contender.model.actor
    for k, v in contender.model.actor.state_dict().items():
        assert torch.equal(v, trained[k]), k
    assert [r.weights for r in contender.policy(0.0, None).rank(requests)] == before


# ---------------------------------------------------------------- oracle
def test_oracle_sessions_replay_the_simulator() -> None:
    world = World.build(SIM)
    sim = Simulator(SIM, world, stream_id=2)
    specs = sim.random_sessions(60)
    weight = np.clip(0.6 - 2.0 * (world.users.alpha - world.users.alpha.mean()), 0.0, 1.0)
    fast = OracleSessions(sim, specs).run(weight)
    lists, clicks, dwell = np.zeros(60, int), np.zeros(60, int), np.zeros(60)
    for r in sim.run(OraclePolicy(world, lambda u: float(weight[u])), specs, parallel=16):
        lists[r.session] += 1
        clicks[r.session] += r.response.n_clicks
        dwell[r.session] += r.response.total_dwell_s
    assert np.array_equal(fast.lists, lists) and np.array_equal(fast.clicks, clicks)
    assert np.allclose(fast.dwell_s, dwell)
    assert np.array_equal(fast.impressions, lists * SIM.list_len)


@pytest.mark.parametrize("setting", ["control", "default"])
def test_oracle_headroom_vanishes_in_the_control(setting: str) -> None:
    world = World.build(simulator_config(SIM, setting))
    oracle = oracle_headroom(world, sessions=300, engagement=Engagement())
    room = paired.headroom(oracle, {}, Engagement(), PairedBootstrap(300, 500, seed=0))
    assert len(room["global"]) == len(GLOBAL_GRID) == 11 and oracle.selection_engagement.shape == (11, 5)
    if setting == "control":
        # constant alpha: every map is its global weight c, session for session, so the best map
        # on the selection stream is the best global weight, and the headroom is exactly 0
        assert oracle.chosen == (oracle.chosen_global, 0.0)
        c = GLOBAL_GRID.index(oracle.chosen_global)
        assert np.array_equal(oracle.map_totals.clicks, oracle.global_totals[c].clicks)
        assert np.array_equal(oracle.map_totals.lists, oracle.global_totals[c].lists)
        assert room["headroom"] == {"value": 0.0, "ci95": [0.0, 0.0]} and not room["resolved"]
    else:  # heterogeneous users: the maps differ from the global weights
        table, slope = oracle.selection_engagement, list(MAP_SLOPES).index(oracle.chosen[1])
        assert table[:, 1:].std() > 0 and table.max() == table[MAP_OFFSETS.index(oracle.chosen[0]), slope]
        assert room["headroom"]["ci95"][0] <= room["headroom"]["value"] <= room["headroom"]["ci95"][1]
        # the conservative variant (max over the evaluation sessions' globals) is never larger
        assert room["headroom_vs_best_global_on_eval"]["value"] <= room["headroom"]["value"]


# ---------------------------------------------------------------- the CLI end to end
def test_quick_evaluation_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from paperec.cli import main

    out = tmp_path / "run"
    argv = ["evaluate", "--seed", "1", "--out", str(out), "--quick", "--steps", "2", "--eval-sessions", "16",
            "--policies", "fixed_0.50,peltr,paperec_hybrid", "--workers", "1", "--no-progress",
            "--setting", "readers", "--simulator", "n_users=40", "--simulator", "n_items=200"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["setting"] == "readers"
    assert report["simulator_overrides"] == {"n_users": 40, "n_items": 200}
    assert report["simulator"]["dwell_satisfied_s"] == 300.0 and report["simulator"]["n_users"] == 40
    assert report["policies"]["paperec_hybrid"]["sessions"] == 16
    assert report["headroom"]["runtime_seconds"] > 0
    assert "Achieved half-width" in capsys.readouterr().out
    assert main(["evaluate", "--out", str(out), "--simulator", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().out


def test_captured_share_of_a_known_headroom() -> None:
    from paperec.evaluation.headroom import OracleData
    from paperec.evaluation.online import EvalData
    from simulator.oracle import SessionTotals

    rng = np.random.default_rng(3)
    n = 2000
    base = rng.poisson(10.0, n)  # clicks of each session under the best global weight
    ones, no_dwell = np.ones(n, np.int64), np.zeros(n)
    globals_ = [
        SessionTotals(ones, ones * 10, np.maximum(base - abs(w - 0.5) * 4, 0), no_dwell) for w in GLOBAL_GRID
    ]
    oracle = OracleData(globals_, SessionTotals(ones, ones * 10, base + 2, no_dwell), (0.5, 1.0), 0.5,
                        np.zeros((11, 5)), 0.5, 1.0)  # fmt: skip
    # the contender gains 1 click per session over its matched weight: half the headroom of 2
    noise = rng.integers(-1, 2, n)
    matched = EvalData(
        ones, ones * 10, base + noise, no_dwell, np.zeros(n, np.int64), np.zeros(0), np.zeros((0, 2))
    )
    contender = EvalData(ones, ones * 10, base + noise + 1, no_dwell, np.zeros(n, np.int64), np.zeros(0),
                         np.zeros((0, 2)), matched=matched)  # fmt: skip
    room = paired.headroom(oracle, {"p": contender}, Engagement(), PairedBootstrap(n, 300, seed=0))
    assert room["headroom"] == {"value": 2.0, "ci95": [2.0, 2.0]} and room["resolved"]
    assert room["captured_share"]["p"]["share"] == {"value": 0.5, "ci95": [0.5, 0.5]}
    assert room["headroom_vs_best_global_on_eval"]["value"] == 2.0
