"""Snapshots with a known effect on users, for the rollout's acceptance test and benchmark: a
ranker that ranks the simulator's items by their observable bait and quality proxies (good without
any training), and the same model with its scores negated (deliberately harmful). Not used by
the service itself.

The good ranker is set by hand, not trained: the field transformer's blocks are made the identity
(their output projections zeroed), the pool keeps only the item-feature token, whose first unit
is ``s = bait_weight * bait proxy + quality_weight * quality proxy`` (the second ``-s`` and the
third a constant, so the final LayerNorm stays increasing in ``s``), and every objective head is
an increasing function of that unit. So every head's prediction, and any weighted score of them,
ranks items by ``s``; negating each head's last layer ranks them by ``-s``.
"""

from __future__ import annotations

import copy
from typing import cast

import torch

from model.policy import ActorConfig
from model.ranker import N_FIELDS, FieldBlock, RankerConfig
from model.scoring import ActorModel, policy_obs_dim

ITEM_TOKEN = 3
"""index of the item-feature token among the ranker's fields (user, context, state, item, id)"""


@torch.no_grad()
def proxy_ranker_model(
    ranker: RankerConfig,
    *,
    bait_index: int,
    quality_index: int,
    bait_weight: float = 0.8,
    quality_weight: float = 1.0,
    seed: int = 0,
) -> ActorModel:
    """An :class:`ActorModel` whose ranker ranks by ``bait_weight * features[bait_index] +
    quality_weight * features[quality_index]`` (a seeded weight generator, untouched)."""
    torch.manual_seed(seed)
    actor = ActorConfig(obs_dim=policy_obs_dim(ranker, "ranker"), action_dim=len(ranker.objectives))
    model = ActorModel(ranker, actor).eval()
    r = model.ranker
    d = ranker.d_model
    if d < 3:
        raise ValueError("proxy_ranker_model needs d_model >= 3")
    for block in r.field_transformer:
        assert isinstance(block, FieldBlock)
        mlp_out = block.mlp[-1]
        assert isinstance(mlp_out, torch.nn.Linear)
        for layer in (block.proj, mlp_out):  # nothing added to the residual stream
            layer.weight.zero_()
            layer.bias.zero_()
    r.field_embedding.zero_()
    r.item_proj.weight.zero_()
    r.item_proj.bias.zero_()
    r.item_proj.weight[0, bait_index] = bait_weight
    r.item_proj.weight[0, quality_index] = quality_weight
    r.item_proj.weight[1] = -r.item_proj.weight[0]
    r.item_proj.bias[2] = 10.0  # keeps LayerNorm's first output increasing in s (|s| << 10 d)
    r.pool.weight.zero_()
    r.pool.bias.zero_()
    for j in range(3):
        r.pool.weight[j, ITEM_TOKEN * d + j] = 1.0
    assert r.pool.weight.shape[1] == N_FIELDS * d
    if r.position_gru is not None:  # all-zero GRU: output 0, items pass unchanged
        for p in r.position_gru.parameters():
            p.zero_()
    r.norm.weight.fill_(1.0)
    r.norm.bias.zero_()
    for head in r.objective_heads:
        first, last = _linear(head, 0), _linear(head, -1)
        first.weight.zero_()
        first.bias.zero_()
        first.weight[0, 0] = 0.3
        first.bias[0] = 3.0  # GELU(0.3 z + 3) is increasing for every z LayerNorm can give
        last.weight.zero_()
        last.weight[0, 0] = 1.0
        last.bias.fill_(-4.0)
    return model


@torch.no_grad()
def negated(model: ActorModel) -> ActorModel:
    """A copy of ``model`` whose every objective head's output is negated: the ranker's scores
    (per objective, and so any weighted sum) rank items in the reverse order."""
    out = copy.deepcopy(model)
    for head in out.ranker.objective_heads:
        last = _linear(head, -1)
        last.weight.neg_()
        last.bias.neg_()
    return out.eval()


def _linear(head: torch.nn.Module, index: int) -> torch.nn.Linear:
    layer = cast(torch.nn.Sequential, head)[index]
    assert isinstance(layer, torch.nn.Linear)
    return layer
