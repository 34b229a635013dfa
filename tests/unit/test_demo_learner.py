"""``paperec demo --learner FIELD=VALUE``: the demo's learner runs with the reward mode asked for."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from base.config_flags import build_config
from base.settings import Settings
from learner.cli import configure
from learner.training import PAPERecConfig
from paperec.cli import build_parser
from paperec.demo import DemoOptions, demo_services, learner_patch_flags


def _learner_config(args: list[str]) -> PAPERecConfig:
    """The PAPERecConfig ``paperec learner <args>`` would train with."""
    parser = argparse.ArgumentParser()
    configure(parser)
    settings_flags = {"--learner-checkpoint-dir", "--metrics-source"}  # Settings/service flags: kept
    assert settings_flags <= set(args)
    known, _ = parser.parse_known_args(args)
    cfg = build_config(PAPERecConfig, known, "train__")
    assert isinstance(cfg, PAPERecConfig)
    return cfg


def test_the_demo_passes_the_reward_mode_to_its_learner(tmp_path: Path) -> None:
    args = build_parser(["demo"]).parse_args(
        [
            "demo",
            "--learner",
            "reward=hybrid",
            "--learner",
            "hybrid_lambda=0.5",
            "--learner",
            "policy_state=ranker",
        ]
    )
    assert args.learner == ["reward=hybrid", "hybrid_lambda=0.5", "policy_state=ranker"]
    opts = DemoOptions(1.0, 2, 1, 0, None, None, tmp_path, False, learner=tuple(args.learner))
    services, _ = demo_services(Settings(topic_prefix="paperec.demo-x."), opts, tmp_path / "logs")
    learner = next(s for s in services if s.name == "learner")
    cfg = _learner_config(list(learner.args[1:]))
    assert (cfg.reward, cfg.hybrid_lambda, cfg.policy_state) == ("hybrid", 0.5, "ranker")
    assert cfg.ranker.user_dim > 0  # the simulator's ranker flags are still there

    default = DemoOptions(1.0, 2, 1, 0, None, None, tmp_path, False)
    services, _ = demo_services(Settings(topic_prefix="paperec.demo-x."), default, tmp_path / "logs")
    learner = next(s for s in services if s.name == "learner")
    assert _learner_config(list(learner.args[1:])).reward == "engagement"


def test_a_bad_learner_patch_is_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="reward"):
        learner_patch_flags(["reward=clicks"])
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        learner_patch_flags(["no_such_field=1"])
    assert learner_patch_flags(["reward=engagement", "list_scaled_reward=true"]) == [
        "--reward",
        "engagement",
        "--list-scaled-reward",
    ]
