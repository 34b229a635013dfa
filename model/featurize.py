"""Schema records -> model tensors: the one place where lists become (B, L, ...) tensors, and
where item ids become embedding indices (:func:`hash_id`).

The serving node featurizes the list it is asked to rank and the learner featurizes logged
transitions with the same code, so both see identical inputs for the same list (same hashing,
same padding, same history truncation).

Widths are checked, not padded: a feature vector of the wrong width means the producer and the
model disagree about the schema, and silently padding it would train on garbage. The error names
the offending field so the caller (HTTP 422, dead letter, dropped transition) can report it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model.batch import ListBatch, ListInputsBatch
from model.ranker import RankerConfig
from schemas import ListState, Transition

PADDING_ID = 0
"""Embedding index of padding (history slots, list positions); no item hashes to it."""


def hash_id(item_id: str, buckets: int) -> int:
    """Stable hash of ``item_id`` into ``1..buckets-1`` (0 is reserved for padding).

    blake2b, not Python's ``hash()``: the latter is salted per process, and the streams, the
    learner and every serving node must agree on the index of an item.
    """
    if buckets < 2:
        raise ValueError("buckets must be >= 2 (index 0 is padding)")
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (buckets - 1)


class FeatureError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ListView:
    """The model-relevant part of one list (a ListState, or a request being ranked)."""

    user_features: Sequence[float]
    history: Sequence[str]
    context: Sequence[float]
    item_ids: Sequence[str]
    item_features: Sequence[Sequence[float]]

    @classmethod
    def of(cls, state: ListState) -> ListView:
        return cls(
            state.user_features,
            state.history,
            state.context,
            [it.item_id for it in state.items],
            [it.features for it in state.items],
        )


def _check_width(values: Sequence[float], width: int, field: str) -> None:
    if len(values) != width:
        raise FeatureError(field, f"has {len(values)} values, the model expects {width}")


def list_inputs(views: Sequence[ListView], cfg: RankerConfig, list_len: int | None = None) -> ListInputsBatch:
    """Tensors of B lists, right-padded to the longest list (or ``list_len``).

    Built as padded Python lists and converted with one ``torch.tensor`` call per field: per-row
    tensor writes cost more than the conversion itself on the ingest and serving hot paths.
    """
    length = max((len(v.item_ids) for v in views), default=1) if list_len is None else list_len
    h, buckets = cfg.history_len, cfg.hash_buckets
    zero_item = [0.0] * cfg.item_dim
    history, item_ids, item_feats, mask = [], [], [], []
    for v in views:
        _check_width(v.user_features, cfg.user_dim, "user_features")
        _check_width(v.context, cfg.context_dim, "context")
        n = len(v.item_ids)
        if n > length:
            raise FeatureError("items", f"has {n} items, more than the list length {length}")
        for j, feats in enumerate(v.item_features):
            _check_width(feats, cfg.item_dim, f"items[{j}].features")
        recent = list(v.history)[-h:] if h else []
        # history left-padded (most recent last, as the ranker's GRU expects); lists right-padded
        history.append([PADDING_ID] * (h - len(recent)) + [_hash(x, buckets) for x in recent])
        item_ids.append([_hash(x, buckets) for x in v.item_ids] + [PADDING_ID] * (length - n))
        item_feats.append([*map(list, v.item_features), *([zero_item] * (length - n))])
        mask.append([True] * n + [False] * (length - n))
    b = len(views)
    return ListInputsBatch(
        user_feats=torch.tensor([list(v.user_features) for v in views], dtype=torch.float32).reshape(
            b, cfg.user_dim
        ),
        history=torch.tensor(history, dtype=torch.int64).reshape(b, h),
        context=torch.tensor([list(v.context) for v in views], dtype=torch.float32).reshape(
            b, cfg.context_dim
        ),
        item_ids=torch.tensor(item_ids, dtype=torch.int64).reshape(b, length),
        item_feats=torch.tensor(item_feats, dtype=torch.float32).reshape(b, length, cfg.item_dim),
        mask=torch.tensor(mask, dtype=torch.bool).reshape(b, length),
    )


@functools.lru_cache(maxsize=1 << 16)
def _hash(item_id: str, buckets: int) -> int:
    # Item ids repeat across lists and users: cache the blake2b hash of the hot ones.
    return hash_id(item_id, buckets)


def transition_batch(transitions: Sequence[Transition], cfg: RankerConfig) -> ListBatch:
    """A training batch from logged transitions (s' of a done transition is all padding)."""
    if not transitions:
        raise ValueError("empty batch")
    k = len(cfg.objectives)
    for t in transitions:
        if tuple(t.objectives) != tuple(cfg.objectives):
            raise FeatureError(
                "objectives", f"{list(t.objectives)} != model objectives {list(cfg.objectives)}"
            )
    length = max(max(len(t.state.items), len(t.next_state.items) if t.next_state else 0) for t in transitions)
    s = list_inputs([ListView.of(t.state) for t in transitions], cfg, length)
    empty = ListView([0.0] * cfg.user_dim, [], [0.0] * cfg.context_dim, [], [])
    s_next = list_inputs(
        [ListView.of(t.next_state) if t.next_state else empty for t in transitions], cfg, length
    )
    b = len(transitions)

    def padded(values: Sequence[int]) -> list[int]:
        return [*values, *([0] * (length - len(values)))]

    clicks = torch.tensor([padded(t.labels.clicks) for t in transitions], dtype=torch.float32).reshape(
        b, length
    )
    dwell_ms = torch.tensor([padded(t.labels.dwell_ms) for t in transitions], dtype=torch.float32)
    dwell = dwell_ms.reshape(b, length) / 1000.0  # seconds
    action = torch.tensor([list(t.action) for t in transitions], dtype=torch.float32).reshape(b, k)
    done = torch.tensor([float(t.done) for t in transitions])
    return ListBatch(
        user_feats=s.user_feats,
        history=s.history,
        context=s.context,
        item_ids=s.item_ids,
        item_feats=s.item_feats,
        mask=s.mask,
        clicks=clicks,
        dwell=dwell,
        action=action,
        next_user_feats=s_next.user_feats,
        next_history=s_next.history,
        next_context=s_next.context,
        next_item_ids=s_next.item_ids,
        next_item_feats=s_next.item_feats,
        next_mask=s_next.mask,
        done=done,
    )
