"""The data-parallel learner's one adapter to ``torch.distributed``: every collective lives here.

One model, N ranks: each rank computes a step on its own share of the global batch, and the
gradients of the ranker, the critic and the actor are averaged across ranks after each backward
(before clipping and the optimizer steps), so that every rank applies the same update and keeps
the same parameters. Whatever else changes the update and depends on more than one list (the
running gradient scale's per-objective mean norms, PE-LTR's batch-mean gradients, the "is this
step refused" decision) goes through :func:`average` / :func:`gather_cat` / :func:`any_rank` too.

The mean of the ranks' means equals the global batch's mean when every rank holds the same
number of lists, which is how the learner samples (``batch_size`` rows per rank).

Without a process group (the default, a single learner process) every function here is the
identity and costs nothing: the single-process learner does not know this module exists.

The process group is torch's own: :func:`init` reads the torchrun environment (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK); gloo on CPU, NCCL on CUDA. A collective that
waits longer than ``timeout_s`` for a dead rank raises: the surviving ranks stop (see
docs/learner_service.md, "Data-parallel learner").
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
Tensor = torch.Tensor

ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""the torchrun environment a rank process reads (LOCAL_RANK optional: the CUDA device index)"""


def active() -> bool:
    """A process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo for CPU ones."""
    return "nccl" if device.type == "cuda" else "gloo"


def init(device: torch.device, timeout_s: float = 60.0) -> None:
    """Join the process group described by the torchrun environment (``ENV``); the backend
    follows ``device``. A collective blocked longer than ``timeout_s`` raises."""
    missing = [name for name in ENV if name not in os.environ]
    if missing:
        raise ValueError(f"data-parallel learner: environment lacks {', '.join(missing)}")
    backend = backend_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    log.info("data-parallel rank %d of %d (%s)", rank(), world_size(), backend)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def average_grads_(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` across ranks, in place (one flat all-reduce).

    Parameters without a gradient are left without one (the optimizer skips them, as in one
    process): every rank runs the same graph, so the same parameters have gradients on all ranks.
    """
    if not active():
        return
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def average(t: Tensor) -> Tensor:
    """The mean of ``t`` across ranks (a new tensor; ``t`` unchanged)."""
    if not active():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def gather_cat(t: Tensor, dim: int) -> Tensor:
    """Every rank's ``t`` concatenated along ``dim`` in rank order (same shape on every rank)."""
    if not active():
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts, dim=dim)


def any_rank(flag: bool, device: torch.device | str | None = None) -> bool:
    """True on every rank when ``flag`` is true on any rank (a refused step is refused by all;
    a wait, a due checkpoint or a stop request of one rank is every rank's). ``device``: where the
    backend's tensors live (None: CUDA's current device under NCCL, else CPU)."""
    if not active():
        return flag
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    """Wait until every rank gets here (e.g. rank 0's checkpoint is on disk before others read it)."""
    if active():
        dist.barrier()


def broadcast_state_(modules: Iterable[torch.nn.Module], src: int = 0) -> None:
    """Copy the parameters and buffers of ``modules`` from rank ``src`` to every rank."""
    if not active():
        return
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            dist.broadcast(t.data, src=src)


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the rendezvous of ranks started on one machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The torchrun environment (``ENV``) of rank ``rank`` of ranks started on this machine."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
