"""Serving-side scoring: the ranking, the normalization, noise logging, rebuild from config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load, save

from learner.training import PAPERecConfig, Trainer
from model.batch import ListBatch
from model.policy import ActorConfig
from model.ranker import RankerConfig
from model.scoring import ActorModel, normalized_values, score


def model_and_inputs() -> tuple[ActorModel, ListBatch]:
    cfg = RankerConfig.tiny(max_list_len=8)
    torch.manual_seed(0)
    model = ActorModel(cfg, ActorConfig(obs_dim=cfg.d_model, action_dim=2)).eval()
    return model, ListBatch.synthetic(cfg, 10, torch.Generator().manual_seed(0))


def test_score_shapes_and_ranking() -> None:
    model, batch = model_and_inputs()
    out = score(model, batch.inputs())
    b, n = batch.item_ids.shape
    assert out.weights.shape == out.noise.shape == (b, 2)
    assert out.preds.shape == (b, n, 2)
    assert out.scores.shape == out.ranking.shape == (b, n)
    assert torch.equal(out.noise, torch.zeros(b, 2))
    assert torch.allclose(out.weights.sum(-1), torch.ones(b))
    assert ((out.preds[..., 0] >= 0) & (out.preds[..., 0] <= 1)).all()  # click probability
    assert (out.preds[..., 1] > 0).all()  # expected dwell seconds
    assert torch.isinf(out.scores[~batch.mask]).all() and torch.isfinite(out.scores[batch.mask]).all()
    ranked = out.scores.gather(1, out.ranking)
    assert (ranked.diff(dim=1)[torch.isfinite(ranked[:, 1:])] <= 0).all()  # descending
    n_valid = batch.mask.sum(1)
    for row in range(b):  # padding last
        assert batch.mask[row, out.ranking[row, : n_valid[row]]].all()
        assert not batch.mask[row, out.ranking[row, n_valid[row] :]].any()


def test_score_is_the_weighted_sum_of_normalized_predictions() -> None:
    model, batch = model_and_inputs()
    out = score(model, batch)
    norm = normalized_values(model, out.preds, batch.mask)
    assert torch.allclose(norm[..., 0][batch.mask], out.preds[..., 0][batch.mask])  # click as is
    assert torch.allclose(norm[..., 1].amax(1), torch.ones(10))  # dwell: best item = 1
    expected = (norm * out.weights.unsqueeze(1)).sum(-1)
    assert torch.allclose(out.scores[batch.mask], expected[batch.mask])


def test_padding_content_does_not_change_scores() -> None:
    model, batch = model_and_inputs()
    other = batch.clone()
    other.item_feats[~other.mask] = 9.0
    other.item_ids[~other.mask] = 42
    a, b = score(model, batch), score(model, other)
    assert torch.allclose(a.scores, b.scores) and torch.equal(a.ranking, b.ranking)


def test_exploration_noise_is_seeded_and_logged() -> None:
    model, batch = model_and_inputs()
    a = score(model, batch, 0.5, generator=torch.Generator().manual_seed(3))  # a float: plain noise std
    b = score(model, batch, 0.5, generator=torch.Generator().manual_seed(3))
    clean = score(model, batch)
    assert torch.equal(a.weights, b.weights) and torch.equal(a.noise, b.noise)
    assert a.noise.abs().sum() > 0 and not torch.allclose(a.weights, clean.weights)
    state = model.ranker.user_state(batch.user_feats, batch.history, batch.context)
    with torch.no_grad():
        logits = model.actor.net(state)
    assert torch.allclose(a.weights, torch.softmax(logits + a.noise, -1), atol=1e-6)


def test_rebuild_from_config_and_safetensors() -> None:
    model, batch = model_and_inputs()
    header = json.dumps(model.model_config())
    blob = save({k: v.contiguous() for k, v in model.state_dict().items()})
    rebuilt = ActorModel.from_config(json.loads(header))
    rebuilt.load_state_dict(load(blob))
    assert not rebuilt.training
    a, b = score(model, batch), score(rebuilt, batch)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.weights, b.weights)
    with pytest.raises(ValueError):
        ActorModel(RankerConfig.tiny(), ActorConfig(obs_dim=3, action_dim=2))


def test_trainer_exports_the_serving_model() -> None:
    cfg = PAPERecConfig(ranker=RankerConfig.tiny(), device="cpu")
    trainer = Trainer(cfg)
    batch = ListBatch.synthetic(cfg.ranker, 4, torch.Generator().manual_seed(0))
    trainer.step(batch)
    model = trainer.actor_model()
    out = score(model, batch)
    assert model.actor.cfg.obs == cfg.policy_state == "features"
    with torch.no_grad():
        obs = torch.cat([batch.user_feats, batch.context], -1)  # what the generator reads
        assert torch.allclose(out.weights, trainer.strategy.ddpg.actor(obs))  # type: ignore[attr-defined]


def test_scoring_imports_no_training_code() -> None:
    code = (
        "import sys, model.scoring; "
        "bad = [m for m in ('learner.training', 'learner.ddpg', 'learner.grads', 'learner.mgda') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
