"""Per-objective gradients for MGDA: per list (PAPERec's reward) and batch-mean (PE-LTR).

Two choices of "shared" variables (``grad_mode``):
- ``shared_repr`` (MGDA-UB, Sener & Koltun 2018): gradients w.r.t. the shared representation
  h (B, L, D). List b's loss depends on h_b only, so the gradient of sum_b L_bk w.r.t. h *is*
  the stack of all per-list gradients: K backward passes that stop at h, i.e. run through the
  objective heads only. Cheap, and an upper bound on the full-parameter MGDA objective.
- ``full_params``: gradients w.r.t. every shared ranker parameter (all but the objective
  heads), per list. Exact but O(B) backward passes (a per-list loop: ``torch.func.vmap`` has
  no batching rule for nn.GRU), so meant for small models and for checking ``shared_repr``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from model.batch import ListBatch
from model.ranker import Ranker

Tensor = torch.Tensor


def per_list_repr_grads(losses: Tensor, h: Tensor) -> Tensor:
    """Per-list gradients (B, K, L*D) of ``losses`` (B, K) w.r.t. ``h`` (B, L, D); graph kept."""
    grads = [
        torch.autograd.grad(losses[:, k].sum(), h, retain_graph=True)[0]  # (B, L, D)
        for k in range(losses.shape[1])
    ]
    return torch.stack(grads, dim=1).flatten(2)  # (B, K, L*D)


def shared_parameters(ranker: Ranker) -> list[nn.Parameter]:
    """Parameters every objective shares: all but the objective heads."""
    head_ids = {id(p) for p in ranker.objective_heads.parameters()}
    return [p for p in ranker.parameters() if id(p) not in head_ids and p.requires_grad]


def _flat_grads(output: Tensor, params: Sequence[Tensor], retain_graph: bool) -> Tensor:
    grads = torch.autograd.grad(output, params, retain_graph=retain_graph, allow_unused=True)
    flat = [(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params, strict=True)]
    return torch.cat(flat)


def per_list_param_grads(ranker: Ranker, batch: ListBatch) -> Tensor:
    """Per-list gradients (B, K, P) w.r.t. the shared parameters, one forward per list."""
    params = shared_parameters(ranker)
    rows = []
    for b in range(batch.batch_size):
        one = batch.select(slice(b, b + 1))
        losses = ranker.losses_per_list(ranker(one), one)[0]  # (K,)
        k = losses.shape[0]
        rows.append(torch.stack([_flat_grads(losses[i], params, retain_graph=i < k - 1) for i in range(k)]))
    return torch.stack(rows)  # (B, K, P)


def batch_grads(losses: Tensor, inputs: Sequence[Tensor]) -> Tensor:
    """Gradients (K, D) of the batch-mean losses ``losses`` (B, K) w.r.t. ``inputs``; graph kept."""
    mean = losses.mean(dim=0)  # (K,)
    return torch.stack([_flat_grads(mean[k], inputs, retain_graph=True) for k in range(mean.shape[0])])
