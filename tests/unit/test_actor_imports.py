"""The serving node never imports training code (trainer, critic, optimizers' users)."""

from __future__ import annotations

import subprocess
import sys

TRAINING_MODULES = ("learner.training", "learner.ddpg", "learner.grads", "learner.mgda")


def test_actor_service_does_not_import_training_code() -> None:
    code = (
        "import sys, actor_service, actor_service.app, actor_service.cli, actor_service.node, "
        "actor_service.__main__\n"
        f"bad = [m for m in {TRAINING_MODULES!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert 'model.scoring' in sys.modules and 'model.snapshot' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_serve_is_a_registered_cli_command() -> None:
    from actor_service import cli
    from paperec.cli import COMMANDS

    assert COMMANDS["serve"][0] == "actor_service.cli"
    assert callable(cli.configure) and callable(cli.run)


def test_serve_cli_module_is_light() -> None:
    """`paperec` imports every subcommand module to build its parser: serve's must not pull torch."""
    code = "import sys, actor_service.cli\nassert 'torch' not in sys.modules and 'fastapi' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
