"""The data-parallel learner service (in-memory clients, 2 gloo ranks on CPU): rank 0 publishes
and checkpoints, every rank commits; SIGKILL of a rank stops the job (non-zero), and a restart
resumes from the last checkpoint. The ranks run under ``learner.cli.launch`` (``--nproc``)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from test_learner_service_run import Fakes, _service

from learner import distributed
from learner.checkpoint import CheckpointStore
from learner.cli import launch


def _rank(index: int, nproc: int, port: int, root: str, max_steps: int) -> None:
    """One rank: the service on the fakes (its own commit log, the job's checkpoint directory)."""
    os.environ.update(distributed.loopback_env(index, nproc, port))
    torch.set_num_threads(1)
    distributed.init(torch.device("cpu"), timeout_s=20)
    base = Path(root)
    (base / f"pid{index}").write_text(str(os.getpid()))
    mine = base / f"rank{index}"
    mine.mkdir(exist_ok=True)
    fakes = Fakes(mine)
    fakes.checkpoints = CheckpointStore(base / "ckpt")
    found = fakes.checkpoints.load_latest()
    started_at = 0 if found is None else int(found[1]["trainer"]["num_steps"])
    service = _service(fakes, max_steps=max_steps, checkpoint_every_s=0.2)
    try:
        rc = service.run()
    finally:
        distributed.shutdown()
    trainer_state = fakes.checkpoints.load_latest()
    assert trainer_state is not None
    torch.save(
        {"versions": fakes.versions(), "commits": fakes.commits(), "started_at": started_at},
        mine / "result.pt",
    )
    if rc:
        raise SystemExit(rc)


def _result(root: Path, index: int) -> dict[str, Any]:
    return torch.load(root / f"rank{index}" / "result.pt", weights_only=True)


def test_rank_0_publishes_and_checkpoints_every_rank_commits(tmp_path: Path) -> None:
    assert launch(_rank, (str(tmp_path), 12), 2) == 0
    r0, r1 = _result(tmp_path, 0), _result(tmp_path, 1)
    assert r0["versions"] == [1, 2, 3] and r1["versions"] == []  # every 5 steps and at the stop
    found = CheckpointStore(tmp_path / "ckpt").load_latest()
    assert found is not None and found[1]["trainer"]["num_steps"] == 12
    assert r0["commits"][-1] == {0: 120} and r1["commits"][-1] == {0: 120}


def test_sigkill_of_a_rank_stops_the_job_and_a_restart_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt")

    def kill_rank_1_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = store.paths()
            if found and int(found[0].name[5:-3]) > 0 and (tmp_path / "pid1").exists():
                os.kill(int((tmp_path / "pid1").read_text()), signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank_1_after_a_checkpoint)
    killer.start()
    start = time.monotonic()
    assert launch(_rank, (str(tmp_path), 0), 2) == 1  # max_steps 0: runs until the kill
    killer.join()
    assert time.monotonic() - start < 90, "the job must stop soon after a rank dies"
    found = store.load_latest()
    assert found is not None
    step = int(found[1]["trainer"]["num_steps"])
    assert step > 0

    assert launch(_rank, (str(tmp_path), step + 3), 2) == 0
    assert _result(tmp_path, 0)["started_at"] == step  # resumed from the last checkpoint
    assert _result(tmp_path, 1)["started_at"] == step
    after = store.load_latest()
    assert after is not None and after[1]["trainer"]["num_steps"] == step + 3
