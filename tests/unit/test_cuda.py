"""The training step on a CUDA device: it learns, agrees with the CPU step on the same weights,
and its checkpoints resume on a CPU. Skipped without CUDA; ``scripts/gpu_check.sh`` runs these
(``-k cuda``) on a GPU machine. Every other unit test pins ``device="cpu"``."""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterator

import pytest
import torch

from learner.training import PAPERecConfig, Trainer
from model.batch import ListBatch
from model.ranker import RankerConfig

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (scripts/gpu_check.sh runs these on a GPU)"
)


@pytest.fixture(autouse=True)
def exact_matmuls() -> Iterator[None]:
    """TF32 off: CPU and CUDA then differ only by summation order."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def batches(cfg: PAPERecConfig, n: int, size: int = 32, seed: int = 0) -> list[ListBatch]:
    g = torch.Generator().manual_seed(seed)  # on the CPU: the same data for both devices
    return [ListBatch.synthetic(cfg.ranker, size, g) for _ in range(n)]


def test_cuda_training_step_learns_and_stays_finite() -> None:
    cfg = PAPERecConfig(ranker=RankerConfig.tiny(), device="cuda", ranker_lr=3e-3)
    trainer = Trainer(cfg)
    assert all(p.device.type == "cuda" for p in trainer.ranker.parameters())
    history = [trainer.step(b) for b in batches(cfg, 100)]
    for key in ("loss/click", "loss/dwell"):
        first = sum(m[key] for m in history[:10]) / 10
        last = sum(m[key] for m in history[-10:]) / 10
        assert last < 0.95 * first, key
    assert all(math.isfinite(v) for m in history for v in m.values())
    assert trainer.nonfinite_steps == 0


def test_cuda_step_agrees_with_the_cpu_step_on_the_same_weights() -> None:
    cpu_cfg = PAPERecConfig(ranker=RankerConfig.tiny(), device="cpu", strategy="fixed")
    cpu, gpu = Trainer(cpu_cfg), Trainer(dataclasses.replace(cpu_cfg, device="cuda"))
    gpu.ranker.load_state_dict(cpu.ranker.state_dict())  # whatever each device's RNG drew
    for batch in batches(cpu_cfg, 3):
        on_cpu, on_gpu = cpu.step(batch), gpu.step(batch)
        for key in ("loss/click", "loss/dwell"):
            assert on_gpu[key] == pytest.approx(on_cpu[key], rel=1e-3, abs=1e-5), key


def test_a_cuda_checkpoint_resumes_on_the_cpu() -> None:
    cfg = PAPERecConfig(ranker=RankerConfig.tiny(), device="cuda")
    data = batches(cfg, 4)
    gpu = Trainer(cfg)
    for b in data[:3]:
        gpu.step(b)
    buf = io.BytesIO()
    torch.save(gpu.state_dict(), buf)
    buf.seek(0)
    cpu = Trainer(dataclasses.replace(cfg, device="cpu"))
    cpu.load_state_dict(torch.load(buf, map_location="cpu"))
    assert cpu.num_steps == gpu.num_steps == 3
    for p, q in zip(gpu.ranker.parameters(), cpu.ranker.parameters(), strict=True):
        assert torch.equal(p.detach().cpu(), q.detach())
    assert all(math.isfinite(v) for v in cpu.step(data[3]).values())
