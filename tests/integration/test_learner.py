"""`paperec learner` on the real broker: ingest, train, publish verifiable snapshots, survive a
SIGKILL (resume from the checkpoint's offsets with higher snapshot versions), stop on SIGTERM.
Plus the snapshot size policy (one message, limits raised consistently) end to end."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from clickhouse_driver import Client
from kafka import KafkaConsumer, TopicPartition

from base.kafka import read_topic
from base.metrics_store import init_tables
from base.settings import TOPIC_DEAD_LETTER, TOPIC_ROLLOUT, TOPIC_SNAPSHOTS, TOPIC_TRANSITIONS, Settings
from base.topics import create_topics
from learner.checkpoint import CheckpointStore
from learner.devtools import encoded, produce, synthetic_transitions
from learner.publisher import SnapshotPublisher, latest_version
from model.featurize import ListView, list_inputs
from model.policy import ActorConfig
from model.ranker import RankerConfig
from model.rollout_signing import ROLLOUT_KEY, sign_decision
from model.scoring import ActorModel, score
from model.snapshot import SnapshotRejected, decode_snapshot, header_of
from model.snapshot_keys import snapshot_keys
from schemas import Exploration, SnapshotHeader, decode_dead_letter, encode, make_decision

KEY = "integration-test-key"
EXPLORATION_NOISE = 0.05  # not the default: the headers must record the configured value
# not the defaults either
EXPLORATION = Exploration(noise_std=EXPLORATION_NOISE, wide_std=0.7, wide_share=0.5, uniform_share=0.1)
KAFKA_DEFAULT_MESSAGE_BYTES = 1_048_588  # the broker default we must be above to prove the policy
# hash_buckets 20_000 x d_model 16 floats: the snapshot is > 1 MiB, so it needs the raised limits
RANKER = RankerConfig(
    user_dim=6,
    item_dim=5,
    context_dim=3,
    hash_buckets=20_000,
    d_model=16,
    n_heads=2,
    n_layers=1,
    history_len=5,
    max_list_len=6,
)
_CHANGED = ("user_dim", "item_dim", "context_dim", "hash_buckets", "d_model", "n_heads", "n_layers")
RANKER_FLAGS = [
    x
    for name in (*_CHANGED, "history_len", "max_list_len")
    for x in (f"--ranker-{name.replace('_', '-')}", str(getattr(RANKER, name)))
]


def _snapshots(settings: Settings) -> list[tuple[SnapshotHeader, ActorModel, int]]:
    out = []
    for m in read_topic(settings, TOPIC_SNAPSHOTS):
        header, model = decode_snapshot(header_of(m.headers), m.value, KEY.encode())  # checksum + HMAC
        out.append((header, model, len(m.value)))
    return out


def _offsets(settings: Settings) -> tuple[dict[int, int], dict[int, int | None]]:
    """End offsets of the transitions topic, and the learner group's committed offsets."""
    topic = settings.topic(TOPIC_TRANSITIONS)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.learner_group_id,
        enable_auto_commit=False,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
        return ends, {tp.partition: consumer.committed(tp) for tp in tps}
    finally:
        consumer.close(autocommit=False)


class LearnerProcess:
    """``paperec learner ARGS`` as a subprocess, its log in a file (``name`` in failure messages)."""

    name = "learner"
    wait_for_s = 90.0
    """default timeout of :meth:`wait_for`"""
    exit_s = 60.0
    """default timeout of :meth:`wait`"""

    def __init__(self, settings: Settings, log_path: Path, args: list[str]) -> None:
        env = {
            **os.environ,
            "PAPEREC_TOPIC_PREFIX": settings.topic_prefix,
            "PAPEREC_SNAPSHOT_HMAC_KEY": KEY,
            "PAPEREC_LOG_LEVEL": "INFO",
        }
        cmd = [sys.executable, "-m", "paperec.cli", "learner", *args]
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, what: str, cond: Callable[[], Any], timeout_s: float | None = None) -> Any:
        deadline = time.monotonic() + (self.wait_for_s if timeout_s is None else timeout_s)
        while time.monotonic() < deadline:
            value = cond()
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(
                    f"{self.name} exited ({self.proc.returncode}) waiting for {what}:\n{self.log()[-4000:]}"
                )
            time.sleep(0.3)
        pytest.fail(f"timed out waiting for {what}:\n{self.log()[-4000:]}")

    def wait(self, timeout_s: float | None = None) -> int:
        try:
            return self.proc.wait(self.exit_s if timeout_s is None else timeout_s)
        finally:
            self._log.close()

    def kill(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)


class Learner(LearnerProcess):
    """``paperec learner`` with this module's small, fast settings."""

    def __init__(self, settings: Settings, ckpt_dir: Path, log_path: Path, source: str) -> None:
        super().__init__(
            settings,
            log_path,
            [
                *("--learner-checkpoint-dir", str(ckpt_dir), "--device", "cpu", "--torch-threads", "1"),
                *("--batch-size", "32", "--buffer-capacity", "2000", "--min-buffer", "64"),
                *("--snapshot-every-steps", "15", "--snapshot-every-s", "2", "--checkpoint-every-s", "2"),
                *("--metrics-interval-s", "1", "--log-every-s", "2", "--metrics-source", source),
                *("--exploration-noise", str(EXPLORATION_NOISE)),
                *("--exploration-wide-noise", str(EXPLORATION.wide_std)),
                *("--exploration-wide-share", str(EXPLORATION.wide_share)),
                *("--exploration-uniform-share", str(EXPLORATION.uniform_share)),
                *RANKER_FLAGS,
            ],
        )


def test_learner_trains_publishes_survives_sigkill_and_resumes(
    settings: Settings, unique_prefix: str, tmp_path: Path, clickhouse_client: Client
) -> None:
    s = settings.replace(topic_prefix=unique_prefix, snapshot_hmac_key=KEY)
    assert create_topics(s) == []
    init_tables(s)
    transitions_topic = s.topic(TOPIC_TRANSITIONS)
    first = synthetic_transitions(RANKER, 400, seed=1)
    wrong_width = synthetic_transitions(RankerConfig(user_dim=4), 1, seed=9, id_prefix="bad")[0]
    values = [*encoded(first), b'{"type": "transition"}', encode(wrong_width), *encoded(first[:20])]
    produce(s, transitions_topic, values, [b"u%d" % (i % 7) for i in range(len(values))])
    ckpt_dir = tmp_path / "ckpt"
    source = f"learner-it:{unique_prefix}"

    # 1. first run: ingests, trains, publishes >= 2 snapshots, checkpoints; then SIGKILL
    run1 = Learner(s, ckpt_dir, tmp_path / "run1.log", source)
    try:
        run1.wait_for("2 snapshots", lambda: len(read_topic(s, TOPIC_SNAPSHOTS)) >= 2)
        run1.wait_for("a checkpoint", lambda: CheckpointStore(ckpt_dir).paths())
    finally:
        run1.kill(signal.SIGKILL)
        run1.wait()
    assert run1.proc.returncode == -signal.SIGKILL

    snaps = _snapshots(s)
    versions = [h.snapshot_version for h, _, _ in snaps]
    assert len(snaps) >= 2 and versions == sorted(set(versions))  # strictly increasing
    max_ts = max(t.ts_ms for t in first)
    view = ListView.of(first[0].state)
    for header, model, size in snaps:
        assert size > KAFKA_DEFAULT_MESSAGE_BYTES  # one message above Kafka's default limit
        assert header.payload_size == size and 0 < header.watermark_ms <= max_ts
        assert header.model_config["ranker"]["hash_buckets"] == RANKER.hash_buckets
        assert header.exploration == EXPLORATION  # what nodes explore with
        gw = header.global_weights  # the rollout's holdout weights: the generator's mean, averaged
        assert gw is not None and len(gw) == 2 and abs(sum(gw) - 1.0) < 1e-9
        result = score(model, list_inputs([view], RANKER))  # loads into the serving model and ranks
        assert torch.isfinite(result.scores[result.scores > -torch.inf]).all()
    assert [h.training_step for h, _, _ in snaps] == sorted(h.training_step for h, _, _ in snaps)
    m = read_topic(s, TOPIC_SNAPSHOTS)[0]
    with pytest.raises(SnapshotRejected, match="signature"):
        decode_snapshot(header_of(m.headers), m.value, b"another key")

    found = CheckpointStore(ckpt_dir).load_latest()
    assert found is not None
    ckpt = found[1]
    ck_positions = {int(p): int(o) for p, o in ckpt["offsets"]["positions"].items()}
    _, committed = _offsets(s)
    for p, off in committed.items():  # commits follow checkpoints (the kill may beat the last commit)
        assert off is None or off <= ck_positions[p]
    assert ckpt["snapshot_version"] <= max(versions)

    # 2. more input while it is down, then a restart; meanwhile the rollout rejected the newest
    # snapshot (a signed rollback on the control topic) and someone wrote a forged decision
    second = synthetic_transitions(RANKER, 150, seed=2, id_prefix="u", start_ts_ms=max_ts + 1000)
    produce(s, transitions_topic, encoded(second))
    rollback: dict[str, Any] = {
        "decision_id": "it-rollback",
        "decided_at_ms": int(time.time() * 1000),
        "decision": "rollback",
        "version": versions[-1],
        "incumbent": versions[0],
        "candidate": None,
        "canary_share": 0.2,
        "canary_started_at_ms": None,
        "reason": "integration test",
        "evidence": {},
        "rejected": (versions[-1],),
    }
    signed = sign_decision(snapshot_keys(s.replace(dev_mode=True)), **rollback)
    forged_fields = {**rollback, "decision_id": "forged", "rejected": (versions[0], versions[-1])}
    forged = make_decision(**forged_fields, key=b"forger", key_id="default")
    produce(s, s.topic(TOPIC_ROLLOUT), [encode(forged), encode(signed)], [ROLLOUT_KEY, ROLLOUT_KEY])
    total = len(values) + len(second)
    run2 = Learner(s, ckpt_dir, tmp_path / "run2.log", source)
    try:
        line = run2.wait_for(
            "start positions", lambda: re.search(r"consuming \S+ from positions (\{.*?\})", run2.log())
        )
        assert ast.literal_eval(line.group(1)) == ck_positions  # resumes at the checkpoint's offsets
        assert f"step={ckpt['trainer']['num_steps']}" in run2.log()
        run2.wait_for(
            "a newer snapshot", lambda: max(h.snapshot_version for h, _, _ in _snapshots(s)) > max(versions)
        )
        run2.wait_for("everything ingested", lambda: f"ingested {total} " in run2.log(), timeout_s=60)
        run2.wait_for("the rollback", lambda: f"rollout: snapshot v{versions[-1]} rejected" in run2.log())
        assert "control-topic record refused (signature)" in run2.log()
    finally:
        run2.kill(signal.SIGTERM)
        rc = run2.wait()
    assert rc == 0, run2.log()[-3000:]

    # 3. clean stop: final checkpoint and commit at the end; every record read exactly once overall
    found = CheckpointStore(ckpt_dir).load_latest()
    assert found is not None
    final = found[1]
    ends, committed = _offsets(s)
    assert {int(p): int(o) for p, o in final["offsets"]["positions"].items()} == ends
    assert committed == ends and sum(ends.values()) == total
    stats = final["ingest"]
    assert stats["records"] == total  # restored counter + records after the checkpoint: no re-reads
    assert (stats["transitions"], stats["duplicates"], stats["dead_letters"]) == (550, 20, 2)
    snaps2 = _snapshots(s)
    new_versions = [h.snapshot_version for h, _, _ in snaps2 if h.snapshot_version > max(versions)]
    assert new_versions and min(new_versions) > max(versions)
    assert final["snapshot_version"] == max(h.snapshot_version for h, _, _ in snaps2)
    assert final["trainer"]["num_steps"] > ckpt["trainer"]["num_steps"]
    assert final["rollout"]["ledger"]["rejected"] == [versions[-1]]  # recorded; the forged one not

    letters = [decode_dead_letter(m.value) for m in read_topic(s, TOPIC_DEAD_LETTER)]
    fields = {d.error_field for d in letters if d.stage == "learner.ingest"}
    assert {"user_features"} < fields and len(letters) >= 2, letters  # at least once (a kill may repeat one)

    rows = clickhouse_client.execute(
        f"SELECT name, label, count() FROM {s.clickhouse_database}.learner_metrics "
        "WHERE source = %(source)s GROUP BY name, label",
        {"source": source},
    )
    names = {(n, lb) for n, lb, _ in rows}
    for expected in [
        ("loss", "click"),
        ("loss", "dwell"),
        ("critic_loss", ""),
        ("actor_loss", ""),
        ("reward", ""),
        ("weight_mean", "click"),
        ("weight_std", "dwell"),
        ("buffer_size", ""),
        ("consumer_lag", ""),
        ("step_time_s", ""),
        ("snapshot_publish_s", ""),
    ]:
        assert expected in names, f"{expected} missing from learner_metrics: {sorted(names)}"


def test_snapshot_size_policy_one_message_with_raised_limits(settings: Settings, unique_prefix: str) -> None:
    """The default model's snapshot (~4.5 MB) goes through as one message: producer, topic and
    broker limits all come from max_message_bytes. Over that limit it is refused, not chunked."""
    s = settings.replace(topic_prefix=unique_prefix, snapshot_hmac_key=KEY)
    assert create_topics(s) == []
    topic = s.topic(TOPIC_SNAPSHOTS)
    torch.manual_seed(0)
    model = ActorModel(RankerConfig(), ActorConfig(obs_dim=64, action_dim=2)).eval()
    assert latest_version(s, topic, KEY.encode()).version == 0

    results: list[Any] = []
    explore = Exploration(noise_std=0.25)
    pub = SnapshotPublisher(
        s, topic, KEY.encode(), s.max_message_bytes, 1, results.append, exploration=explore
    )
    try:
        assert pub.publish(lambda: model, training_step=7, watermark_ms=123) is not None
        assert pub.wait_idle(60)
    finally:
        pub.close()
    assert pub.published == 1 and results[0].ok and results[0].payload_bytes > 4 * KAFKA_DEFAULT_MESSAGE_BYTES

    (header, loaded, _), *_ = _snapshots(s)
    assert (header.snapshot_version, header.training_step, header.watermark_ms, header.chunk_count) == (
        1,
        7,
        123,
        1,
    )
    assert header.exploration == explore  # recorded (and signed) for the serving nodes
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t)
    assert latest_version(s, topic, KEY.encode()).version == 1
    assert latest_version(s, topic, b"another key").version == 0  # verified only

    # a limit below the payload: refused at encode time, counted, nothing raised or sent
    small = SnapshotPublisher(s, topic, KEY.encode(), KAFKA_DEFAULT_MESSAGE_BYTES, 2, exploration=explore)
    try:
        assert small.publish(lambda: model, training_step=8, watermark_ms=124) is None
    finally:
        small.close()
    assert small.failed == 1 and small.next_version == 2
    assert len(_snapshots(s)) == 1
