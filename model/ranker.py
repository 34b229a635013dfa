"""The list-wise multi-objective ranker: the shared representation h and one head per objective.

Per candidate item, five field tokens (user, context, history-aware user state, item features,
item id) interact through a small Transformer (the paper's feature-interaction module); a GRU
over the user's recent history gives the user state, and an optional GRU over list positions
adds list context. The per-item outputs form the shared representation ``h`` (B, L, D) that
MGDA's gradients are taken against; each objective head maps h to one output per item.

List b's outputs depend on list b only (no batch norm, no cross-list attention): that is what
lets one backward pass of the summed loss give every per-list gradient w.r.t. h (MGDA-UB).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from model.batch import ListInputs
from model.objectives import Objective, build_objective

log = logging.getLogger(__name__)
Tensor = torch.Tensor

N_FIELDS = 5  # user, context, user state, item features, item id


@dataclass
class RankerConfig:
    user_dim: int = 16
    """dense user feature width Fu"""
    item_dim: int = 16
    """dense item feature width Fi"""
    context_dim: int = 8
    """dense context feature width Fc"""
    hash_buckets: int = 1 << 14
    """rows of the item id embedding (ids hashed into 1..hash_buckets-1, 0 = padding)"""
    d_model: int = 64
    """width D of every field token, of h and of the user state"""
    n_heads: int = 4
    """attention heads of the field transformer"""
    n_layers: int = 2
    """layers of the field transformer"""
    ffn_mult: int = 2
    """feed-forward width of the transformer as a multiple of d_model"""
    history_len: int = 20
    """H: recent items per user (left-padded, most recent last)"""
    max_list_len: int = 20
    """L: candidate list length (right-padded)"""
    list_gru: bool = True
    """GRU over list positions: item i sees the items above it (top-down browsing)"""
    objectives: tuple[str, ...] = ("click", "dwell")
    """objective names (see model.objectives); one head and one loss each, K = len"""
    dropout: float = 0.0
    """dropout of the field transformer (0: streamed data is rarely seen twice, and CPU dropout is slow)"""
    dwell_scale: float = 30.0
    """seconds: dwell targets are divided by it (head outputs stay O(1))"""
    tweedie_power: float = 1.5
    """Tweedie power p in (1, 2) of the dwell loss (compound Poisson-gamma)"""

    @classmethod
    def tiny(cls, **overrides: Any) -> RankerConfig:
        """A small model for tests and smoke runs."""
        small = dict(user_dim=6, item_dim=5, context_dim=3, hash_buckets=101, d_model=16, n_heads=2)
        small.update(n_layers=1, history_len=5, max_list_len=6)
        return dataclasses.replace(cls(**small), **overrides)  # type: ignore[arg-type]


def _mlp_head(d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))


class FieldBlock(nn.Module):
    """Pre-norm transformer block over the F field tokens of each item (nanoGPT's Block).

    Hand-written rather than nn.TransformerEncoderLayer: with thousands of 5-token sequences
    nn.MultiheadAttention's layout copies cost more than the matmuls on CPU.
    """

    def __init__(self, cfg: RankerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        assert d % cfg.n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = cfg.n_heads
        self.ln_1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Linear(cfg.ffn_mult * d, d))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        n, f, d = x.shape  # (N, F, D), N = B*L items
        q, k, v = self.qkv(self.ln_1(x)).view(n, f, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (N, nh, F, hd)
        attn = torch.softmax(q @ k.transpose(-1, -2) / (d // self.n_heads) ** 0.5, dim=-1)  # (N, nh, F, F)
        y = (attn @ v).transpose(1, 2).reshape(n, f, d)  # (N, F, D)
        x = x + self.dropout(self.proj(y))
        return x + self.dropout(self.mlp(self.ln_2(x)))


class Ranker(nn.Module):
    def __init__(self, cfg: RankerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.objectives: list[Objective] = [build_objective(n, cfg) for n in cfg.objectives]
        # one id space for candidates and history: an item clicked before is the same item
        self.item_embedding = nn.Embedding(cfg.hash_buckets, d, padding_idx=0)
        self.user_proj = nn.Linear(cfg.user_dim, d)
        self.context_proj = nn.Linear(cfg.context_dim, d)
        self.item_proj = nn.Linear(cfg.item_dim, d)
        self.history_gru = nn.GRU(d, d, batch_first=True)
        self.state_proj = nn.Sequential(nn.Linear(3 * d, d), nn.LayerNorm(d), nn.Tanh())
        self.field_embedding = nn.Parameter(torch.zeros(N_FIELDS, d))  # tells fields apart
        self.field_transformer = nn.Sequential(*(FieldBlock(cfg) for _ in range(cfg.n_layers)))
        self.pool = nn.Linear(N_FIELDS * d, d)
        self.position_gru = nn.GRU(d, d, batch_first=True) if cfg.list_gru else None
        self.norm = nn.LayerNorm(d)
        self.objective_heads = nn.ModuleList(_mlp_head(d) for _ in cfg.objectives)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        nn.init.normal_(self.field_embedding, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        log.debug("Ranker: %d parameters", sum(p.numel() for p in self.parameters()))

    @property
    def num_objectives(self) -> int:
        return len(self.objectives)

    def user_state(self, user_feats: Tensor, history: Tensor, context: Tensor) -> Tensor:
        """The user state (B, D) from features, context and recent history (also the DDPG state)."""
        user = self.user_proj(user_feats)  # (B, D)
        ctx = self.context_proj(context)  # (B, D)
        seq, _ = self.history_gru(self.item_embedding(history))  # (B, H, D)
        # output at the last non-padding position (H-1 when left-padded; robust to right padding)
        positions = torch.arange(history.shape[1], device=history.device)
        last = torch.where(history > 0, positions, 0).amax(dim=1)  # (B,)
        hist = seq[torch.arange(seq.shape[0], device=seq.device), last]  # (B, D)
        return self.state_proj(torch.cat([user, ctx, hist], dim=-1))  # (B, D)

    def encode(self, x: ListInputs, user_state: Tensor | None = None) -> Tensor:
        """The shared representation h (B, L, D). Pass ``user_state`` to reuse a computed one."""
        if user_state is None:
            user_state = self.user_state(x.user_feats, x.history, x.context)
        b, n = x.item_ids.shape  # n = L
        d = self.cfg.d_model
        per_user = torch.stack([self.user_proj(x.user_feats), self.context_proj(x.context), user_state], 1)
        per_item = torch.stack([self.item_proj(x.item_feats), self.item_embedding(x.item_ids)], 2)
        tokens = torch.cat([per_user.unsqueeze(1).expand(b, n, 3, d), per_item], dim=2)  # (B, L, F, D)
        tokens = tokens.reshape(b * n, N_FIELDS, d) + self.field_embedding  # (B*L, F, D)
        fields = self.field_transformer(tokens)  # (B*L, F, D): feature interaction per item
        items = self.pool(fields.reshape(b, n, N_FIELDS * d))  # (B, L, D)
        if self.position_gru is not None:
            context, _ = self.position_gru(items)  # (B, L, D); right padding only trails
            items = items + context
        return self.norm(items)  # (B, L, D)

    def heads(self, h: Tensor) -> Tensor:
        """Raw per-objective outputs (B, L, K) of h (B, L, D)."""
        return torch.cat([head(h) for head in self.objective_heads], dim=-1)

    def forward(self, x: ListInputs) -> Tensor:
        return self.heads(self.encode(x))  # (B, L, K)

    def losses_per_list(self, preds: Tensor, batch: object) -> Tensor:
        """Per-list losses (B, K): each objective's loss, masked mean over valid positions."""
        mask = batch.mask  # type: ignore[attr-defined]
        count = mask.sum(dim=1).clamp_min(1)  # (B,); an empty list has loss 0
        losses = []
        for k, objective in enumerate(self.objectives):
            target = getattr(batch, objective.label)  # (B, L)
            elementwise = torch.where(mask, objective.loss(preds[..., k], target), 0.0)
            losses.append(elementwise.sum(dim=1) / count)
        return torch.stack(losses, dim=1)  # (B, K)

    def values(self, preds: Tensor) -> Tensor:
        """Predictions in natural units (B, L, K), e.g. click probability and dwell seconds."""
        return torch.stack([o.value(preds[..., k]) for k, o in enumerate(self.objectives)], dim=-1)
