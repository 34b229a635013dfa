"""The learner service with its clients injected (no Kafka, no ClickHouse): resume, the loop's
steps, snapshots and their versions, checkpoints and commits, numeric safety, a clean stop."""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import torch

from base.settings import TOPIC_SNAPSHOTS, Settings
from learner.checkpoint import CheckpointStore
from learner.devtools import FakeProducer, MemorySource, encoded, synthetic_transitions
from learner.kafka_io import KafkaDeadLetters
from learner.publisher import SnapshotPublisher, VersionScan, scan_versions
from learner.service import LearnerClients, LearnerService, LearnerServiceConfig
from learner.training import PAPERecConfig
from model.ranker import RankerConfig
from schemas import Exploration

CFG = RankerConfig.tiny()
KEY = b"unit-test-key"
N = 120  # transitions on the fake topic


class Fakes:
    """In-memory clients, and what they saw."""

    def __init__(self, tmp_path: Path, topic_version: int = 0, unverified: int = 0) -> None:
        self.commit_log = tmp_path / "commits.jsonl"
        self.values = encoded(synthetic_transitions(CFG, N))
        self.snapshots = FakeProducer()
        self.letters = FakeProducer()
        self.rows: list[Any] = []
        self.scan = VersionScan(topic_version, 0, unverified)
        self.checkpoints = CheckpointStore(tmp_path / "ckpt")

    def clients(self) -> LearnerClients:
        settings = Settings()

        def publisher(first: int, on_result: Any) -> SnapshotPublisher:
            return SnapshotPublisher(
                settings,
                settings.topic(TOPIC_SNAPSHOTS),
                KEY,
                settings.max_message_bytes,
                first,
                on_result,
                key_id="k1",
                exploration=Exploration(noise_std=0.1),
                producer=self.snapshots,
            )

        return LearnerClients(
            records=partial(MemorySource, self.values, None, False, "mem", commit_log=str(self.commit_log)),
            dead_letters=lambda: KafkaDeadLetters(settings, "dead", producer=self.letters),
            snapshot_versions=lambda: self.scan,
            publisher=publisher,
            metrics_writer=lambda: self,
            checkpoints=self.checkpoints,
        )

    # the metrics writer
    def add(self, row: Any) -> None:
        self.rows.append(row)

    def close(self, timeout_s: float = 5.0) -> None:
        pass

    def versions(self) -> list[int]:
        """The snapshot versions sent, each verified with the key."""
        out = []
        for _, _, value, headers in self.snapshots.sent:
            scan = scan_versions([(headers, value)], KEY)
            assert scan.verified == 1
            out.append(scan.version)
        return out

    def commits(self) -> list[dict[int, int]]:
        lines = self.commit_log.read_bytes().splitlines() if self.commit_log.exists() else []
        entries = [orjson.loads(line) for line in lines]
        return [{int(p): o for p, o in e["commit"].items()} for e in entries if "commit" in e]


def _service(fakes: Fakes, **kw: Any) -> LearnerService:
    cfg = LearnerServiceConfig(
        **{
            "batch_size": 16,
            "buffer_capacity": 200,
            "min_buffer": N,
            "snapshot_every_steps": 5,
            "snapshot_every_s": 0.0,
            "checkpoint_every_s": 0.0,
            "ingest_process": False,
            "metrics_interval_s": 0.0,
            "log_every_s": 1e9,
            **kw,
        }
    )
    return LearnerService(Settings(), cfg, PAPERecConfig(ranker=CFG, device="cpu", seed=0), fakes.clients())


def _wait(cond: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_run_trains_publishes_checkpoints_commits_and_a_second_run_resumes(tmp_path: Path) -> None:
    fakes = Fakes(tmp_path)
    assert _service(fakes, max_steps=12).run() == 0
    # snapshots every 5 steps and a last one at the stop; versions from 1, all verifying
    assert fakes.versions() == [1, 2, 3]
    found = fakes.checkpoints.load_latest()
    assert found is not None
    state = found[1]
    assert state["trainer"]["num_steps"] == 12 and state["snapshot_version"] == 3
    assert state["offsets"]["positions"] == {0: N}
    assert fakes.commits()[-1] == {0: N}  # committed after the checkpoint held them
    assert {r.name for r in fakes.rows} >= {"loss", "buffer_size", "snapshot_version", "checkpoint_s"}

    again = _service(fakes, max_steps=15)
    resumed = again.resume()
    assert resumed.trainer.num_steps == 12 and resumed.offsets == {0: N} and len(resumed.buffer) == N
    assert resumed.snapshot_version == 3 and resumed.ingest_stats.records == N
    assert again.run() == 0
    assert fakes.versions() == [1, 2, 3, 4]  # versions continue; nothing read twice
    assert fakes.checkpoints.load_latest()[1]["ingest"]["records"] == N  # type: ignore[index]


def test_versions_continue_above_the_newest_verified_one_on_the_topic(tmp_path: Path) -> None:
    fakes = Fakes(tmp_path, topic_version=41, unverified=2)
    service = _service(fakes, max_steps=5)
    assert service.run() == 0
    assert fakes.versions() == [42]
    assert any(r.name == "snapshot_topic_unverified" and r.value == 2.0 for r in fakes.rows)


def test_a_step_waits_for_data_then_trains_and_snapshots_when_due(tmp_path: Path) -> None:
    fakes = Fakes(tmp_path)
    service = _service(fakes, min_buffer=N + 1)  # never enough: the step only waits
    loop = service.start(service.resume())
    try:
        _wait(lambda: loop.ingestor.stats.records == N)
        outcome = loop.step()
        assert not outcome.trained and outcome.wait_s > 0 and loop.trainer.num_steps == 0
        service.cfg.min_buffer = N
        outcomes = [loop.step() for _ in range(5)]
        assert all(o.trained for o in outcomes) and loop.trainer.num_steps == 5
        assert loop.publisher.wait_idle(30) and fakes.versions() == [1]  # the 5th step's snapshot
        assert loop.watermark_ms == max(synthetic_ts(N))
    finally:
        service.shutdown(loop, clean=False)
    assert fakes.checkpoints.load_latest() is None  # an unclean stop writes no checkpoint


def synthetic_ts(n: int) -> list[int]:
    return [t.ts_ms for t in synthetic_transitions(CFG, n)]


def test_non_finite_weights_are_never_published_or_saved(tmp_path: Path) -> None:
    fakes = Fakes(tmp_path)
    service = _service(fakes, snapshot_every_steps=0)
    loop = service.start(service.resume())
    try:
        _wait(lambda: loop.ingestor.stats.records == N)
        for _ in range(3):
            loop.step()
        loop.checkpoint()  # finite: remembered as the last good state
        good = {k: v.clone() for k, v in loop.trainer.ranker.state_dict().items()}
        first = next(loop.trainer.ranker.parameters())
        for act in (loop.snapshot, loop.checkpoint):
            with torch.no_grad():
                first.fill_(float("nan"))
            act()
        assert loop.guard.refused == 2 and loop.publisher.wait_idle(30) and fakes.snapshots.sent == []
        for k, v in loop.trainer.ranker.state_dict().items():
            assert torch.equal(v, good[k])  # restored: the last good state
        saved = fakes.checkpoints.load_latest()
        assert saved is not None and saved[1]["trainer"]["num_steps"] == 3
        assert all(torch.equal(v, good[k]) for k, v in saved[1]["trainer"]["ranker"].items())
    finally:
        service.shutdown(loop, clean=False)


def test_a_dead_letter_flush_failure_defers_the_commit(tmp_path: Path) -> None:
    fakes = Fakes(tmp_path)
    fakes.values[3] = b"{not json"  # a dead letter
    fakes.letters.down = True
    service = _service(fakes, min_buffer=N - 1, checkpoint_every_s=0.0)
    loop = service.start(service.resume())
    try:
        _wait(lambda: loop.ingestor.stats.records == N)
        loop.checkpoint()
        assert loop.commits.pending == {0: N} and fakes.commits() == []
        fakes.letters.down = False
        loop.commits.retry_s = 0.0
        loop.step()  # the retry is part of a step's housekeeping
        _wait(lambda: fakes.commits() == [{0: N}])
    finally:
        service.shutdown(loop, clean=False)


def test_request_stop_ends_cleanly_with_a_last_snapshot_and_checkpoint(tmp_path: Path) -> None:
    fakes = Fakes(tmp_path)
    service = _service(fakes, snapshot_every_steps=1000)
    code: list[int] = []
    runner = threading.Thread(target=lambda: code.append(service.run()))
    runner.start()
    _wait(lambda: fakes.rows and any(r.name == "loss" for r in fakes.rows))
    service.request_stop()  # what SIGTERM does
    runner.join(60)
    assert code == [0]
    found = fakes.checkpoints.load_latest()
    assert found is not None
    steps = found[1]["trainer"]["num_steps"]
    assert steps > 0 and fakes.versions() == [1]  # the last snapshot, of the final step
    assert fakes.commits()[-1] == {0: N}
