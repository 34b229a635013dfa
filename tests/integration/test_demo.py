"""End to end: a short `paperec demo` run on the real broker and ClickHouse. Transitions reach
the learner, snapshot versions advance, both serving nodes serve the incumbent the rollout
controller decided on last, per-objective metrics land in ClickHouse, and nothing is left running
afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from base.kafka import read_topic
from base.metrics_store import client
from base.settings import TOPIC_ROLLOUT, TOPIC_SNAPSHOTS, Settings
from model.rollout_signing import decode_decision
from model.snapshot import header_of
from model.snapshot_keys import snapshot_keys
from schemas import decode_snapshot_header

pytestmark = pytest.mark.integration


def _latest_snapshot_version(settings: Settings) -> int:
    topic = settings.topic(TOPIC_SNAPSHOTS)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=64 * 1024 * 1024,
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        versions = []
        while consumer.position(tp) < end:
            for records in consumer.poll(timeout_ms=5000).values():
                versions += [decode_snapshot_header(header_of(r.headers)).snapshot_version for r in records]
        return max(versions)
    finally:
        consumer.close()


def _incumbent(settings: Settings) -> int | None:
    """The incumbent of the latest decision on the control topic (None: no decision)."""
    records = read_topic(settings, TOPIC_ROLLOUT)
    if not records:
        return None
    return decode_decision(
        records[-1].value, snapshot_keys(settings.replace(dev_mode=True)).accepted
    ).incumbent


def _processes_with_env(marker: str) -> list[str]:
    """Processes whose environment contains ``marker`` (the demo passes its topic prefix there)."""
    out = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                out.append(environ.parent.name)
        except OSError:
            continue
    return out


def test_short_demo_closes_the_loop(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "paperec.cli",
            "demo",
            "--duration",
            "45",
            "--users",
            "100",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    demo = settings.replace(topic_prefix=summary["topic_prefix"])

    assert summary["transitions"] > 100  # the join produced transitions for the learner
    newest = _latest_snapshot_version(demo)
    assert newest >= 2  # snapshot versions advanced
    # guarded rollout: both nodes serve the incumbent (a newer snapshot may still be a canary)
    incumbent = _incumbent(demo)
    assert incumbent is not None and 1 <= incumbent <= newest
    assert summary["served_versions"] == [incumbent, incumbent]
    assert sum(summary["clickhouse_per_snapshot"].values()) > 100  # per-list metrics landed
    ch = client(settings)
    ((learner_rows,),) = ch.execute(
        f"SELECT count() FROM {settings.clickhouse_database}.learner_metrics WHERE source = 'demo-learner'"
    )
    ch.disconnect()
    assert learner_rows > 0
    # nothing left running: no process carries this run's topic prefix in its environment
    assert _processes_with_env(f"PAPEREC_TOPIC_PREFIX={summary['topic_prefix']}") == []
    assert "=== paperec demo summary ===" in proc.stdout
