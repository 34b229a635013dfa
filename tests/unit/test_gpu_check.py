"""scripts/gpu_check.sh: without a visible GPU it stops with exit 3 before running anything, and
its dry run lists the steps a GPU machine will run (the CUDA tests and both benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}  # no GPU, even on one
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_without_a_gpu_the_check_exits_3_and_runs_nothing() -> None:
    done = run()
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no CUDA device" in done.stderr
    assert "== CUDA unit tests" not in done.stdout  # exited before the first step


def test_the_dry_run_lists_the_cuda_tests_and_both_benchmarks() -> None:
    done = run("--dry-run")
    assert done.returncode == 3  # still no GPU
    out = done.stdout
    assert "-k cuda or nccl or gpu" in out
    assert "benchmarks.train_step --device cuda" in out
    assert "benchmarks.learner --device cuda" in out
    assert "dry run, nothing run" in out


def test_the_cuda_tests_are_selected_by_the_scripts_filter() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/unit/test_cuda.py",
            "-k",
            "cuda or nccl or gpu",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "3 tests collected" in done.stdout or "3/3 tests collected" in done.stdout, done.stdout
