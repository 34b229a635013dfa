"""The ranker: shapes, list independence (MGDA-UB's premise), losses, K != 2."""

from __future__ import annotations

import pytest
import torch

from model.batch import ListBatch
from model.objectives import OBJECTIVES, Click, build_objective, register
from model.ranker import Ranker, RankerConfig

if "click_copy" not in OBJECTIVES:

    @register
    class ClickCopy(Click):
        """A third objective, to check that nothing assumes K = 2."""

        name = "click_copy"


def make(**overrides: object) -> tuple[Ranker, ListBatch]:
    cfg = RankerConfig.tiny(**overrides)
    torch.manual_seed(0)
    return Ranker(cfg), ListBatch.synthetic(cfg, 7, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("objectives", [("click", "dwell"), ("click", "dwell", "click_copy"), ("dwell",)])
def test_shapes(objectives: tuple[str, ...]) -> None:
    ranker, batch = make(objectives=objectives)
    cfg, k = ranker.cfg, len(objectives)
    state = ranker.user_state(batch.user_feats, batch.history, batch.context)
    assert state.shape == (7, cfg.d_model)
    h = ranker.encode(batch, user_state=state)
    assert h.shape == (7, cfg.max_list_len, cfg.d_model)
    assert torch.allclose(h, ranker.encode(batch))
    preds = ranker.heads(h)
    assert preds.shape == (7, cfg.max_list_len, k)
    losses = ranker.losses_per_list(preds, batch)
    assert losses.shape == (7, k) and torch.isfinite(losses).all() and (losses >= 0).all()
    assert ranker.values(preds).shape == preds.shape


def test_lists_are_independent_and_padding_is_ignored() -> None:
    ranker, batch = make()
    h = ranker.encode(batch)
    other = batch.clone()
    other.item_feats[1:] = torch.randn_like(other.item_feats[1:])  # change every other list
    other.history[1:] = 3
    pad = ~other.mask[0]
    other.item_feats[0][pad] = 5.0  # and list 0's padding
    other.item_ids[0][pad] = 17
    h2 = ranker.encode(other)
    valid = batch.mask[0]
    assert torch.allclose(h[0][valid], h2[0][valid], atol=1e-6)
    assert not torch.allclose(h[1], h2[1])


def test_losses_are_masked_means() -> None:
    ranker, batch = make()
    preds = ranker(batch)
    losses = ranker.losses_per_list(preds, batch)
    click = Click(ranker.cfg)
    for b in range(batch.batch_size):
        m = batch.mask[b]
        expected = click.loss(preds[b, m, 0], batch.clicks[b, m]).mean()
        assert losses[b, 0].item() == pytest.approx(expected.item(), rel=1e-5)
    empty = batch.clone()
    empty.mask[0] = False
    assert ranker.losses_per_list(preds, empty)[0].abs().sum() == 0


def test_dwell_tweedie_deviance() -> None:
    dwell = build_objective("dwell", RankerConfig())
    y = torch.tensor([0.0, 0.0, 15.0, 120.0])
    log_mu = torch.linspace(-6, 4, 2001).unsqueeze(1).expand(-1, 4)
    loss = dwell.loss(log_mu, y.expand_as(log_mu))
    assert (loss >= -1e-5).all()
    best = dwell.value(log_mu[loss.argmin(0), torch.arange(4)])
    assert best[2].item() == pytest.approx(15.0, rel=0.02)  # minimized at mu = y
    assert best[3].item() == pytest.approx(120.0, rel=0.02)
    assert best[0].item() < 0.2  # zeros push the mean down
    with pytest.raises(ValueError):
        build_objective("no_such_objective", RankerConfig())


def test_state_dict_round_trip() -> None:
    ranker, batch = make()
    clone = Ranker(ranker.cfg)
    clone.load_state_dict(ranker.state_dict())
    assert torch.equal(clone(batch), ranker(batch))
