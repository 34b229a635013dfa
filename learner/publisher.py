"""Actor snapshots to the compacted ``actor-snapshots`` topic.

Encoding (serving copy of ranker + weight generator -> safetensors -> signed header, see
:mod:`model.snapshot`) runs on the training thread: it must read a consistent model between two
steps and takes milliseconds. Sending and waiting for the broker's acknowledgement (acks=all)
runs on a publisher thread, so a slow broker never stalls training. If a newer snapshot is ready
while an older one still waits to be sent, the older one is dropped (the topic is compacted:
only the newest matters). A failed publish is logged and counted, never raised.

Size policy: one message per snapshot; the limit is raised consistently, not chunked. The
producer's ``max_request_size`` is ``Settings.max_message_bytes``, the same value the topic's
``max.message.bytes`` and the dev broker's ``message.max.bytes`` are set from (16 MiB default;
the default model's snapshot is ~4.5 MB, already over Kafka's 1 MiB default).

Global weights: every header carries ``global_weights`` (:class:`GlobalWeights`), the learner's
moving average of its weight generator's mean weights, which the rollout's holdout arm is served.

Versions: strictly increasing across restarts. The first version of a run is
``max(version in the checkpoint, newest verified version on the topic) + 1``. Only records that
verify with the accepted keys count: anyone who can write to the topic could otherwise push the
learner's versions to the int64 limit with one unsigned header and stop publishing for good.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from base import kafka as kafka_clients
from base.settings import Settings
from model.scoring import ActorModel
from model.snapshot import HEADER_NAME, encode_snapshot, to_record
from schemas import Exploration, SchemaError, SnapshotHeader, decode_snapshot_header, verify_snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishResult:
    version: int
    training_step: int
    payload_bytes: int
    encode_s: float
    send_s: float  # send until the broker's ack
    ok: bool
    error: str = ""


GLOBAL_WEIGHTS_MOMENTUM = 0.99
"""Momentum of :class:`GlobalWeights`: each training batch's mean weights count 1%, so the average
spans the last few hundred batches (half-life ln 0.5 / ln 0.99 ~ 69 steps, about one snapshot
interval at the defaults): smooth enough that one batch does not move the holdout, recent enough
to follow the generator."""


@dataclass
class GlobalWeights:
    """The exponential moving average of the weight generator's mean weights over training
    batches, one per objective: the "matched mean weight" the evaluation compares personalized
    weights against, published in every snapshot header as ``global_weights`` and served to the
    rollout's holdout arm. Starts at the first batch's mean (no bias toward zero)."""

    momentum: float = GLOBAL_WEIGHTS_MOMENTUM
    """weight of the previous average in each update"""
    mean: list[float] | None = None
    """the average (None until the first batch)"""
    updates: int = 0
    """batches averaged"""
    skipped: int = field(default=0, compare=False)
    """batch means refused: not finite, negative or of another length"""

    def update(self, batch_mean: Sequence[float]) -> None:
        """Fold in one training batch's mean weights."""
        x = [float(v) for v in batch_mean]
        if (
            not x
            or not all(math.isfinite(v) and v >= 0.0 for v in x)
            or (self.mean is not None and len(x) != len(self.mean))
        ):
            self.skipped += 1
            return
        if self.mean is None:
            self.mean = x
        else:
            m = self.momentum
            self.mean = [m * a + (1.0 - m) * b for a, b in zip(self.mean, x, strict=True)]
        self.updates += 1

    def value(self) -> tuple[float, ...] | None:
        """The average, renormalized onto the simplex (rounding); None before any batch."""
        if self.mean is None or sum(self.mean) <= 0.0:
            return None
        total = math.fsum(self.mean)
        return tuple(v / total for v in self.mean)

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "mean": self.mean, "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.momentum = float(state["momentum"])
        self.mean = None if state["mean"] is None else [float(v) for v in state["mean"]]
        self.updates = int(state["updates"])


@dataclass(frozen=True)
class VersionScan:
    version: int  # highest verified snapshot_version (0 if none)
    verified: int  # snapshot records that verified
    unverified: int  # records skipped: no or undecodable header, bad signature or checksum, unknown key id


def scan_versions(
    records: Iterable[tuple[list[tuple[str, bytes]] | None, bytes | None]], keys: bytes | Mapping[str, bytes]
) -> VersionScan:
    """The highest version among ``(headers, value)`` records that verify with ``keys``.

    Nodes load only verified snapshots, so only those are versions the learner must outrun.
    Tombstones (no value) are not snapshots and count as neither.
    """
    best, verified, unverified = 0, 0, 0
    for headers, value in records:
        if value is None:
            continue
        version = _verified_version(headers, value, keys)
        if version is None:
            unverified += 1
        else:
            verified += 1
            best = max(best, version)
    return VersionScan(best, verified, unverified)


def _verified_version(
    headers: list[tuple[str, bytes]] | None, payload: bytes, keys: bytes | Mapping[str, bytes]
) -> int | None:
    raw = next((v for name, v in headers or () if name == HEADER_NAME), None)
    if raw is None:
        log.warning("record on the snapshot topic has no %s header: ignored for versions", HEADER_NAME)
        return None
    try:
        header = decode_snapshot_header(raw)
        verify_snapshot(header, payload, keys)
    except SchemaError as exc:
        log.warning("snapshot on the topic does not verify (%s): its version is ignored", exc)
        return None
    return header.snapshot_version


def latest_version(
    settings: Settings, topic: str, keys: bytes | Mapping[str, bytes], tail: int = 16
) -> VersionScan:
    """:func:`scan_versions` over the last ``tail`` records of the snapshot topic."""
    from kafka import TopicPartition

    consumer = kafka_clients.consumer(
        settings,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=256 * 1024 * 1024,
        max_partition_fetch_bytes=256 * 1024 * 1024,
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return VersionScan(0, 0, 0)
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        begins = consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begins[tp], ends[tp] - tail))
        records: list[tuple[list[tuple[str, bytes]] | None, bytes | None]] = []
        remaining = {tp for tp in tps if ends[tp] > begins[tp]}
        deadline = time.monotonic() + 15.0
        while remaining and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=500).items():
                records.extend((m.headers, m.value) for m in msgs)
                if consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            remaining = {tp for tp in remaining if consumer.position(tp) < ends[tp]}
        return scan_versions(records, keys)
    finally:
        consumer.close()


class SnapshotPublisher:
    def __init__(
        self,
        settings: Settings,
        topic: str,
        key: bytes,
        max_message_bytes: int,
        first_version: int,
        on_result: Callable[[PublishResult], None] | None = None,
        send_timeout_s: float = 30.0,
        key_id: str | None = None,
        *,
        exploration: Exploration,
        producer: Any = None,
    ) -> None:
        """``producer``: a kafka-python ``KafkaProducer`` or a stand-in (tests); None: one for
        ``settings``' brokers whose request size limit is ``max_message_bytes``."""
        self.topic = topic
        self.key = key
        self.key_id = key_id  # recorded in every header, so nodes pick the right key while rotating
        self.exploration = exploration  # recorded in every header: the nodes serve with it
        self.max_message_bytes = max_message_bytes
        self.next_version = first_version
        self.on_result = on_result
        self.send_timeout_s = send_timeout_s
        self.published = 0
        self.failed = 0
        self.superseded = 0
        self.last_header: SnapshotHeader | None = None
        if producer is None:
            producer = kafka_clients.producer(
                settings,
                client_id="paperec-learner-snapshots",
                acks="all",
                linger_ms=0,
                max_request_size=max_message_bytes,
                request_timeout_ms=int(send_timeout_s * 1000),
            )
        self.producer = producer
        self._pending: tuple[SnapshotHeader, bytes, float] | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="learner-publish", daemon=True)
        self._thread.start()

    @property
    def last_version(self) -> int:
        """The last version handed out (published or not): what a checkpoint must remember."""
        return self.next_version - 1

    def publish(
        self,
        make_model: Callable[[], ActorModel],
        *,
        training_step: int,
        watermark_ms: int,
        global_weights: tuple[float, ...] | None = None,
    ) -> SnapshotHeader | None:
        """Build the serving model and encode it now (caller's thread: between two training
        steps, so the weights are consistent), send it in the background. ``global_weights``:
        the header's (:class:`GlobalWeights`; None: none yet). None on failure."""
        start = time.perf_counter()
        version = self.next_version
        try:
            header, payload = encode_snapshot(
                make_model(),
                snapshot_version=version,
                training_step=training_step,
                watermark_ms=watermark_ms,
                exploration=self.exploration,
                key=self.key,
                key_id=self.key_id,
                max_message_bytes=self.max_message_bytes,
                global_weights=global_weights,
            )
        except Exception as exc:  # e.g. over the size limit: log and keep training
            self.failed += 1
            log.error("snapshot v%d not encoded: %s", version, exc)
            self._report(
                PublishResult(version, training_step, 0, time.perf_counter() - start, 0.0, False, str(exc))
            )
            return None
        self.next_version += 1
        with self._cond:
            if self._pending is not None:
                self.superseded += 1
                log.info(
                    "snapshot v%d superseded by v%d before it was sent",
                    self._pending[0].snapshot_version,
                    version,
                )
            self._pending = (header, payload, time.perf_counter() - start)
            self._cond.notify()
        return header

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is pending or being sent (True) or ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        self.wait_idle(timeout_s)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        self.producer.close(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._pending is None:
                    return
                (header, payload, encode_s), self._pending = self._pending, None
                self._busy = True
            try:
                self._send(header, payload, encode_s)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _send(self, header: SnapshotHeader, payload: bytes, encode_s: float) -> None:
        rec = to_record(header, payload)
        start = time.perf_counter()
        failure: Exception | None = None
        try:
            self.producer.send(self.topic, key=rec.key, value=rec.value, headers=rec.headers).get(
                timeout=self.send_timeout_s
            )
        except Exception as exc:
            failure = exc
        result = PublishResult(
            header.snapshot_version,
            header.training_step,
            len(payload),
            encode_s,
            time.perf_counter() - start,
            failure is None,
            "" if failure is None else str(failure),
        )
        if result.ok:
            self.published += 1
            self.last_header = header
            log.info(
                "snapshot v%d published: step %d, %.2f MB, encode %.0f ms, send %.0f ms",
                header.snapshot_version,
                header.training_step,
                len(payload) / 1e6,
                encode_s * 1000,
                result.send_s * 1000,
            )
        else:
            self.failed += 1
            log.error("snapshot v%d publish failed: %s", header.snapshot_version, failure)
        self._report(result)

    def _report(self, result: PublishResult) -> None:
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:  # metrics must never break publishing
                log.exception("publish result callback failed")
