"""`paperec learner --nproc 2` on the real broker (the shared dev stack, a unique topic prefix):
2 gloo ranks split the transitions topic's 4 partitions, train one model, rank 0 publishes
verifiable snapshots and checkpoints; SIGKILL of a rank stops the job (exit 1, a clear log line);
a restart resumes from the last checkpoint with higher snapshot versions; SIGTERM exits 0."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from test_learner import KEY, RANKER, RANKER_FLAGS, LearnerProcess

from base.kafka import read_topic
from base.settings import TOPIC_SNAPSHOTS, TOPIC_TRANSITIONS, Settings
from base.topics import create_topics
from learner.checkpoint import CheckpointStore
from learner.devtools import encoded, produce, synthetic_transitions
from model.snapshot import decode_snapshot, header_of


class Job(LearnerProcess):
    """``paperec learner --nproc 2`` as a subprocess, its log in a file."""

    name = "job"
    wait_for_s = 150.0
    exit_s = 90.0

    def __init__(self, settings: Settings, ckpt_dir: Path, log_path: Path) -> None:
        super().__init__(
            settings,
            log_path,
            [
                *("--nproc", "2"),
                *("--learner-checkpoint-dir", str(ckpt_dir), "--device", "cpu", "--torch-threads", "1"),
                *("--batch-size", "16", "--buffer-capacity", "2000", "--min-buffer", "32"),
                *("--snapshot-every-steps", "10", "--snapshot-every-s", "2", "--checkpoint-every-s", "2"),
                *("--no-ingest-process", "--no-metrics-clickhouse", "--log-every-s", "2"),
                *("--collective-timeout-s", "30"),
                *RANKER_FLAGS,
            ],
        )

    def ranks(self) -> list[int]:
        """The rank processes' pids (the spawned children, not torch's resource tracker)."""
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        out = []
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                out.append(int(child))
        return sorted(out)


def _versions(s: Settings) -> list[int]:
    """Snapshot versions on the topic, each verified (checksum, HMAC)."""
    return [
        decode_snapshot(header_of(m.headers), m.value, KEY.encode())[0].snapshot_version
        for m in read_topic(s, TOPIC_SNAPSHOTS)
    ]


def test_two_ranks_train_publish_stop_when_one_is_killed_and_resume(
    settings: Settings, unique_prefix: str, tmp_path: Path
) -> None:
    s = settings.replace(topic_prefix=unique_prefix, snapshot_hmac_key=KEY)
    assert create_topics(s) == []
    assert s.transition_partitions >= 2
    values = encoded(synthetic_transitions(RANKER, 400, seed=1))
    produce(s, s.topic(TOPIC_TRANSITIONS), values, [b"u%d" % (i % 11) for i in range(len(values))])
    ckpt_dir = tmp_path / "ckpt"
    store = CheckpointStore(ckpt_dir)

    # 1. two ranks: snapshots (rank 0 only) and a checkpoint; then SIGKILL of rank 1
    job1 = Job(s, ckpt_dir, tmp_path / "job1.log")
    try:
        job1.wait_for("2 snapshots", lambda: len(_versions(s)) >= 2)
        job1.wait_for("a checkpoint", lambda: store.paths())
        assert "rank 0 of 2" in job1.log() and "rank 1 of 2" in job1.log()
        ranks = job1.wait_for("2 rank processes", lambda: len(job1.ranks()) == 2 and job1.ranks())
        os.kill(ranks[1], signal.SIGKILL)
        rc = job1.proc.wait(90)  # stops by itself
    finally:
        job1.kill(signal.SIGKILL)
        job1.wait()
    assert rc == 1, job1.log()[-3000:]
    assert "exited with signal SIGKILL: the job stopped" in job1.log()
    versions = _versions(s)
    assert versions == sorted(set(versions))  # one publisher: strictly increasing
    found = store.load_latest()
    assert found is not None
    step = int(found[1]["trainer"]["num_steps"])
    assert step > 0

    # 2. more input while it is down (a restarted rank trains again once its own buffer, which
    # starts empty at the committed offsets, holds --min-buffer transitions), then a restart: both
    # ranks resume from that checkpoint, versions continue; SIGTERM: exit 0
    more = encoded(synthetic_transitions(RANKER, 200, seed=2, id_prefix="v"))
    produce(s, s.topic(TOPIC_TRANSITIONS), more, [b"v%d" % (i % 11) for i in range(len(more))])
    job2 = Job(s, ckpt_dir, tmp_path / "job2.log")
    try:
        job2.wait_for("the resume", lambda: job2.log().count(f"step={step}, buffer empty") == 2)
        job2.wait_for("a newer snapshot", lambda: max(_versions(s)) > max(versions))
    finally:
        job2.kill(signal.SIGTERM)
        rc = job2.wait()
    assert rc == 0, job2.log()[-3000:]
    assert "all 2 ranks stopped cleanly" in job2.log()
    final = store.load_latest()
    assert final is not None and int(final[1]["trainer"]["num_steps"]) > step
