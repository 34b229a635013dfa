"""Per-list gradients (shared_repr and full_params) against per-sample autograd loops."""

from __future__ import annotations

import torch

from learner.grads import batch_grads, per_list_param_grads, per_list_repr_grads, shared_parameters
from model.batch import ListBatch
from model.ranker import Ranker, RankerConfig

B = 5


def setup() -> tuple[Ranker, ListBatch]:
    cfg = RankerConfig.tiny(d_model=8, n_heads=2)
    torch.manual_seed(0)
    return Ranker(cfg), ListBatch.synthetic(cfg, B, torch.Generator().manual_seed(0))


def test_shared_repr_grads_match_a_per_list_loop() -> None:
    ranker, batch = setup()
    h = ranker.encode(batch)
    losses = ranker.losses_per_list(ranker.heads(h), batch)
    grads = per_list_repr_grads(losses, h)
    k, (_, length, d) = losses.shape[1], h.shape
    assert grads.shape == (B, k, length * d)
    for b in range(B):
        one = batch.select(slice(b, b + 1))
        h_b = ranker.encode(one)  # a separate forward of list b alone
        losses_b = ranker.losses_per_list(ranker.heads(h_b), one)[0]
        for i in range(k):
            (expected,) = torch.autograd.grad(losses_b[i], h_b, retain_graph=True)
            torch.testing.assert_close(grads[b, i], expected.flatten(), rtol=1e-4, atol=1e-6)
    # and the batch-mean gradient (PE-LTR) is their concatenation / B
    mean = batch_grads(losses, [h])
    torch.testing.assert_close(mean, grads.transpose(0, 1).reshape(k, -1) / B)


def test_full_param_grads_match_a_per_list_loop() -> None:
    ranker, batch = setup()
    grads = per_list_param_grads(ranker, batch)
    params = shared_parameters(ranker)
    n_params = sum(p.numel() for p in params)
    assert grads.shape == (B, 2, n_params)
    # independent route: one forward of the whole batch, one backward per (list, objective)
    losses = ranker.losses_per_list(ranker(batch), batch)
    for b in range(B):
        for i in range(2):
            parts = torch.autograd.grad(losses[b, i], params, retain_graph=True, allow_unused=True)
            expected = torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).flatten()
                    for g, p in zip(parts, params, strict=True)
                ]
            )
            torch.testing.assert_close(grads[b, i], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(batch_grads(losses, params), grads.mean(0), rtol=1e-4, atol=1e-6)
    head_ids = {id(p) for p in ranker.objective_heads.parameters()}
    assert not any(id(p) in head_ids for p in params)
