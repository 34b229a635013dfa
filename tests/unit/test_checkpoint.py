"""Learner checkpoints: atomic writes, fallback to an older file, no code execution on load, and
a resume that continues training bit-identically (trainer + replay buffer + offsets)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import learner.checkpoint as checkpoint_mod
from learner.checkpoint import CheckpointStore, load
from learner.devtools import ListDeadLetters, MemorySource, encoded, synthetic_transitions
from learner.ingest import Ingestor, IngestStats, PreparingSource
from learner.replay_buffer import ReplayBuffer
from learner.training import PAPERecConfig, Trainer
from model.ranker import RankerConfig

CFG = RankerConfig.tiny()


def test_save_load_round_trip_and_pruning(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ck", keep=2)
    assert store.load_latest() is None
    for step in (5, 10, 15):
        store.save({"step": step, "t": torch.arange(3) * step, "offsets": {0: step}}, step)
    assert [p.name for p in store.paths()] == ["ckpt-000000000015.pt", "ckpt-000000000010.pt"]
    found = store.load_latest()
    assert found is not None
    path, state = found
    assert path.name == "ckpt-000000000015.pt"
    assert (
        state["step"] == 15 and state["offsets"] == {0: 15} and torch.equal(state["t"], torch.arange(3) * 15)
    )


def test_a_crash_while_writing_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    store.save({"step": 1}, 1)

    def torn_save(obj: Any, f: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_mod.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        store.save({"step": 2}, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000000000001.pt"]  # no temp file left
    found = store.load_latest()
    assert found is not None and found[1]["step"] == 1


def test_an_unreadable_newest_checkpoint_falls_back_to_the_older(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    store.save({"step": 1}, 1)
    (tmp_path / "ckpt-000000000002.pt").write_bytes(b"garbage")
    found = store.load_latest()
    assert found is not None and found[1]["step"] == 1


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("pwned",))


def test_loading_never_unpickles_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "ckpt-000000000003.pt"
    torch.save({"format": checkpoint_mod.FORMAT_VERSION, "x": Evil()}, path)
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|global"):
        load(path)
    assert CheckpointStore(tmp_path).load_latest() is None


def _parts(seed: int = 0) -> tuple[Trainer, ReplayBuffer, Ingestor, MemorySource]:
    trainer = Trainer(PAPERecConfig(ranker=CFG, device="cpu", seed=seed))
    buffer = ReplayBuffer(CFG, 100, seed=seed)
    ts = synthetic_transitions(CFG, 150, seed=4)
    source = MemorySource(encoded(ts))
    ingestor = Ingestor(PreparingSource(source, CFG), buffer, CFG, ListDeadLetters(), chunk_size=50)
    return trainer, buffer, ingestor, source


def test_resume_from_a_checkpoint_continues_bit_identically(tmp_path: Path) -> None:
    trainer, buffer, ingestor, source = _parts()
    ingestor.ingest(source.poll(0, 50))
    ingestor.ingest(source.poll(0, 50))
    for _ in range(3):
        trainer.step(buffer.sample(16).batch)
    buffer_state, positions, stats = ingestor.checkpoint_state()
    store = CheckpointStore(tmp_path)
    store.save(
        {
            "trainer": trainer.state_dict(),
            "buffer": buffer_state,
            "offsets": positions,
            "ingest": dataclasses.asdict(stats),
        },
        trainer.num_steps,
    )
    # the original goes on: more data, more steps
    ingestor.ingest(source.poll(0, 50))
    expected = [trainer.step(buffer.sample(16).batch) for _ in range(3)]

    # a new process: fresh objects (another seed even), state from the file, source at the offsets
    trainer2, buffer2, _, _ = _parts(seed=123)
    found = store.load_latest()
    assert found is not None
    state = found[1]
    trainer2.load_state_dict(state["trainer"])
    buffer2.load_state_dict(state["buffer"])
    source2 = MemorySource(source.values)
    source2.seek(state["offsets"])
    ingestor2 = Ingestor(
        PreparingSource(source2, CFG),
        buffer2,
        CFG,
        ListDeadLetters(),
        chunk_size=50,
        stats=IngestStats(**state["ingest"]),
    )
    assert state["offsets"] == {0: 100} and trainer2.num_steps == 3
    ingestor2.ingest(source2.poll(0, 50))
    got = [trainer2.step(buffer2.sample(16).batch) for _ in range(3)]
    assert got == expected
    assert ingestor2.stats == ingestor.stats and ingestor2.positions == ingestor.positions
    for a, b in zip(trainer.ranker.parameters(), trainer2.ranker.parameters(), strict=True):
        assert torch.equal(a, b)


def test_one_learner_per_checkpoint_directory(tmp_path: Path) -> None:
    first, second = CheckpointStore(tmp_path), CheckpointStore(tmp_path)
    first.lock()
    with pytest.raises(RuntimeError, match="another learner"):
        second.lock()
    first.unlock()
    second.lock()
    second.unlock()
