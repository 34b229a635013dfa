"""Featurization of schema records into model tensors (shared by serving and the learner)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from model.featurize import PADDING_ID, FeatureError, ListView, hash_id, list_inputs, transition_batch
from model.policy import ActorConfig
from model.ranker import RankerConfig
from model.scoring import ActorModel, score
from schemas.examples import TRANSITION

CFG = RankerConfig(
    user_dim=4,
    item_dim=4,
    context_dim=3,
    hash_buckets=97,
    d_model=16,
    n_heads=2,
    n_layers=1,
    history_len=2,
    max_list_len=5,
)


def test_hash_id_is_stable_and_in_range() -> None:
    # pinned values: a change here re-maps every embedding row of deployed models
    assert [hash_id(x, 1 << 16) for x in ("item-1", "item-2", "")] == [28889, 50966, 11437]
    values = [hash_id(f"i{n}", 50) for n in range(2000)]
    assert min(values) >= 1 and max(values) <= 49 and PADDING_ID == 0  # 0 stays padding
    assert len(set(values)) == 49  # spreads over every bucket
    with pytest.raises(ValueError):
        hash_id("x", 1)


def test_hash_id_does_not_depend_on_the_process() -> None:
    code = "from model.featurize import hash_id; print(hash_id('item-1', 65536))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) == hash_id("item-1", 65536)


def test_transition_batch_layout() -> None:
    done = dataclasses.replace(TRANSITION, transition_id="t2", next_state=None, done=True)
    batch = transition_batch([TRANSITION, done], CFG)
    s = TRANSITION.state
    assert batch.item_ids.shape == (2, 3) and batch.mask.all()
    assert batch.item_ids[0, 0].item() == hash_id(s.items[0].item_id, CFG.hash_buckets)
    # history keeps the most recent history_len items, most recent last
    assert batch.history[0].tolist() == [hash_id(x, CFG.hash_buckets) for x in s.history[-2:]]
    assert batch.clicks[0].tolist() == [float(c) for c in TRANSITION.labels.clicks]
    assert batch.dwell[0].tolist() == [d / 1000.0 for d in TRANSITION.labels.dwell_ms]
    assert torch.allclose(batch.action[0], torch.tensor(TRANSITION.action, dtype=torch.float32))
    assert batch.done.tolist() == [0.0, 1.0]
    assert not batch.next_mask[1].any() and batch.next_mask[0].all()


def test_lists_of_different_lengths_are_right_padded() -> None:
    view = ListView.of(TRANSITION.state)
    short = dataclasses.replace(
        view, item_ids=view.item_ids[:1], item_features=view.item_features[:1], history=[]
    )
    inputs = list_inputs([view, short], CFG)
    assert inputs.mask.tolist() == [[True, True, True], [True, False, False]]
    assert inputs.history[1].tolist() == [0, 0] and inputs.item_ids[1, 1:].tolist() == [0, 0]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"user_features": [1.0]}, "user_features"),
        ({"context": [1.0] * 4}, "context"),
        ({"item_features": [[1.0] * 4, [1.0] * 3, [1.0] * 4]}, "items[1].features"),
    ],
)
def test_width_mismatch_names_the_field(change: dict[str, object], field: str) -> None:
    view = dataclasses.replace(ListView.of(TRANSITION.state), **change)  # type: ignore[arg-type]
    with pytest.raises(FeatureError) as err:
        list_inputs([view], CFG)
    assert err.value.field == field


def test_featurized_batch_scores_without_nan_including_done_rows() -> None:
    torch.manual_seed(0)
    model = ActorModel(CFG, ActorConfig(obs_dim=16, action_dim=2, hidden=8))
    done = dataclasses.replace(TRANSITION, transition_id="t2", next_state=None, done=True)
    batch = transition_batch([TRANSITION, done], CFG)
    result = score(model, batch.inputs())
    assert torch.isfinite(result.scores).all()
    assert torch.isfinite(score(model, batch.next_inputs()).weights).all()
