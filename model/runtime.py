"""Device choice and seeded, side-effect-free randomness for the learner."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def default_device(name: str | None = None) -> torch.device:
    """The device to run on: ``name`` when given ("cpu", "cuda", "cuda:1"), else CUDA when present."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a block with the global torch RNGs seeded to ``seed``, restoring them afterwards.

    Module init and dropout draw from the global RNG; forking it makes a step a pure function of
    (state, batch, seed) without disturbing the caller's random stream.
    """
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` (on its own device), then moved to ``device``.

    A CPU generator can then serve a CUDA model, which keeps serving logs reproducible anywhere.
    """
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op CPU threads, restoring the previous count afterwards.

    Tiny networks (the DDPG nets, test-size rankers) gain nothing from more threads, and on a
    busy machine OpenMP's barrier waits make them many times slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def training_threads(requested: int, device: torch.device, ingest_process: bool) -> int:
    """Intra-op threads for the training loop: ``requested`` when > 0, else every core, less
    one for the ingest worker process when training runs on the CPU too.

    OpenMP threads wait for each other at every op: with one of them sharing its core with the
    ingest worker, a step is several times slower than with one thread fewer.
    """
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device.type == "cpu" and ingest_process:
        return max(1, cores - 1)
    return cores
