"""The data-parallel Trainer (learner/distributed.py): 2 gloo ranks on CPU, each stepping on half
of a batch of 2B, end with the parameters one process gets from the batch of 2B."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from learner import distributed
from learner.checkpoint import CheckpointStore
from learner.training import PAPERecConfig, Trainer
from model.batch import ListBatch
from model.ranker import RankerConfig

TINY = RankerConfig.tiny()
HALF = 8
"""lists per rank; the single process steps on 2 * HALF"""
STEPS = 3
CASES: dict[str, dict[str, Any]] = {
    "fixed": {"strategy": "fixed"},
    "peltr": {"strategy": "peltr"},
    "peltr_full_params": {"strategy": "peltr", "grad_mode": "full_params", "grad_normalize": "loss"},
    "pareto": {"strategy": "paperec", "reward": "pareto"},
    "engagement": {"strategy": "paperec", "reward": "engagement"},
    "hybrid": {"strategy": "paperec", "reward": "hybrid"},
    "pareto_loss_norm": {"strategy": "paperec", "reward": "pareto", "grad_normalize": "loss"},
}
"""configs compared (each with the default running gradient scale unless named otherwise)"""


def config(**overrides: Any) -> PAPERecConfig:
    return PAPERecConfig(ranker=TINY, device="cpu", seed=3, **overrides)


def full_batches(n: int = STEPS, seed: int = 0) -> list[ListBatch]:
    g = torch.Generator().manual_seed(seed)
    return [ListBatch.synthetic(TINY, 2 * HALF, g) for _ in range(n)]


def share(batch: ListBatch, rank: int) -> ListBatch:
    return batch.select(slice(rank * HALF, (rank + 1) * HALF))


def trained(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every learned tensor: ranker, and the weight generator's four networks (paperec)."""
    out = {f"ranker.{k}": v for k, v in trainer.ranker.state_dict().items()}
    ddpg = getattr(trainer.strategy, "ddpg", None)
    if ddpg is not None:
        for name in ("actor", "qf", "actor_target", "qf_target"):
            out.update({f"{name}.{k}": v for k, v in getattr(ddpg, name).state_dict().items()})
    return {k: v.detach().clone() for k, v in out.items()}


def without_key_bias(name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` less the attention key bias (the middle third of a ``qkv.bias``): softmax is
    invariant to it, so its true gradient is 0 and what it gets is rounding noise, which Adam
    normalizes into steps of up to the learning rate whose sign depends on summation order."""
    if not name.endswith("qkv.bias"):
        return t
    q, _, v = t.chunk(3)
    return torch.cat([q, v])


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(distributed.loopback_env(rank, world, port))
    torch.set_num_threads(1)
    distributed.init(torch.device("cpu"), timeout_s=30)
    try:
        results: dict[str, Any] = {}
        for name, overrides in CASES.items():
            trainer = Trainer(config(**overrides))
            for batch in full_batches():
                trainer.step(share(batch, rank))
            results[name] = trained(trainer)
        # checkpoints: rank 0 writes (the existing store), every rank loads the same trainer state
        store = CheckpointStore(Path(out_dir) / "ckpt")
        trainer = Trainer(config(**CASES["pareto"]))
        for batch in full_batches():
            trainer.step(share(batch, rank))
        if rank == 0:
            store.save({"trainer": trainer.state_dict()}, trainer.num_steps)
        distributed.barrier()
        found = store.load_latest()
        assert found is not None
        resumed = Trainer(config(**CASES["pareto"]))
        resumed.load_state_dict(found[1]["trainer"])
        for batch in full_batches(seed=1):
            resumed.step(share(batch, rank))
        results["resumed"] = trained(resumed)
        # a non-finite row on one rank only: every rank refuses the step, and they stay in step
        trainer = Trainer(config(strategy="paperec"))
        bad = share(full_batches(1)[0], rank)
        if rank == 1:
            bad.user_feats[0, 0] = float("nan")
        metrics = trainer.step(bad)
        results["refused"] = {"nonfinite_step": metrics["nonfinite_step"], "num_steps": trainer.num_steps}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def rank_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the 2 ranks (one spawn for every test here: ~10 s) left their results."""
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank_main, args=(2, distributed.free_loopback_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.fixture(scope="module")
def ranks(rank_dir: Path) -> list[dict[str, Any]]:
    return [torch.load(rank_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_on_halves_equal_one_process_on_the_whole(ranks: list[dict[str, Any]], name: str) -> None:
    torch.set_num_threads(1)
    single = Trainer(config(**CASES[name]))
    before = trained(single)
    for batch in full_batches():
        single.step(batch)
    expected = trained(single)
    moved = max((expected[k] - before[k]).abs().max().item() for k in expected)
    assert moved > 1e-4, "the steps must change the parameters for the comparison to mean anything"
    for r, rank in enumerate(ranks):
        got = rank[name]
        assert got.keys() == expected.keys()
        for k in expected:
            g, e = without_key_bias(k, got[k]), without_key_bias(k, expected[k])
            assert torch.allclose(g, e, rtol=1e-4, atol=1e-5), f"rank {r}: {k} off by {(g - e).abs().max()}"
            # the key bias: within Adam's bound on the steps' total (lr per step)
            assert (got[k] - expected[k]).abs().max() <= STEPS * single.cfg.ranker_lr


def test_ranks_hold_identical_parameters(ranks: list[dict[str, Any]]) -> None:
    for name in CASES:
        for k, v in ranks[0][name].items():
            assert torch.equal(v, ranks[1][name][k]), f"{name}: {k} differs between ranks"


def test_a_bad_row_on_one_rank_refuses_the_step_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    assert [r["refused"] for r in ranks] == [{"nonfinite_step": 1.0, "num_steps": 0}] * 2


def test_without_a_process_group_the_collectives_are_the_identity() -> None:
    t = torch.arange(4.0)
    assert not distributed.active() and distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.average(t) is t and distributed.gather_cat(t, 0) is t
    assert distributed.any_rank(True) and not distributed.any_rank(False)


def test_a_checkpoint_of_two_ranks_resumes_in_one_process_and_in_two(
    ranks: list[dict[str, Any]], rank_dir: Path
) -> None:
    """The trainer state holds nothing per rank: rank 0's checkpoint, loaded by 2 ranks (above)
    and by 1 process, continues as the single process trained throughout would."""
    torch.set_num_threads(1)
    found = CheckpointStore(rank_dir / "ckpt").load_latest()
    assert found is not None, "rank 0 wrote a checkpoint"
    one = Trainer(config(**CASES["pareto"]))
    one.load_state_dict(found[1]["trainer"])
    single = Trainer(config(**CASES["pareto"]))
    for batch in full_batches():
        single.step(batch)
    for batch in full_batches(seed=1):
        one.step(batch)
        single.step(batch)
    expected = trained(single)
    for got in (trained(one), ranks[0]["resumed"], ranks[1]["resumed"]):
        for k in expected:
            g, e = without_key_bias(k, got[k]), without_key_bias(k, expected[k])
            assert torch.allclose(g, e, rtol=1e-4, atol=1e-5), f"{k} off by {(g - e).abs().max()}"
