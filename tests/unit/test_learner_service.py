"""The learner service's parts without Kafka: ingestion (dedup, dead letters, offsets, the
thread), metric aggregation, and the generated command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import orjson
import pytest
import torch

from base.config_flags import add_config_flags, build_config, field_docs
from learner.cli import configure
from learner.devtools import ListDeadLetters, MemorySource, encoded, synthetic_transitions
from learner.ingest import Ingestor, PreparingSource, RawRecord
from learner.learner_metrics import LearnerMetrics, split_name, weight_stats
from learner.replay_buffer import ReplayBuffer
from learner.service import LearnerServiceConfig
from learner.training import PAPERecConfig, Trainer
from model.batch import ListBatch
from model.ranker import RankerConfig
from schemas import decode_dead_letter, encode

CFG = RankerConfig.tiny()


def _ingestor(
    values: list[bytes], capacity: int = 100, **kw: Any
) -> tuple[Ingestor, ReplayBuffer, ListDeadLetters]:
    buffer = ReplayBuffer(CFG, capacity)
    sink = ListDeadLetters()
    source = PreparingSource(MemorySource(values), CFG, buffer.unseen)
    return Ingestor(source, buffer, CFG, sink, **kw), buffer, sink


def _records(ingestor: Ingestor) -> MemorySource:
    source = ingestor.source
    assert isinstance(source, PreparingSource) and isinstance(source.records, MemorySource)
    return source.records


# ---------------------------------------------------------------------- ingestion
def test_bad_records_go_to_dead_letters_and_the_rest_is_stored() -> None:
    good = synthetic_transitions(CFG, 6, seed=1)
    wide = dataclasses.replace(CFG, user_dim=CFG.user_dim + 2)  # fine for the schema, not the model
    mismatched = synthetic_transitions(wide, 1, seed=2, id_prefix="wide")[0]
    values = [*encoded(good[:3]), b"{not json", encode(mismatched), *encoded(good[3:])]
    ingestor, buffer, sink = _ingestor(values)
    records = [RawRecord("paperec.transitions", 2, 40 + i, b"k", v) for i, v in enumerate(values)]
    ingestor.ingest(records)
    assert len(buffer) == 6 and ingestor.stats.transitions == 6
    assert ingestor.stats.dead_letters == 2 and ingestor.stats.records == 8
    assert ingestor.positions[2] == 48  # past every record, bad ones included
    letters = [decode_dead_letter(v) for v, _ in sink.sent]
    assert [(d.source_partition, d.source_offset) for d in letters] == [(2, 43), (2, 44)]
    assert letters[0].error_field == "$" and "JSON" in letters[0].reason
    assert letters[1].error_field == "user_features" and "expects 6" in letters[1].reason
    assert all(d.stage == "learner.ingest" and d.source_topic == "paperec.transitions" for d in letters)
    assert orjson.loads(letters[1].raw)["transition_id"] == mismatched.transition_id


def test_duplicates_are_dropped_before_featurizing_and_counted() -> None:
    ts = synthetic_transitions(CFG, 5)
    values = encoded(ts) + encoded(ts[:2])
    ingestor, buffer, _ = _ingestor(values)
    src = _records(ingestor)
    ingestor.ingest(src.poll(0, 5))
    ingestor.ingest(src.poll(0, 5))
    assert len(buffer) == 5 and ingestor.stats.duplicates == 2 and ingestor.positions == {0: 7}
    assert ingestor.stats.max_ts_ms == max(t.ts_ms for t in ts)


def test_the_ingest_thread_fills_the_buffer_and_commits_on_request() -> None:
    ts = synthetic_transitions(CFG, 120)
    ingestor, buffer, _ = _ingestor(encoded(ts), capacity=200, chunk_size=32)
    ingestor.start()
    deadline = time.monotonic() + 30
    while ingestor.stats.records < 120 and time.monotonic() < deadline:
        time.sleep(0.02)
    _, positions, stats = ingestor.checkpoint_state(contents=False)
    assert positions == {0: 120} and stats.transitions == 120 and len(buffer) == 120
    ingestor.request_commit(positions)
    deadline = time.monotonic() + 10
    src = _records(ingestor)
    while not src.committed and time.monotonic() < deadline:
        time.sleep(0.02)
    ingestor.stop()
    ingestor.close()
    assert src.committed == {0: 120} and src.closed and not ingestor.alive


def test_a_failing_chunk_is_rewound_and_read_again() -> None:
    ts = synthetic_transitions(CFG, 40)
    ingestor, buffer, _ = _ingestor(encoded(ts), chunk_size=10)
    real_store, calls = ingestor.store, {"n": 0}

    def flaky(chunk: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated failure")
        real_store(chunk)

    ingestor.store = flaky  # type: ignore[method-assign]
    ingestor._stop.wait = lambda _t=None: False  # type: ignore[method-assign, assignment]  # no backoff sleep
    ingestor.start()
    deadline = time.monotonic() + 30
    while ingestor.stats.records < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    ingestor.stop()
    assert ingestor.stats.errors == 1 and len(buffer) == 40 and ingestor.positions == {0: 40}


def test_max_rate_throttles_ingestion() -> None:
    ts = synthetic_transitions(CFG, 30)
    ingestor, _, _ = _ingestor(encoded(ts), chunk_size=10, max_rate=50.0)
    start = time.monotonic()
    ingestor.start()
    while ingestor.stats.records < 30 and time.monotonic() - start < 10:
        time.sleep(0.01)
    # chunks of 10 at 50/s: the 2nd and 3rd wait until 0.2 s and 0.4 s after the start
    assert time.monotonic() - start >= 0.35
    ingestor.stop()


# ---------------------------------------------------------------------- metrics
class FakeWriter:
    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.closed = False

    def add(self, row: tuple[Any, ...]) -> None:
        self.rows.append(row)

    def close(self, timeout_s: float = 5.0) -> None:
        self.closed = True


def test_metrics_are_averaged_per_interval_and_named_with_labels() -> None:
    now = [0.0]
    writer = FakeWriter()
    m = LearnerMetrics("learner:test", writer, interval_s=5.0, clock=lambda: now[0])
    m.observe({"loss/click": 1.0, "qf_loss": 0.5})
    m.observe({"loss/click": 3.0, "qf_loss": 1.5})
    m.gauge("buffer_size", 10)
    assert not m.due()
    now[0] = 5.0
    assert m.due() and m.flush() == 3
    got = {(r[2], r[3]): r[4] for r in writer.rows}
    assert got == {("loss", "click"): 2.0, ("critic_loss", ""): 1.0, ("buffer_size", ""): 10.0}
    assert all(r[1] == "learner:test" for r in writer.rows)
    assert split_name("weight_std/dwell") == ("weight_std", "dwell")
    m.close()
    assert writer.closed


def test_weight_stats_spread_across_users() -> None:
    trainer = Trainer(PAPERecConfig(ranker=CFG, device="cpu"))
    batch = ListBatch.synthetic(CFG, 32, torch.Generator().manual_seed(0))
    stats = weight_stats(trainer, batch)
    assert set(stats) == {"weight_mean/click", "weight_mean/dwell", "weight_std/click", "weight_std/dwell"}
    assert abs(stats["weight_mean/click"] + stats["weight_mean/dwell"] - 1.0) < 1e-5
    assert stats["weight_std/click"] >= 0
    assert weight_stats(Trainer(PAPERecConfig(ranker=CFG, device="cpu", strategy="fixed")), batch) == {}


# ---------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser


def test_every_knob_has_a_documented_flag() -> None:
    help_text = _parser().format_help()
    for cls, prefix in ((LearnerServiceConfig, ""), (PAPERecConfig, ""), (RankerConfig, "ranker-")):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if f.name == "ranker":
                continue
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            assert "--" + (prefix + f.name).replace("_", "-") in help_text
    for knob in (
        "--batch-size",
        "--ranker-lr",
        "--actor-lr",
        "--critic-lr",
        "--gamma",
        "--tau",
        "--exploration-noise",
        "--buffer-capacity",
        "--snapshot-every-steps",
        "--snapshot-every-s",
        "--device",
    ):
        assert knob in help_text


def test_flags_build_the_configs() -> None:
    args = _parser().parse_args(
        [
            "--batch-size",
            "32",
            "--gamma",
            "0.5",
            "--no-checkpoint-buffer",
            "--ranker-objectives",
            "click",
            "dwell",
            "--ranker-d-model",
            "32",
            "--fixed-weights",
            "0.3",
            "0.7",
            "--grad-normalize",
            "l2",
        ]
    )
    svc = build_config(LearnerServiceConfig, args, "svc__")
    train = build_config(PAPERecConfig, args, "train__")
    assert svc == dataclasses.replace(LearnerServiceConfig(), batch_size=32, checkpoint_buffer=False)
    assert train.gamma == 0.5 and train.fixed_weights == (0.3, 0.7) and train.grad_normalize == "l2"
    assert train.ranker == dataclasses.replace(RankerConfig(), d_model=32)
    assert build_config(PAPERecConfig, _parser().parse_args([]), "train__") == PAPERecConfig()


def test_an_unknown_field_type_is_refused() -> None:
    @dataclasses.dataclass
    class Odd:
        x: dict[str, int] = dataclasses.field(default_factory=dict)
        """a mapping"""

    with pytest.raises(TypeError, match="no flag"):
        add_config_flags(argparse.ArgumentParser(), Odd, "", "odd__", "odd")


def test_the_docs_list_every_flag() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "learner_service.md").read_text()
    for cls, prefix in ((LearnerServiceConfig, ""), (PAPERecConfig, ""), (RankerConfig, "ranker-")):
        for f in dataclasses.fields(cls):
            if f.name != "ranker":
                assert f"`--{(prefix + f.name).replace('_', '-')}" in doc, f"{f.name} missing from the docs"
