"""Snapshot integrity on the real broker (docs/hardening.md, section 2).

1. A polluted, then compacted, snapshot topic: after the real latest snapshot come a forged
   unsigned header with snapshot_version 2**63-1, a tombstone and a replay of an old (validly
   signed) snapshot; the log cleaner compacts it. A restarted node serves the latest verified
   version from its local store (not the replayed one, not the cold-start model), and a restarted
   learner keeps publishing with rising versions (not stuck at 2**63-1).
2. Key rotation under continuous /rank load on two nodes: nodes accept old+new, the publisher
   switches to the new key, nodes drop the old one; no request fails and the new-key snapshots load.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from actor_service.devtools import (
    NodeProcess,
    SnapshotPublisher,
    example_request,
    make_model,
    metric_value,
    snapshot_record,
    start_node,
    wait_ready,
)
from base.kafka import read_topic
from base.settings import TOPIC_SNAPSHOTS, TOPIC_TRANSITIONS, Settings
from base.topics import create_topics
from learner.devtools import encoded, produce, synthetic_transitions
from model.ranker import RankerConfig
from model.snapshot import HEADER_NAME, SNAPSHOT_KEY
from schemas import SchemaError, decode_snapshot_header, encode, make_header, verify_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INT64_MAX = 2**63 - 1
KEY = "integrity-test-key"  # single-key form: id "default"
RANKER = RankerConfig(user_dim=6, item_dim=5, context_dim=3, hash_buckets=2_000, d_model=16, n_heads=2,
                      n_layers=1, history_len=5, max_list_len=6)  # fmt: skip
_RANKER_FIELDS = ("user_dim", "item_dim", "context_dim", "hash_buckets", "d_model", "n_heads", "n_layers",
                  "history_len", "max_list_len")  # fmt: skip
RANKER_FLAGS = [
    x for n in _RANKER_FIELDS for x in (f"--ranker-{n.replace('_', '-')}", str(getattr(RANKER, n)))
]


# ------------------------------------------------------------------------ helpers
def compact_fast(settings: Settings) -> None:
    """Make the test's snapshot topic compactable within seconds (the dev broker's log cleaner
    wakes every log.cleaner.backoff.ms = 15 s by default)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        configs = {
            "cleanup.policy": "compact",
            "retention.ms": "-1",
            "max.message.bytes": str(settings.max_message_bytes),
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": "100",
        }
        admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.topic(TOPIC_SNAPSHOTS), configs=configs)]
        )
    finally:
        admin.close()


def verified_versions(settings: Settings, key: bytes = KEY.encode()) -> list[int]:
    out = []
    for m in read_topic(settings, TOPIC_SNAPSHOTS, timeout_s=20):
        header = dict(m.headers or ()).get(HEADER_NAME)
        if m.value is None or header is None:
            continue
        h = decode_snapshot_header(header)
        try:
            verify_snapshot(h, m.value, {"default": key})
        except SchemaError:
            continue
        out.append(h.snapshot_version)
    return out


def wait_for(what: str, cond: Callable[[], Any], timeout_s: float, logs: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}\n{logs()[-3000:]}")


class Learner:
    """``paperec learner`` as a subprocess with a small model and frequent snapshots."""

    def __init__(self, settings: Settings, ckpt_dir: Path, log_path: Path) -> None:
        env = {**os.environ, "PAPEREC_TOPIC_PREFIX": settings.topic_prefix, "PAPEREC_SNAPSHOT_HMAC_KEY": KEY}
        env.pop("PAPEREC_DEV_MODE", None)  # a real key: no dev mode needed
        cmd = [
            *(sys.executable, "-m", "paperec.cli", "learner", "--learner-checkpoint-dir", str(ckpt_dir)),
            *("--device", "cpu", "--torch-threads", "1", "--no-ingest-process", "--no-metrics-clickhouse"),
            *("--batch-size", "32", "--min-buffer", "64", "--buffer-capacity", "1000"),
            *("--snapshot-every-steps", "20", "--snapshot-every-s", "1", "--checkpoint-every-s", "2"),
            *RANKER_FLAGS,
        ]  # fmt: skip
        self.log_path = log_path
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def unknown_key_rejections(node: NodeProcess) -> float:
    text = httpx.get(node.url + "/metrics", timeout=5).text
    return metric_value(text, "paperec_serving_snapshots_rejected_total", 'reason="unknown_key"')


def serves(node: NodeProcess, version: int) -> bool:
    return readyz(node)["snapshot_version"] == version


def readyz(node: NodeProcess) -> dict[str, Any]:
    return dict(httpx.get(node.url + "/readyz", timeout=5).json())


# ------------------------------------------------------------------------ 1. compaction
def test_polluted_compacted_topic_neither_rolls_back_a_restarted_node_nor_stops_the_learner(
    settings: Settings, unique_prefix: str, tmp_path: Path
) -> None:
    s = settings.replace(topic_prefix=unique_prefix)
    assert create_topics(s) == []
    compact_fast(s)
    produce(s, s.topic(TOPIC_TRANSITIONS), encoded(synthetic_transitions(RANKER, 300, seed=1)))
    node_env = {"PAPEREC_SNAPSHOT_HMAC_KEY": KEY}
    node_args = ["--serve-metrics-clickhouse", "false"]
    ckpt = tmp_path / "ckpt"

    # 1. the learner publishes a few snapshots; the node loads the last one (and stores it)
    learner = Learner(s, ckpt, tmp_path / "learner1.log")
    node = start_node(s, tmp_path, name="node", extra_args=node_args, env=node_env)
    try:
        wait_for("3 snapshots", lambda: len(verified_versions(s)) >= 3, 80, learner.log)
    finally:
        assert learner.stop() == 0, learner.log()[-3000:]
    real = read_topic(s, TOPIC_SNAPSHOTS, timeout_s=20)
    latest = max(verified_versions(s))
    try:
        wait_ready([node], timeout_s=60, version=latest)
    finally:
        node.stop()

    # 2. pollute: forged unsigned header at the int64 limit, tombstone, replay of the first real
    # snapshot; then one more forged record after segment.ms so the segment before it rolls
    forged_payload = b"forged"
    forged = make_header(snapshot_version=INT64_MAX, created_at_ms=0, training_step=0, watermark_ms=0,
                         model_config={}, payload=forged_payload, key=b"not-the-key")  # fmt: skip
    replay = real[0]
    first = decode_snapshot_header(dict(replay.headers)[HEADER_NAME]).snapshot_version
    assert first < latest
    producer = KafkaProducer(
        bootstrap_servers=s.kafka_bootstrap, acks="all", max_request_size=s.max_message_bytes
    )
    topic = s.topic(TOPIC_SNAPSHOTS)
    try:
        producer.send(topic, key=SNAPSHOT_KEY, value=forged_payload, headers=[(HEADER_NAME, encode(forged))])
        producer.send(topic, key=SNAPSHOT_KEY, value=None)
        producer.send(topic, key=SNAPSHOT_KEY, value=replay.value, headers=list(replay.headers)).get(30)
        time.sleep(0.5)
        producer.send(
            topic, key=SNAPSHOT_KEY, value=forged_payload, headers=[(HEADER_NAME, encode(forged))]
        ).get(30)
    finally:
        producer.close()

    # 3. the log cleaner erases every real snapshot but the replayed one
    wait_for("compaction", lambda: verified_versions(s) == [first], 75)

    # 4. restarts: the node serves `latest` from its store; the learner publishes above it
    node = start_node(s, tmp_path, name="node", extra_args=node_args, env=node_env)
    learner = Learner(s, ckpt, tmp_path / "learner2.log")
    try:
        wait_ready([node], timeout_s=60)
        assert readyz(node)["snapshot_version"] >= latest  # never the replayed `first` or cold start
        assert f"serving snapshot {latest} from the local store" in node.log()
        newer = wait_for(
            "a newer snapshot", lambda: [v for v in verified_versions(s) if v > latest], 60, learner.log
        )
        assert max(newer) < INT64_MAX
        assert "unverified records on the topic ignored" in learner.log()
        wait_for(
            "the node on the newer snapshot", lambda: readyz(node)["snapshot_version"] > latest, 20, node.log
        )
    finally:
        rc = learner.stop()
        node.stop()
    assert rc == 0, learner.log()[-3000:]


# ------------------------------------------------------------------------ 2. key rotation
class Load:
    """/rank requests round-robin over the nodes in rotation, one at a time. A node is taken out of
    rotation (as a load balancer's health check would) before it is stopped."""

    def __init__(self) -> None:
        self.nodes: list[NodeProcess] = []
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.versions: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def remove(self, node: NodeProcess) -> None:
        with self.lock:  # waits for the request in flight
            self.nodes.remove(node)

    def add(self, node: NodeProcess) -> None:
        with self.lock:
            self.nodes.append(node)

    def _run(self) -> None:
        body = example_request(5)
        with httpx.Client(timeout=10) as client:
            i = 0
            while not self._stop.is_set():
                with self.lock:
                    node = self.nodes[i % len(self.nodes)]
                    i += 1
                    try:
                        r = client.post(node.url + "/rank", json=body)
                        if r.status_code == 200:
                            self.ok += 1
                            self.versions.add(r.json()["snapshot_version"])
                        else:
                            self.failures.append(f"{node.url}: {r.status_code} {r.text[:200]}")
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{node.url}: {exc!r}")
                time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def test_key_rotation_under_load_fails_no_request(
    settings: Settings, unique_prefix: str, tmp_path: Path
) -> None:
    s = settings.replace(topic_prefix=unique_prefix)
    assert create_topics(s) == []
    old_only = {"PAPEREC_SNAPSHOT_HMAC_KEYS": "old:old-secret", "PAPEREC_SNAPSHOT_HMAC_KEY_ID": "old"}
    both = {"PAPEREC_SNAPSHOT_HMAC_KEYS": "old:old-secret,new:new-secret"}
    new_only = {"PAPEREC_SNAPSHOT_HMAC_KEYS": "new:new-secret"}
    signer_old = s.replace(snapshot_hmac_keys="old:old-secret", snapshot_hmac_key_id="old")
    signer_new = s.replace(snapshot_hmac_keys="new:new-secret", snapshot_hmac_key_id="new")
    args = ["--serve-cold-start", "refuse", "--serve-metrics-clickhouse", "false"]
    publisher = SnapshotPublisher(s)
    load = Load()
    nodes: list[NodeProcess] = []

    def restart_each(env: dict[str, str], version: int) -> None:
        for i, node in enumerate(list(nodes)):
            load.remove(node)
            node.stop()
            nodes[i] = start_node(s, tmp_path, name=f"node-{i}", extra_args=args, env=env)
            wait_ready([nodes[i]], timeout_s=60, version=version)  # from its store: signed by a kept key
            load.add(nodes[i])

    def wait_served(version: int) -> None:
        for node in nodes:
            wait_for(f"v{version}", partial(serves, node, version), 20, node.log)

    try:
        publisher.publish(snapshot_record(make_model(1), 1, signer_old))
        nodes.extend(
            start_node(s, tmp_path, name=f"node-{i}", extra_args=args, env=old_only) for i in range(2)
        )
        wait_ready(nodes, timeout_s=60, version=1)
        for node in nodes:
            load.add(node)
        load.start()

        restart_each(both, 1)  # 1. nodes accept old and new
        publisher.publish(snapshot_record(make_model(2), 2, signer_new))  # 2. the learner signs with new
        wait_served(2)
        restart_each(new_only, 2)  # 3. nodes drop the old key
        publisher.publish(snapshot_record(make_model(3), 3, signer_new))
        wait_served(3)
        publisher.publish(snapshot_record(make_model(4), 4, signer_old))  # the removed key: refused
        for node in nodes:
            wait_for("v4 rejected", partial(unknown_key_rejections, node), 20, node.log)
            assert readyz(node)["snapshot_version"] == 3
        time.sleep(0.5)
    finally:
        load.stop()
        for node in nodes:
            node.stop()
        publisher.close()
    assert load.failures == [], load.failures[:5]
    assert load.ok > 100 and {1, 2, 3} <= load.versions, (load.ok, load.versions)
