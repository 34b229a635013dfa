"""Two serving nodes on the real broker: start-up load from the compacted topic, hot-load of new
snapshots within 1 s on both nodes, rejection of tampered/truncated/NaN snapshots while the old
one keeps serving, no failed request during 20 swaps, impressions on Kafka co-partitioned with
feedback, serving metrics in ClickHouse, and serving through a Kafka outage.

The two nodes are ``python -m actor_service`` subprocesses (the ``paperec serve`` entry point)
shared by the tests of this module; each test publishes versions above the previous ones.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2
from clickhouse_driver import Client
from kafka.admin import KafkaAdminClient

from actor_service.devtools import (
    NodeProcess,
    SnapshotPublisher,
    example_request,
    make_model,
    metric_value,
    nan_model,
    snapshot_record,
    start_node,
    tampered,
    truncated,
    wait_ready,
)
from base.metrics_store import init_tables
from base.settings import TOPIC_CLICKS, TOPIC_IMPRESSIONS, Settings
from base.topics import create_topics, delete_prefixed_topics, partition_counts
from schemas import decode_impression

pytestmark = pytest.mark.integration

HOT_LOAD_LIMIT_S = 1.0
REJECTED = "paperec_serving_snapshots_rejected_total"


@dataclass
class Cluster:
    settings: Settings
    nodes: list[NodeProcess]
    publisher: SnapshotPublisher
    versions: Iterator[int]
    startup: dict[str, object] = field(default_factory=dict)

    def metrics(self, node: NodeProcess) -> str:
        return httpx.get(node.url + "/metrics", timeout=5).text

    def rejected(self, node: NodeProcess) -> float:
        text = self.metrics(node)
        return sum(
            float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(REJECTED + "{")
        )

    def publish(self, model_seed: int, *, bad: str = "") -> tuple[int, float]:
        """Publish a snapshot (``bad``: tampered/truncated/nan); returns (version, ack time)."""
        version = next(self.versions)
        model = nan_model(model_seed) if bad == "nan" else make_model(model_seed)
        rec = snapshot_record(model, version, self.settings)
        rec = {"tampered": tampered, "truncated": truncated}.get(bad, lambda r: r)(rec)
        self.publisher.publish(rec)
        return version, time.perf_counter()

    def wait_served(self, version: int, since: float, timeout_s: float = 10.0) -> list[float]:
        """Seconds from ``since`` until /rank on each node answers with ``version``."""
        out = []
        with httpx.Client(timeout=5) as client:
            for node in self.nodes:
                while True:
                    body = client.post(node.url + "/rank", json=example_request(3)).json()
                    if body["snapshot_version"] == version:
                        out.append(time.perf_counter() - since)
                        break
                    assert time.perf_counter() - since < timeout_s, f"{node.url} never served {version}"
                    time.sleep(0.01)
        return out


@pytest.fixture(scope="module")
def cluster(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Module-scoped (node start-up dominates the runtime), so its own topic prefix.
    s = settings.replace(topic_prefix=f"paperec.test.{uuid.uuid4().hex[:8]}.")
    assert create_topics(s) == []
    init_tables(s)
    publisher = SnapshotPublisher(s)
    c = Cluster(s, [], publisher, itertools.count(1))
    nodes: list[NodeProcess] = []
    try:
        # Before the nodes start: two valid snapshots and a tampered newer one on the topic.
        c.publish(1)
        c.publish(2)
        c.publish(3, bad="tampered")
        log_dir = tmp_path_factory.mktemp("nodes")
        args = ["--serve-cold-start", "refuse", "--serve-metrics-interval-s", "1"]
        nodes = [start_node(s, Path(log_dir), name=f"node-{i}", extra_args=args) for i in (1, 2)]
        c.nodes = nodes
        wait_ready(nodes, timeout_s=90)
        with httpx.Client(timeout=5) as client:
            c.startup = {
                "versions": [client.get(n.url + "/readyz").json()["snapshot_version"] for n in nodes],
                "rejected": [c.rejected(n) for n in nodes],
            }
        yield c
    finally:
        for node in nodes:
            node.stop()
        publisher.close()
        delete_prefixed_topics(s)


def test_nodes_start_on_the_latest_valid_snapshot(cluster: Cluster) -> None:
    assert cluster.startup["versions"] == [2, 2]  # v3 on the topic is tampered
    assert cluster.startup["rejected"] == [1, 1]


def test_new_snapshot_is_served_by_both_nodes_within_1s(cluster: Cluster) -> None:
    version, acked = cluster.publish(10)
    delays = cluster.wait_served(version, acked)
    assert max(delays) < HOT_LOAD_LIMIT_S, delays


def test_invalid_snapshots_are_rejected_by_both_and_the_old_one_keeps_serving(cluster: Cluster) -> None:
    good, acked = cluster.publish(20)
    cluster.wait_served(good, acked)
    before = [cluster.rejected(n) for n in cluster.nodes]
    for bad in ("tampered", "truncated", "nan"):
        cluster.publish(21, bad=bad)
    deadline = time.monotonic() + 10
    while [cluster.rejected(n) - b for n, b in zip(cluster.nodes, before, strict=True)] != [3, 3]:
        assert time.monotonic() < deadline, "invalid snapshots were not all rejected"
        time.sleep(0.05)
    for node in cluster.nodes:
        text = cluster.metrics(node)
        assert metric_value(text, REJECTED, 'reason="checksum"') >= 2  # tampered + truncated
        assert metric_value(text, REJECTED, 'reason="non_finite"') == 1
        assert metric_value(text, "paperec_serving_snapshot_version") == good
        body = httpx.post(node.url + "/rank", json=example_request(4), timeout=5).json()
        assert body["snapshot_version"] == good
    # The next valid one is still picked up.
    version, acked = cluster.publish(22)
    assert max(cluster.wait_served(version, acked)) < HOT_LOAD_LIMIT_S


async def test_no_request_fails_during_20_swaps(cluster: Cluster) -> None:
    stop = asyncio.Event()
    failures: list[str] = []
    seen: dict[str, list[int]] = {n.url: [] for n in cluster.nodes}
    counts = {"ok": 0}

    async def client_loop(node: NodeProcess, seed: int) -> None:
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = await client.post("/rank", json=example_request(20, seed=seed * 1000 + i))
                except httpx.HTTPError as exc:
                    failures.append(f"{node.url}: {exc!r}")
                    continue
                if r.status_code != 200:
                    failures.append(f"{node.url}: {r.status_code} {r.text[:200]}")
                    continue
                counts["ok"] += 1
                seen[node.url].append(r.json()["snapshot_version"])

    tasks = [asyncio.create_task(client_loop(n, k)) for k, n in enumerate(cluster.nodes)]
    delays: list[float] = []
    try:
        for swap in range(20):
            version, acked = await asyncio.to_thread(cluster.publish, 100 + swap)
            delays.append(max(await asyncio.to_thread(cluster.wait_served, version, acked)))
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert failures == []
    assert counts["ok"] > 40
    for versions in seen.values():
        assert versions == sorted(versions)  # a node never went back to an older model
        assert versions[-1] == version
    # Swapping under load on a 2-core machine shared with the broker: the 1 s bound is checked
    # on the median here (and strictly, per snapshot, by the tests above).
    delays.sort()
    assert delays[len(delays) // 2] < HOT_LOAD_LIMIT_S and delays[-1] < 3 * HOT_LOAD_LIMIT_S, delays


async def test_impressions_are_on_kafka_keyed_and_co_partitioned(cluster: Cluster) -> None:
    s = cluster.settings
    request_id = f"req-{uuid.uuid4().hex}"
    body = httpx.post(
        cluster.nodes[0].url + "/rank", json=example_request(7, request_id=request_id), timeout=5
    ).json()
    topic = s.topic(TOPIC_IMPRESSIONS)
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    try:
        counts = partition_counts(admin, [topic, s.topic(TOPIC_CLICKS)])
    finally:
        admin.close()
    assert counts[topic] == counts[s.topic(TOPIC_CLICKS)]  # co-partitioned with the feedback
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        expected = (murmur2(request_id.encode()) & 0x7FFFFFFF) % counts[topic]  # the Java default
        tp = TopicPartition(topic, expected)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        found = None
        deadline = time.monotonic() + 15
        while found is None and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            found = next((r for r in batch.get(tp, []) if r.key == request_id.encode()), None)
        assert found is not None, "impression not found in the partition murmur2(request_id) selects"
    finally:
        await consumer.stop()
    imp = decode_impression(found.value)
    assert imp.request_id == request_id and imp.snapshot_version == body["snapshot_version"]
    assert list(imp.weights) == body["weights"] and list(imp.noise) == body["noise"]
    assert [it.item_id for it in imp.items] == [it["item_id"] for it in body["items"]]
    assert [it.position for it in imp.items] == list(range(7))


def test_serving_metrics_reach_clickhouse(cluster: Cluster, clickhouse_client: Client) -> None:
    db = cluster.settings.clickhouse_database
    deadline = time.monotonic() + 20
    rows: list[tuple[str, float]] = []
    while time.monotonic() < deadline:
        rows = clickhouse_client.execute(
            f"SELECT name, max(value) FROM {db}.serving_metrics WHERE source = 'actor:node-1' "
            "AND name IN ('paperec_serving_requests_total', 'paperec_serving_snapshot_version', "
            "'paperec_serving_request_latency_seconds_p99') GROUP BY name"
        )
        if len(rows) == 3:
            break
        time.sleep(0.5)
    assert {name for name, _ in rows} == {
        "paperec_serving_requests_total",
        "paperec_serving_snapshot_version",
        "paperec_serving_request_latency_seconds_p99",
    }


def test_serving_continues_when_kafka_is_unreachable(
    settings: Settings, tmp_path: Path, unique_prefix: str
) -> None:
    s = settings.replace(kafka_bootstrap="127.0.0.1:1", topic_prefix=unique_prefix)
    args = [
        "--serve-cold-start", "random",
        "--serve-startup-timeout-s", "0.5",
        "--serve-impression-buffer", "5",
        "--serve-metrics-clickhouse", "false",
    ]  # fmt: skip
    node = start_node(s, tmp_path, name="offline", extra_args=args)
    try:
        wait_ready([node], timeout_s=90)
        with httpx.Client(base_url=node.url, timeout=5) as client:
            for i in range(8):
                started = time.perf_counter()
                r = client.post("/rank", json=example_request(5, seed=i))
                assert r.status_code == 200 and r.json()["snapshot_version"] == 0
                assert time.perf_counter() - started < 1.0
            text = client.get("/metrics").text
        assert metric_value(text, "paperec_serving_impressions_buffered") == 5
        assert metric_value(text, "paperec_serving_impressions_total", 'outcome="dropped_buffer_full"') == 3
        assert metric_value(text, "paperec_serving_impression_producer_connected") == 0
    finally:
        node.stop()


def _serve_port(first: int = 18500, count: int = 100) -> int:
    """A free port from 18500 up (the serving tests' range, clear of the dev stack's ports)."""
    for port in range(first, first + count):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}..{first + count - 1}")


def test_rank_needs_the_bearer_token_when_one_is_configured(
    settings: Settings, tmp_path: Path, unique_prefix: str
) -> None:
    """Acceptance (issue 20): /rank without the token is 401 when a token is configured, 200 with
    it; the token reaches the node by environment (start_node), the health probe stays open."""
    token = secrets.token_urlsafe(32)  # generated here: no secret in the repository
    s = settings.replace(topic_prefix=unique_prefix, serve_auth_token=token)
    assert create_topics(s) == []
    args = ["--serve-cold-start", "random", "--serve-metrics-clickhouse", "false"]
    node = start_node(s, tmp_path, name="auth", extra_args=args, port=_serve_port())
    try:
        wait_ready([node], timeout_s=90)  # /readyz: open without the token
        assert node.auth_headers == {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=node.url, timeout=5) as client:
            refused = client.post("/rank", json=example_request(5))
            assert refused.status_code == 401, refused.text
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert refused.json()["detail"][0]["type"] == "unauthorized"
            wrong = {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"}
            assert client.post("/rank", json=example_request(5), headers=wrong).status_code == 401
            ok = client.post("/rank", json=example_request(5), headers=node.auth_headers)
            assert ok.status_code == 200, ok.text
            assert client.get("/metrics").status_code == 401
            text = client.get("/metrics", headers=node.auth_headers).text
        assert metric_value(text, "paperec_serving_errors_total", 'kind="unauthorized"') == 2
    finally:
        node.stop()
    assert token not in node.log()  # the node never logs the secret
