"""The batch contract and config dict round trips (feature hashing: test_featurize.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from learner.training import PAPERecConfig
from model.batch import ListBatch
from model.config import config_from_dict, config_to_dict
from model.ranker import RankerConfig


def test_synthetic_batch_follows_the_contract() -> None:
    cfg = RankerConfig.tiny()
    b, h, lmax, k = 16, cfg.history_len, cfg.max_list_len, len(cfg.objectives)
    batch = ListBatch.synthetic(cfg, b, torch.Generator().manual_seed(0))
    shapes = {
        "user_feats": ((b, cfg.user_dim), torch.float32),
        "history": ((b, h), torch.int64),
        "context": ((b, cfg.context_dim), torch.float32),
        "item_ids": ((b, lmax), torch.int64),
        "item_feats": ((b, lmax, cfg.item_dim), torch.float32),
        "mask": ((b, lmax), torch.bool),
        "clicks": ((b, lmax), torch.float32),
        "dwell": ((b, lmax), torch.float32),
        "action": ((b, k), torch.float32),
        "done": ((b,), torch.float32),
    }
    for name, (shape, dtype) in shapes.items():
        value = getattr(batch, name)
        assert value.shape == shape and value.dtype == dtype, name
        if not name.startswith("next") and name not in ("action", "done", "clicks", "dwell"):
            nxt = getattr(batch, f"next_{name}")
            assert nxt.shape == shape and nxt.dtype == dtype, name
    assert ((batch.item_ids > 0) == batch.mask).all()  # 0 = padding
    assert batch.mask[:, 0].all()  # right-padded, never empty
    assert ((batch.dwell > 0) == (batch.clicks > 0)).all()  # zero-inflated
    assert (batch.clicks[~batch.mask] == 0).all()
    assert torch.allclose(batch.action.sum(-1), torch.ones(b)) and (batch.action > 0).all()
    done = batch.done.bool()
    assert (batch.next_user_feats[done] == 0).all() and not batch.next_mask[done].any()
    assert ((batch.history > 0).long().diff(dim=1) >= 0).all()  # left-padded history


def test_synthetic_is_seeded_and_select_and_to_work() -> None:
    cfg = RankerConfig.tiny()
    a = ListBatch.synthetic(cfg, 8, torch.Generator().manual_seed(1))
    b = ListBatch.synthetic(cfg, 8, torch.Generator().manual_seed(1))
    for f in dataclasses.fields(a):
        assert torch.equal(getattr(a, f.name), getattr(b, f.name))
    one = a.select(slice(2, 3))
    assert one.batch_size == 1 and torch.equal(one.item_feats[0], a.item_feats[2])
    assert a.to("cpu").batch_size == 8
    assert torch.equal(a.inputs().item_ids, a.item_ids)
    assert torch.equal(a.next_inputs().history, a.next_history)


def test_config_dict_round_trip_is_json_able() -> None:
    cfg = PAPERecConfig(ranker=RankerConfig.tiny(objectives=("click", "dwell")), fixed_weights=(0.3, 0.7))
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(PAPERecConfig, data) == cfg
    with pytest.raises(ValueError):
        config_from_dict(RankerConfig, {"no_such_field": 1})
