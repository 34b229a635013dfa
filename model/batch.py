"""The batch contract between the streams (Kafka transitions) and the learner.

One row is one logged transition of one user: the candidate list shown in state s, the labels,
the objective weights the serving node used (the action), and the user's next state s'.

Layout conventions:
- ``history`` is left-padded with 0 (most recent item last, at index H-1).
- ``item_ids``/``item_feats`` are right-padded: valid positions first, ``mask`` marks them.
- ids are hashed with :func:`model.featurize.hash_id`; 0 is padding.
- ``next_*`` are zeros where ``done`` is 1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, Self

import torch

Tensor = torch.Tensor


class ListInputs(Protocol):
    """What a model needs to score one candidate list per user (no labels)."""

    user_feats: Tensor  # (B, Fu) float32
    history: Tensor  # (B, H) int64
    context: Tensor  # (B, Fc) float32
    item_ids: Tensor  # (B, L) int64
    item_feats: Tensor  # (B, L, Fi) float32
    mask: Tensor  # (B, L) bool


class BatchDims(Protocol):
    """The config fields :meth:`ListBatch.synthetic` needs (a RankerConfig has them)."""

    user_dim: int
    item_dim: int
    context_dim: int
    hash_buckets: int
    history_len: int
    max_list_len: int
    objectives: tuple[str, ...]


class _TensorFields:
    """``to``/``select``/``clone`` for dataclasses whose fields are all tensors."""

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Self:
        return dataclasses.replace(
            self,  # type: ignore[type-var]
            **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)},  # type: ignore[arg-type]
        )

    def to(self, device: torch.device | str) -> Self:
        return self._map(lambda t: t.to(device))

    def select(self, index: Tensor | slice) -> Self:
        """Rows ``index`` of every field (e.g. ``slice(b, b + 1)`` for a per-list loop)."""
        return self._map(lambda t: t[index])

    def clone(self) -> Self:
        return self._map(lambda t: t.clone())

    @property
    def batch_size(self) -> int:
        first = dataclasses.fields(self)[0]  # type: ignore[arg-type]
        return int(getattr(self, first.name).shape[0])


@dataclass
class ListInputsBatch(_TensorFields):
    """A label-free batch, as the serving node builds it (satisfies :class:`ListInputs`)."""

    user_feats: Tensor
    history: Tensor
    context: Tensor
    item_ids: Tensor
    item_feats: Tensor
    mask: Tensor


@dataclass
class ListBatch(_TensorFields):
    """B logged transitions (see the module docstring for the layout)."""

    user_feats: Tensor  # (B, Fu) float32
    history: Tensor  # (B, H) int64
    context: Tensor  # (B, Fc) float32
    item_ids: Tensor  # (B, L) int64
    item_feats: Tensor  # (B, L, Fi) float32
    mask: Tensor  # (B, L) bool
    clicks: Tensor  # (B, L) float32 0/1
    dwell: Tensor  # (B, L) float32 seconds, 0 when not clicked
    action: Tensor  # (B, K) float32 logged objective weights, on the simplex
    next_user_feats: Tensor  # (B, Fu)
    next_history: Tensor  # (B, H)
    next_context: Tensor  # (B, Fc)
    next_item_ids: Tensor  # (B, L)
    next_item_feats: Tensor  # (B, L, Fi)
    next_mask: Tensor  # (B, L)
    done: Tensor  # (B,) float32

    def inputs(self) -> ListInputsBatch:
        """State s and its candidate list, without labels."""
        return ListInputsBatch(
            self.user_feats, self.history, self.context, self.item_ids, self.item_feats, self.mask
        )

    def next_inputs(self) -> ListInputsBatch:
        """Next state s' and its candidate list."""
        return ListInputsBatch(
            self.next_user_feats,
            self.next_history,
            self.next_context,
            self.next_item_ids,
            self.next_item_feats,
            self.next_mask,
        )

    @classmethod
    def synthetic(cls, cfg: BatchDims, batch_size: int, generator: torch.Generator) -> ListBatch:
        """A seeded batch with planted structure, for tests and benchmarks.

        Clicks follow a fixed (seed-independent) bilinear user x item model plus a per-id bias,
        dwell is log-normal given a click with an item-dependent mean; so a ranker can learn from
        fresh batches and losses really go down.
        """
        return _synthetic(cfg, batch_size, generator)


def _planted(cfg: BatchDims) -> tuple[Tensor, Tensor, Tensor]:
    """The fixed ground-truth parameters of the synthetic data (same for every generator)."""
    g = torch.Generator().manual_seed(1234)
    bilinear = torch.randn(cfg.user_dim + cfg.context_dim, cfg.item_dim, generator=g)
    bilinear /= math.sqrt(cfg.user_dim + cfg.context_dim)
    dwell_w = torch.randn(cfg.item_dim, generator=g) / math.sqrt(cfg.item_dim)
    id_bias = torch.randn(997, generator=g)  # per-id popularity, indexed by id % 997
    return bilinear, dwell_w, id_bias


def _synthetic(cfg: BatchDims, b: int, g: torch.Generator) -> ListBatch:
    h, lmax, k = cfg.history_len, cfg.max_list_len, len(cfg.objectives)
    bilinear, dwell_w, id_bias = _planted(cfg)

    def ids(*shape: int) -> Tensor:
        return torch.randint(1, cfg.hash_buckets, shape, generator=g)

    def state() -> tuple[Tensor, Tensor, Tensor]:
        user = torch.randn(b, cfg.user_dim, generator=g)
        context = torch.randn(b, cfg.context_dim, generator=g)
        hist_len = torch.randint(0, h + 1, (b, 1), generator=g)
        history = ids(b, h) * (torch.arange(h) >= h - hist_len)  # left-padded
        return user, history, context

    def candidates() -> tuple[Tensor, Tensor, Tensor]:
        lengths = torch.randint(max(1, lmax // 2), lmax + 1, (b, 1), generator=g)
        mask = torch.arange(lmax) < lengths  # (B, L) right-padded
        item_ids = ids(b, lmax) * mask
        item_feats = torch.randn(b, lmax, cfg.item_dim, generator=g) * mask.unsqueeze(-1)
        return item_ids, item_feats, mask

    user, history, context = state()
    item_ids, item_feats, mask = candidates()

    affinity = torch.einsum("bu,ui,bli->bl", torch.cat([user, context], 1), bilinear, item_feats)
    click_logit = affinity + id_bias[item_ids % 997] - 1.0  # (B, L)
    clicks = (torch.rand(b, lmax, generator=g) < torch.sigmoid(click_logit)).float() * mask
    log_dwell = 2.5 + item_feats @ dwell_w + 0.5 * torch.randn(b, lmax, generator=g)
    dwell = clicks * torch.exp(log_dwell)  # zero-inflated, log-normal when clicked

    action = torch.softmax(torch.randn(b, k, generator=g), dim=-1)
    done = (torch.rand(b, generator=g) < 0.1).float()
    alive = (1.0 - done).unsqueeze(-1)

    next_user, _, next_context = state()
    next_user = 0.8 * user + 0.2 * next_user  # users drift slowly
    # next history: the clicked items (last one, if any) are appended, oldest dropped
    last_click = torch.where(clicks.bool(), item_ids, 0).max(dim=1).values  # (B,)
    shifted = torch.cat([history[:, 1:], last_click.unsqueeze(1)], dim=1)
    next_history = torch.where(last_click.unsqueeze(1) > 0, shifted, history)
    next_item_ids, next_item_feats, next_mask = candidates()

    return ListBatch(
        user_feats=user,
        history=history,
        context=context,
        item_ids=item_ids,
        item_feats=item_feats,
        mask=mask,
        clicks=clicks,
        dwell=dwell,
        action=action,
        next_user_feats=next_user * alive,
        next_history=next_history * alive.long(),
        next_context=next_context * alive,
        next_item_ids=next_item_ids * alive.long(),
        next_item_feats=next_item_feats * alive.unsqueeze(-1),
        next_mask=next_mask & alive.bool(),
        done=done,
    )
