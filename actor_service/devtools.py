"""Helpers for the integration tests and the benchmark: build and publish snapshots, run serving
nodes as ``paperec serve`` subprocesses, make example requests. Not used by the service itself.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from base.settings import TOPIC_ROLLOUT, TOPIC_SNAPSHOTS, Settings
from model.policy import ActorConfig
from model.ranker import RankerConfig
from model.rollout_signing import encode_decision, sign_decision
from model.scoring import ActorModel
from model.snapshot import SnapshotRecord, encode_snapshot, to_record
from model.snapshot_keys import snapshot_keys
from schemas import Exploration, RolloutDecision


def small_ranker(**overrides: Any) -> RankerConfig:
    """The default architecture with a smaller id-hash table: the default model's 16 MiB
    embedding does not fit the default 16 MiB snapshot message."""
    return RankerConfig(**{"hash_buckets": 1 << 14, **overrides})


def make_model(seed: int, ranker: RankerConfig | None = None) -> ActorModel:
    ranker = ranker or small_ranker()
    torch.manual_seed(seed)
    actor = ActorConfig(obs_dim=ranker.d_model, action_dim=len(ranker.objectives))
    return ActorModel(ranker, actor).eval()


def snapshot_record(
    model: ActorModel,
    version: int,
    settings: Settings,
    *,
    created_at_ms: int | None = None,
    noise_std: float = 0.1,
    exploration: Exploration | None = None,
) -> SnapshotRecord:
    """A record signed as the learner on ``settings`` would sign it (its signing key and id; the
    dev key is allowed here: test and benchmark helper), recording ``exploration``, by default
    plain noise of std ``noise_std`` (0.1: the learner's default)."""
    key_id, key = snapshot_keys(settings.replace(dev_mode=True)).signing()
    header, payload = encode_snapshot(
        model,
        snapshot_version=version,
        training_step=version * 100,
        watermark_ms=int(time.time() * 1000),
        exploration=Exploration(noise_std=noise_std) if exploration is None else exploration,
        key=key,
        key_id=key_id,
        max_message_bytes=settings.max_message_bytes,
        created_at_ms=created_at_ms,
    )
    return to_record(header, payload)


def signed_decision(
    settings: Settings,
    decision: str,
    version: int,
    *,
    incumbent: int | None,
    candidate: int | None = None,
    canary_share: float = 0.0,
    rejected: Sequence[int] = (),
    decided_at_ms: int | None = None,
    reason: str = "test",
) -> RolloutDecision:
    """A rollout decision signed as the controller on ``settings`` would sign it (the dev key is
    allowed here: test and benchmark helper); the canary start is the decision time."""
    now = int(time.time() * 1000) if decided_at_ms is None else decided_at_ms
    return sign_decision(
        snapshot_keys(settings.replace(dev_mode=True)),
        decision_id=f"{version}-{decision}-{now}",
        decided_at_ms=now,
        decision=decision,
        version=version,
        incumbent=incumbent,
        candidate=candidate,
        canary_share=canary_share,
        canary_started_at_ms=None if candidate is None else now,
        reason=reason,
        evidence={},
        rejected=tuple(rejected),
    )


def tampered(rec: SnapshotRecord) -> SnapshotRecord:
    """One payload bit flipped: the checksum no longer matches the signed header."""
    value = bytearray(rec.value)
    value[len(value) // 2] ^= 0x01
    return SnapshotRecord(rec.key, bytes(value), rec.headers)


def truncated(rec: SnapshotRecord) -> SnapshotRecord:
    return SnapshotRecord(rec.key, rec.value[: len(rec.value) // 2], rec.headers)


def nan_model(seed: int, ranker: RankerConfig | None = None) -> ActorModel:
    """A model with one NaN weight (signed correctly: only the finiteness check catches it)."""
    model = make_model(seed, ranker)
    with torch.no_grad():
        next(iter(model.parameters())).view(-1)[0] = float("nan")
    return model


class SnapshotPublisher:
    """Publishes snapshot records with aiokafka on a private event-loop thread.

    aiokafka, not kafka-python: kafka-python computes the record batch CRC32C in pure Python
    unless the ``crc32c`` package is installed, which takes ~1 s for a 5 MB snapshot, so the
    publication itself would dominate the publication-to-served time being measured.
    """

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(TOPIC_SNAPSHOTS)
        self.rollout_topic = settings.topic(TOPIC_ROLLOUT)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="snapshot-publisher", daemon=True)
        self._thread.start()
        self._producer = self._call(self._start(settings))

    async def _start(self, settings: Settings) -> Any:
        from base import kafka as kafka_clients

        producer = kafka_clients.aio_producer(
            settings,
            acks="all",
            max_request_size=settings.max_message_bytes,
        )
        await producer.start()
        return producer

    def _call(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def publish(self, rec: SnapshotRecord, timeout_s: float = 30.0) -> None:
        """Send and wait for the broker's acknowledgement."""
        send = self._producer.send_and_wait(self.topic, rec.value, key=rec.key, headers=list(rec.headers))
        self._call(send, timeout_s)

    def publish_decision(self, decision: RolloutDecision | bytes, timeout_s: float = 30.0) -> None:
        """Send a rollout decision (or raw bytes: a forged record) to the control topic and wait
        for the broker's acknowledgement."""
        key, value = (b"rollout", decision) if isinstance(decision, bytes) else encode_decision(decision)
        self._call(self._producer.send_and_wait(self.rollout_topic, value, key=key), timeout_s)

    def close(self) -> None:
        try:
            self._call(self._producer.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def example_request(
    n_items: int, ranker: RankerConfig | None = None, seed: int = 0, **fields: Any
) -> dict[str, Any]:
    cfg = ranker or small_ranker()
    rng = random.Random(seed)
    body: dict[str, Any] = {
        "user_id": f"user-{seed}",
        "user_features": [rng.uniform(-1, 1) for _ in range(cfg.user_dim)],
        "history": [f"item-{rng.randrange(10_000)}" for _ in range(cfg.history_len)],
        "context": [rng.uniform(0, 1) for _ in range(cfg.context_dim)],
        "items": [
            {"item_id": f"item-{i}", "features": [rng.uniform(-1, 1) for _ in range(cfg.item_dim)]}
            for i in range(n_items)
        ],
    }
    body.update(fields)
    return body


@dataclass
class NodeProcess:
    """One ``paperec serve`` subprocess on its own port."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    # what a client of /rank and /metrics sends: the node's bearer token, when one is set
    auth_headers: dict[str, str] = field(default_factory=dict)
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_node(
    settings: Settings,
    log_dir: Path,
    *,
    name: str,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> NodeProcess:
    """Start a node (``python -m actor_service``, i.e. ``paperec serve``) on ``settings`` (no wait),
    on ``port`` or a free one. The bearer token of ``settings`` goes to the node by environment
    (argv is visible to every user), and its header to :attr:`NodeProcess.auth_headers`."""
    port = port or free_port()
    auth_env = {
        "PAPEREC_SERVE_AUTH_TOKEN": settings.serve_auth_token,
        "PAPEREC_SERVE_AUTH_TOKEN_FILE": settings.serve_auth_token_file,
    }
    log_path = log_dir / f"{name}.log"
    args = [
        sys.executable, "-m", "actor_service",
        "--port", str(port),
        "--kafka-bootstrap", settings.kafka_bootstrap,
        "--topic-prefix", settings.topic_prefix,
        "--clickhouse-port", str(settings.clickhouse_port),
        "--serve-node-id", name,
        # the node's stored snapshot next to its log: kept across restarts of the same node
        "--serve-snapshot-dir", str(log_dir / f"{name}-snapshot"),
        *(["--dev-mode", "true"] if settings.dev_mode else []),
        *extra_args,
    ]  # fmt: skip
    full_env = {**os.environ, **{k: v for k, v in auth_env.items() if v}, **(env or {})}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    return NodeProcess(port, proc, log_path, settings.serve_auth_headers())


def wait_ready(nodes: Sequence[NodeProcess], timeout_s: float = 60.0, version: int | None = None) -> None:
    """Wait until every node's /readyz is 200 (and serves ``version`` if given)."""
    deadline = time.monotonic() + timeout_s
    pending = list(nodes)
    with httpx.Client(timeout=2.0) as client:
        while pending:
            node = pending[0]
            if node.proc.poll() is not None:
                code = node.proc.returncode
                raise RuntimeError(f"node on port {node.port} exited ({code}):\n{node.log()[-4000:]}")
            try:
                r = client.get(node.url + "/readyz")
                if r.status_code == 200 and (version is None or r.json()["snapshot_version"] == version):
                    pending.pop(0)
                    continue
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {node.port} not ready in {timeout_s} s:\n{node.log()[-4000:]}")
            time.sleep(0.05)


def metric_value(metrics_text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text (0.0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in metrics_text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return 0.0


# ------------------------------------------------------------------------ in-process fakes
@dataclass
class FakeRecord:
    """The fields of an aiokafka ConsumerRecord the snapshot loader reads."""

    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    timestamp: int = field(default_factory=lambda: int(time.time() * 1000))

    @classmethod
    def of(cls, rec: SnapshotRecord, offset: int) -> FakeRecord:
        return cls(offset, rec.key, rec.value, list(rec.headers))


class FakeSnapshotConsumer:
    """An in-memory stand-in for the aiokafka consumer of one single-partition topic."""

    def __init__(self, topic: str, records: Sequence[FakeRecord] = (), fail_start: bool = False) -> None:
        self.topic = topic
        self.records = list(records)
        self.fail_start = fail_start
        self._position = 0

    def append(self, rec: SnapshotRecord) -> None:
        self.records.append(FakeRecord.of(rec, len(self.records)))

    def append_decision(self, decision: RolloutDecision | bytes | None) -> None:
        """A control-topic record: a decision, raw bytes (a forged record) or None (a tombstone)."""
        value = decision if decision is None or isinstance(decision, bytes) else encode_decision(decision)[1]
        self.records.append(FakeRecord(len(self.records), b"rollout", value, []))

    async def start(self) -> None:
        if self.fail_start:
            raise ConnectionError("broker unreachable")

    async def stop(self) -> None:
        pass

    async def topics(self) -> set[str]:
        return {self.topic}

    def assign(self, partitions: Sequence[Any]) -> None:
        pass

    async def seek_to_beginning(self, *partitions: Any) -> None:
        self._position = 0

    def seek(self, partition: Any, offset: int) -> None:
        self._position = offset

    async def end_offsets(self, partitions: Sequence[Any]) -> dict[Any, int]:
        return {p: len(self.records) for p in partitions}

    async def position(self, partition: Any) -> int:
        return self._position

    async def getmany(self, *partitions: Any, timeout_ms: int = 0) -> dict[Any, list[FakeRecord]]:
        batch = self.records[self._position :]
        if not batch:
            await asyncio.sleep(min(timeout_ms, 20) / 1000)
            return {}
        self._position = len(self.records)
        return {partitions[0]: batch}


class FakeProducer:
    """Records what would be produced; ``down`` makes start() and send() fail like an
    unreachable broker."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self.started = False
        self.client = self  # aiokafka's producer.client: the metadata probe

    async def fetch_all_metadata(self) -> None:
        if self.down:
            from aiokafka.errors import KafkaError

            raise KafkaError("Unable to get cluster metadata over all known brokers")

    async def start(self) -> None:
        if self.down:
            from aiokafka.errors import KafkaConnectionError

            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]")
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.down:
            from aiokafka.errors import KafkaTimeoutError

            fut.set_exception(KafkaTimeoutError())
        else:
            self.sent.append((topic, key, value))
            fut.set_result(None)
        return fut
