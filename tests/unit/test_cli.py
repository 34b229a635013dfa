"""The entry points: ``paperec`` and each subcommand answer ``--help``; ``python -m <package>`` runs
a package's command through base.command without importing the application; a command gets its
settings from flag > PAPEREC_* > default."""

from __future__ import annotations

import argparse
import subprocess
import sys
import types

import pytest

from base import command
from base.settings import Settings
from paperec.cli import COMMANDS, build_parser


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_answers_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser([name]).parse_args([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: paperec {name}" in out and "--kafka-bootstrap" in out


def test_paperec_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser([]).parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


# Each package's __main__ with --help, then: which application modules got imported?
PROBE = """
import runpy, sys
for package in ("streams", "actor_service", "learner"):
    sys.argv = [package, "--help"]
    try:
        runpy.run_module(package, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        assert exc.code == 0, (package, exc.code)
print("APP", sorted(m for m in sys.modules if m == "paperec" or m.startswith("paperec.")))
"""


def test_python_m_packages_run_without_the_application() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "usage: python -m streams" in done.stdout
    assert "usage: python -m actor_service" in done.stdout
    assert "usage: python -m learner" in done.stdout and "--batch-size" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "APP []"


def _recording_command() -> tuple[types.SimpleNamespace, list[tuple[argparse.Namespace, Settings]]]:
    calls: list[tuple[argparse.Namespace, Settings]] = []

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--answer", type=int, default=0)

    def run(args: argparse.Namespace, settings: Settings) -> int:
        calls.append((args, settings))
        return args.answer

    return types.SimpleNamespace(configure=configure, run=run), calls


def test_command_main_parses_its_flags_and_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    cmd, calls = _recording_command()
    monkeypatch.setenv("PAPEREC_TOPIC_PREFIX", "from-env.")
    monkeypatch.setenv("PAPEREC_SERVE_PORT", "1234")
    code = command.main("x", cmd, ["--answer", "7", "--serve-port", "4321"])
    assert code == 7
    (args, settings) = calls[0]
    assert args.answer == 7
    assert settings.serve_port == 4321  # the flag wins over the environment
    assert settings.topic_prefix == "from-env."  # the environment over the default


def test_a_bad_setting_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    cmd, calls = _recording_command()
    monkeypatch.setenv("PAPEREC_SERVE_PORT", "not-a-port")
    with pytest.raises(SystemExit) as exit_info:
        command.main("x", cmd, [])
    assert exit_info.value.code == 2 and not calls
