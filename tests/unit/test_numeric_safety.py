"""Numerically safe learning (docs/hardening.md section 1), without Kafka: the schemas' bound,
refused non-finite steps, quarantined rows, and weights that are never kept when non-finite."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import torch

import schemas
from learner.devtools import encoded, synthetic_transitions
from learner.ingest import RawRecord, prepare
from learner.numeric import FiniteGuard, nonfinite_fields, nonfinite_rows
from learner.replay_buffer import ReplayBuffer
from learner.training import PAPERecConfig, Trainer
from model.batch import ListBatch
from model.featurize import transition_batch
from model.ranker import RankerConfig
from model.runtime import torch_threads
from schemas import MAX_ABS_NUMBER, SchemaError, decode_dead_letter

CFG = RankerConfig.tiny()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def trainer() -> Trainer:
    return Trainer(PAPERecConfig(ranker=CFG, device="cpu"))


def batch(size: int = 8, seed: int = 0) -> ListBatch:
    return ListBatch.synthetic(CFG, size, torch.Generator().manual_seed(seed))


def state_of(t: Trainer) -> dict[str, Any]:
    """Everything a step may change, copied (num_steps and counters left out)."""
    s = copy.deepcopy(t.state_dict())
    s.pop("num_steps"), s.pop("nonfinite_steps")
    return s


def assert_same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


# ---------------------------------------------------------------------- the schemas' bound
def test_the_bound_keeps_featurized_float32_values_and_their_products_finite() -> None:
    # the bound itself, 1024 of them through a linear layer of unit weights, and its square
    x = torch.full((1, 1024), MAX_ABS_NUMBER, dtype=torch.float32)
    s = x @ torch.ones(1024, 1)
    assert torch.isfinite(x).all() and torch.isfinite(s).all() and torch.isfinite(s * s).all()
    # the largest ints accepted convert exactly to float64
    assert float(int(MAX_ABS_NUMBER)) == MAX_ABS_NUMBER and int(MAX_ABS_NUMBER) < 2**53


def test_a_huge_feature_is_a_schema_error_naming_the_field() -> None:
    d = orjson.loads(encoded(synthetic_transitions(CFG, 1))[0])
    d["state"]["items"][1]["features"][0] = 1e300
    with pytest.raises(SchemaError) as info:
        schemas.decode_transition(orjson.dumps(d))
    assert info.value.field == "state.items[1].features[0]" and "1e+15" in info.value.reason


def test_the_api_bounds_every_number_with_the_same_constant() -> None:
    from pydantic import ValidationError

    from actor_service.api import RankRequest, field_errors

    body = {
        "user_id": "u",
        "user_features": [0.5, -MAX_ABS_NUMBER],
        "context": [MAX_ABS_NUMBER * 1.01],
        "items": [{"item_id": "a", "features": [1.0]}, {"item_id": "b", "features": [1e300]}],
    }
    with pytest.raises(ValidationError) as info:
        RankRequest.model_validate_json(orjson.dumps(body))
    assert [e["field"] for e in field_errors(info.value.errors())] == ["context[0]", "items[1].features[0]"]


# ---------------------------------------------------------------------- ingest
def test_ingest_dead_letters_an_out_of_range_transition_with_its_field() -> None:
    values = encoded(synthetic_transitions(CFG, 3))
    d = orjson.loads(values[1])
    d["next_state"]["user_features"][2] = -1e300
    values[1] = orjson.dumps(d)
    chunk = prepare([RawRecord("t", 0, i, b"k", v) for i, v in enumerate(values)], CFG)
    assert chunk.batch is not None and chunk.batch.batch_size == 2 and len(chunk.ids) == 2
    [letter] = [decode_dead_letter(v) for v, _ in chunk.dead_letters]
    assert letter.error_field == "next_state.user_features[2]" and letter.source_offset == 1


def test_ingest_drops_and_dead_letters_a_row_that_featurizes_non_finite(monkeypatch: Any) -> None:
    import learner.ingest as ingest

    def poisoned(ts: Any, cfg: RankerConfig) -> ListBatch:
        b = transition_batch(ts, cfg)
        if b.batch_size > 1:
            b.dwell[1, 0] = float("inf")  # as if featurizing had overflowed for row 1
        return b

    monkeypatch.setattr(ingest, "transition_batch", poisoned)
    values = encoded(synthetic_transitions(CFG, 3))
    chunk = prepare([RawRecord("t", 0, i, b"k", v) for i, v in enumerate(values)], CFG)
    assert chunk.batch is not None and chunk.batch.batch_size == 2
    assert not nonfinite_rows(chunk.batch).any()
    [letter] = [decode_dead_letter(v) for v, _ in chunk.dead_letters]
    assert letter.source_offset == 1 and letter.error_field == "dwell"


def test_nonfinite_rows_and_fields() -> None:
    b = batch(4)
    b.item_feats[2, 0, 1] = float("nan")
    b.next_context[2, 0] = float("-inf")
    assert nonfinite_rows(b).tolist() == [False, False, True, False]
    assert nonfinite_fields(b, 2) == ["item_feats", "next_context"] and nonfinite_fields(b, 0) == []


# ---------------------------------------------------------------------- training step
def test_a_batch_with_an_inf_feature_changes_no_parameter_and_is_counted() -> None:
    t = trainer()
    t.step(batch(seed=1))  # optimizer states exist: they must not move either
    before, steps = state_of(t), t.num_steps
    bad = batch(seed=2)
    bad.item_feats[3, 0, 0] = float("inf")
    metrics = t.step(bad)
    assert metrics == {"nonfinite_rows": 1.0, "nonfinite_step": 1.0}
    assert t.nonfinite_steps == 1 and t.num_steps == steps
    assert_same(before, state_of(t))
    assert t.step(batch(seed=3))["nonfinite_step"] == 0.0 and t.num_steps == steps + 1


def _poison_grad(param: torch.Tensor) -> Any:
    return param.register_hook(lambda g: torch.full_like(g, float("nan")))


def test_a_non_finite_ranker_gradient_undoes_the_critic_and_actor_steps_too() -> None:
    """The weight generator steps inside the strategy, before the ranker's gradients exist: a
    refused ranker step must put them back (no partial update)."""
    t = trainer()
    t.step(batch(seed=1))
    before = state_of(t)
    hook = _poison_grad(t.ranker.item_proj.weight)
    metrics = t.step(batch(seed=2))
    hook.remove()
    assert metrics == {"nonfinite_step": 1.0} and t.nonfinite_steps == 1
    assert_same(before, state_of(t))


def test_a_non_finite_actor_gradient_undoes_the_critic_step() -> None:
    t = trainer()
    t.step(batch(seed=1))
    before = state_of(t)
    ddpg = t.strategy.ddpg  # type: ignore[attr-defined]
    hook = _poison_grad(next(ddpg.actor.parameters()))
    assert t.step(batch(seed=2))["nonfinite_step"] == 1.0
    hook.remove()
    assert_same(before, state_of(t))


def test_ddpg_skips_its_critic_step_on_a_non_finite_reward() -> None:
    ddpg = trainer().strategy.ddpg  # type: ignore[attr-defined]
    before = copy.deepcopy(ddpg.state_dict())
    obs = torch.randn(4, ddpg.cfg.obs_dim, generator=torch.Generator().manual_seed(0))
    actions = torch.full((4, ddpg.cfg.action_dim), 1.0 / ddpg.cfg.action_dim)
    rewards = torch.tensor([0.0, float("nan"), 0.0, 0.0])
    assert ddpg.update(obs, actions, rewards, obs, torch.zeros(4)) == {"nonfinite_step": 1.0}
    assert_same(before, ddpg.state_dict())


# ---------------------------------------------------------------------- replay buffer
def test_the_buffer_quarantines_non_finite_rows_by_slot() -> None:
    buf = ReplayBuffer(CFG, 8, seed=0)
    rows = batch(6)
    rows.context[4, 0] = float("nan")  # got in somehow
    buf.add(rows, [f"t{i}" for i in range(6)], list(range(6)))
    sample = buf.sample(64)
    assert sample.slots is not None and 4 in sample.slots.tolist()
    assert buf.quarantine_nonfinite(sample.slots) == 1  # only the bad one of the sampled slots
    assert len(buf) == 5 and buf.stats.quarantined == 1
    for _ in range(5):
        s = buf.sample(64)
        assert s.slots is not None and 4 not in s.slots.tolist() and not nonfinite_rows(s.batch).any()
    state = buf.state_dict()
    assert state["rows"]["context"].shape[0] == 5 and torch.isfinite(state["rows"]["context"]).all()
    # the ring overwrites the slot in turn: a good row there is sampled again
    buf.add(batch(3, seed=9), ["u0", "u1", "u2"], [7, 8, 9])  # slots 6, 7, 0
    buf.add(batch(5, seed=8), [f"v{i}" for i in range(5)], [1] * 5)  # slots 1..5
    assert len(buf) == 8 and buf.quarantine_nonfinite(torch.arange(8)) == 0


# ---------------------------------------------------------------------- never keep non-finite weights
def test_the_guard_refuses_non_finite_weights_and_restores_the_last_good_state() -> None:
    t = trainer()
    guard = FiniteGuard(t)
    t.step(batch(seed=1))
    assert guard.verify("snapshot")  # finite: remembered
    good = state_of(t)
    t.step(batch(seed=2))
    steps = t.num_steps
    with torch.no_grad():
        next(t.ranker.parameters()).view(-1)[0] = float("nan")
    assert not t.weights_finite()
    assert not guard.verify("snapshot") and guard.refused == 1
    assert t.weights_finite() and t.num_steps == steps  # step count never goes back
    assert_same(good, state_of(t))
    t.step(batch(seed=3))  # and training goes on
    assert t.weights_finite() and t.num_steps == steps + 1


def test_the_guard_checks_the_weight_generator_too() -> None:
    t = trainer()
    guard = FiniteGuard(t)
    with torch.no_grad():
        next(t.strategy.ddpg.qf_target.parameters()).view(-1)[0] = float("inf")  # type: ignore[attr-defined]
    assert not guard.verify("checkpoint") and t.weights_finite()


def test_nonfinite_steps_survive_a_checkpoint() -> None:
    t = trainer()
    bad = batch()
    bad.dwell[0, 0] = float("nan")
    t.step(bad)
    other = trainer()
    other.load_state_dict(copy.deepcopy(t.state_dict()))
    assert other.nonfinite_steps == 1
    legacy = t.state_dict()
    del legacy["nonfinite_steps"]  # a checkpoint written before the counter existed
    other.load_state_dict(legacy)
    assert other.nonfinite_steps == 0
