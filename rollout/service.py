"""``paperec rollout``: the rollout controller on Kafka (see rollout/controller.py for the rules).

One loop on one thread:

- follows the snapshot topic from its start (compacted: the latest snapshot is there), verifying
  every record with the accepted keys, exactly as a serving node does (checksum, HMAC signature,
  key id); a record that does not verify is counted and never becomes a candidate;
- follows the list outcomes topic (every partition, no consumer group: the controller's position
  is its state's business, not the group's), decoding each record with ``schemas`` (a bad one is
  counted and skipped; the streams worker's progress records on that topic are no lists);
- after each poll, asks the controller for decisions; each is signed with the snapshot signing key
  (``model.rollout_signing``), written to the compacted control topic (key ``b"rollout"``) and
  flushed at once, then counted on ``/metrics`` and written as a ``rollout_decisions`` row.

Recovery (stateless apart from the topics): on start the control topic is read to its end and its
latest verified decision is the state (a forged record is counted and skipped). An open canary is
reopened: list outcomes are re-read from ``canary_started_at_ms`` (``offsets_for_times``, less a
margin for clock skew; lists before the start are filtered out by their event time), and the
controller decides only once it has read the snapshot and list-outcome topics up to their end
offsets at start, so a restarted controller decides on at least the lists the killed one had.
A decision the killed controller made but did not get written is simply made again. The
ClickHouse row of the recovered decision is written again (its row id is the decision id: the
table keeps one).

A decision that cannot be written (broker down) is retried with backoff; the controller takes no
further decision until it is out, so the topic never skips a state.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from base import kafka as kafka_clients
from base.settings import TOPIC_LIST_OUTCOMES, TOPIC_ROLLOUT, TOPIC_SNAPSHOTS, Settings
from model.rollout_signing import DecisionRejected, decode_decision, encode_decision, sign_decision
from model.snapshot import HEADER_NAME
from model.snapshot_keys import SnapshotKeys, snapshot_keys
from rollout.controller import Controller, ControllerConfig, Decision, GateVerdict, OpeGate
from schemas import (
    Exploration,
    ListOutcome,
    RolloutDecision,
    SchemaError,
    decode_list_outcome,
    decode_snapshot_header,
    verify_snapshot,
)

log = logging.getLogger(__name__)

P = "paperec_rollout_"
REPLAY_MARGIN_MS = 60_000
"""list outcomes are re-read from this long before the canary's start: records are found by their
Kafka timestamp (when the streams worker wrote them), lists are counted by their event time"""
OPE_LOOKBACK_MS = 15 * 60 * 1000
"""at start with no canary open, the gate's logged lists are read from this long ago"""
SNAPSHOTS_KEPT = 4
"""verified snapshot payloads kept in memory for the off-policy gate (the newest ones)"""
FETCH_BYTES = 64 * 1024 * 1024
PROGRESS_HEADER = "paperec-streams-progress"
"""Header of the streams worker's progress announcements on the list-outcomes topic (the name of
``streams.stage.PROGRESS_HEADER``: a service does not import another; a unit test checks they
agree). They are no list outcomes and are skipped."""


class Instruments:
    """The controller's ``/metrics``, in a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.decisions = Counter(P + "decisions_total", "decisions written by kind", ["decision"], registry=r)
        self.lists = Counter(
            P + "lists_total",
            "list outcomes read, by where they counted: canary, personalized, or why not (idle, early, "
            "other, duplicate, invalid)",
            ["arm"],
            registry=r,
        )
        self.snapshots = Counter(
            P + "snapshots_total",
            "snapshot records read, by status (verified, rejected)",
            ["status"],
            registry=r,
        )
        self.control_rejected = Counter(
            P + "control_records_rejected_total",
            "control-topic records rejected at start (forged, unsigned, malformed), by reason",
            ["reason"],
            registry=r,
        )
        self.publish_failures = Counter(
            P + "publish_failures_total", "decision writes that failed (retried)", registry=r
        )
        self.incumbent = Gauge(P + "incumbent_version", "incumbent snapshot version (0: none)", registry=r)
        self.candidate = Gauge(P + "candidate_version", "canary candidate version (0: none)", registry=r)
        self.canary_lists = Gauge(
            P + "canary_lists", "lists counted in the open canary, by arm", ["arm"], registry=r
        )
        self.bound = Gauge(
            P + "relative_change",
            "the open canary's relative change per objective, estimate and confidence-sequence bounds",
            ["objective", "stat"],
            registry=r,
        )
        self.last_decision = Gauge(
            P + "last_decision_timestamp_seconds", "when the latest decision was made", registry=r
        )


@dataclass
class HeldSnapshot:
    header_bytes: bytes
    payload: bytes


class SnapshotCache:
    """The newest verified snapshots' bytes, by version (for the off-policy gate)."""

    def __init__(self, kept: int = SNAPSHOTS_KEPT) -> None:
        self.kept = kept
        self._by_version: OrderedDict[int, HeldSnapshot] = OrderedDict()

    def put(self, version: int, held: HeldSnapshot) -> None:
        self._by_version[version] = held
        while len(self._by_version) > self.kept:
            self._by_version.pop(min(self._by_version))

    def get(self, version: int) -> HeldSnapshot | None:
        return self._by_version.get(version)


def verify_snapshot_record(
    headers: Sequence[tuple[str, bytes]] | None, payload: bytes | None, keys: SnapshotKeys
) -> tuple[int, bytes]:
    """(version, header bytes) of a snapshot record that verifies with the accepted keys; raises
    SchemaError (or ValueError for a record without header or payload) otherwise."""
    if payload is None:
        raise ValueError("tombstone")
    raw = next((v for name, v in headers or () if name == HEADER_NAME), None)
    if raw is None:
        raise ValueError(f"no {HEADER_NAME} header")
    header = decode_snapshot_header(raw)
    verify_snapshot(header, payload, keys.accepted)
    return header.snapshot_version, raw


def ope_gate(settings: Settings, cfg: ControllerConfig, cache: SnapshotCache, keys: SnapshotKeys) -> OpeGate:
    """The off-policy gate of ``rollout.ope`` on the cached candidate snapshot."""
    from model.snapshot import SnapshotRejected, decode_snapshot, exploration_of
    from rollout import ope

    gate_cfg = ope.GateConfig(max_drop=cfg.test.max_drop, min_lists=cfg.ope_min_lists)
    fallback = Exploration(noise_std=settings.serve_noise_std)

    def judge(version: int, logged: Sequence[ListOutcome]) -> GateVerdict:
        held = cache.get(version)
        if held is None:
            return GateVerdict(True, {}, f"ope: not judged, snapshot {version} not held")
        try:
            header, model = decode_snapshot(held.header_bytes, held.payload, keys.accepted)
        except SnapshotRejected as exc:
            return GateVerdict(True, {}, f"ope: not judged, snapshot {version} does not load: {exc}")
        started = time.perf_counter()
        result = ope.gate(model, exploration_of(header, fallback), logged, gate_cfg)
        log.info(
            "ope gate on snapshot %d: %s (%.1f s)", version, result.reason, time.perf_counter() - started
        )
        return GateVerdict(result.ok, dict(result.evidence), result.reason)

    return judge


def decision_row(d: RolloutDecision) -> tuple[Any, ...]:
    """The ``rollout_decisions`` row of a decision (base.metrics_store.ROLLOUT_DECISION_FIELDS)."""
    return (
        datetime.fromtimestamp(d.decided_at_ms // 1000),
        d.decision_id,
        d.decision,
        d.version,
        d.incumbent,
        d.candidate,
        d.canary_share,
        d.reason,
        json.dumps(d.evidence, sort_keys=True),
    )


RecordParts = tuple[Sequence[tuple[str, bytes]] | None, bytes | None]
"""(headers, value) of a record"""


class ControllerIO(Protocol):
    """What the service needs from Kafka (:class:`KafkaIO`; tests pass an in-memory one)."""

    def latest_decision(self, keys: SnapshotKeys, rejected: Callable[[str], None]) -> RolloutDecision | None:
        """The control topic's latest verified decision (None: none); ``rejected(kind)`` per
        record that does not verify."""
        ...

    def seek_outcomes(self, from_ms: int | None) -> None:
        """Read list outcomes from records written at ``from_ms`` on (None: from now on)."""
        ...

    def mark_ends(self) -> None:
        """Remember both topics' end offsets now (see :meth:`reached_ends`)."""
        ...

    def reached_ends(self) -> bool:
        """Both topics were read up to the end offsets :meth:`mark_ends` remembered."""
        ...

    def poll_snapshots(self) -> list[RecordParts]: ...

    def poll_outcomes(self, timeout_ms: int) -> list[RecordParts]: ...

    def write(self, decision: RolloutDecision) -> None:
        """Write to the control topic and wait for the broker's acknowledgement (raise if not)."""
        ...

    def close(self) -> None: ...


class KafkaIO:
    """:class:`ControllerIO` on Kafka (kafka-python clients built in base.kafka): the snapshot and
    list outcomes consumers (manually assigned, no group) and the control topic's producer."""

    def __init__(self, settings: Settings, write_timeout_s: float = 10.0) -> None:
        from kafka import TopicPartition

        s = self.settings = settings
        self.snapshot_topic = s.topic(TOPIC_SNAPSHOTS)
        self.outcome_topic = s.topic(TOPIC_LIST_OUTCOMES)
        self.control_topic = s.topic(TOPIC_ROLLOUT)
        self.write_timeout_s = write_timeout_s
        options = {
            "group_id": None,
            "enable_auto_commit": False,
            "fetch_max_bytes": FETCH_BYTES,
            "max_partition_fetch_bytes": FETCH_BYTES,
        }
        self.snapshots = kafka_clients.consumer(s, client_id="paperec-rollout-snapshots", **options)
        self.outcomes = kafka_clients.consumer(s, client_id="paperec-rollout-outcomes", **options)
        # flushed at once: a decision is on the topic (acks=all) before the next one is taken
        self.producer = kafka_clients.producer(s, acks="all", linger_ms=0, client_id="paperec-rollout")
        self.snapshot_tps = [TopicPartition(self.snapshot_topic, 0)]
        partitions = _partitions(self.outcomes, self.outcome_topic)
        self.outcome_tps = [TopicPartition(self.outcome_topic, p) for p in sorted(partitions)]
        _partitions(self.snapshots, self.snapshot_topic)
        self.snapshots.assign(self.snapshot_tps)
        self.snapshots.seek_to_beginning(*self.snapshot_tps)
        self.outcomes.assign(self.outcome_tps)
        self._ends: dict[Any, int] = {}

    def latest_decision(self, keys: SnapshotKeys, rejected: Callable[[str], None]) -> RolloutDecision | None:
        from kafka import TopicPartition

        tp = TopicPartition(self.control_topic, 0)
        consumer = kafka_clients.consumer(
            self.settings, client_id="paperec-rollout-control", group_id=None, enable_auto_commit=False
        )
        try:
            _partitions(consumer, self.control_topic)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            end = consumer.end_offsets([tp])[tp]
            latest: RolloutDecision | None = None
            deadline = time.monotonic() + 30.0
            while consumer.position(tp) < end and time.monotonic() < deadline:
                for rec in consumer.poll(timeout_ms=500).get(tp, []):
                    try:
                        latest = decode_decision(rec.value, keys.accepted)
                    except DecisionRejected as exc:
                        rejected(exc.kind)
                        log.error("control record at offset %d rejected: %s", rec.offset, exc)
            if consumer.position(tp) < end:
                raise RuntimeError(f"could not read {self.control_topic} to its end offset {end}")
            return latest
        finally:
            consumer.close()

    def seek_outcomes(self, from_ms: int | None) -> None:
        if from_ms is None:
            self.outcomes.seek_to_end(*self.outcome_tps)
            return
        found = self.outcomes.offsets_for_times({tp: max(0, from_ms) for tp in self.outcome_tps})
        for tp in self.outcome_tps:
            at = found.get(tp)
            if at is None:  # nothing written since: from the end
                self.outcomes.seek_to_end(tp)
            else:
                self.outcomes.seek(tp, at.offset)

    def mark_ends(self) -> None:
        self._ends = {
            **self.snapshots.end_offsets(self.snapshot_tps),
            **self.outcomes.end_offsets(self.outcome_tps),
        }

    def reached_ends(self) -> bool:
        def position(tp: Any) -> int:
            consumer = self.snapshots if tp.topic == self.snapshot_topic else self.outcomes
            return int(consumer.position(tp))

        return all(position(tp) >= end for tp, end in self._ends.items())

    def poll_snapshots(self) -> list[RecordParts]:
        polled = self.snapshots.poll(timeout_ms=0)
        return [(rec.headers, rec.value) for records in polled.values() for rec in records]

    def poll_outcomes(self, timeout_ms: int) -> list[RecordParts]:
        polled = self.outcomes.poll(timeout_ms=timeout_ms, max_records=5_000)
        return [(rec.headers, rec.value) for records in polled.values() for rec in records]

    def write(self, decision: RolloutDecision) -> None:
        key, value = encode_decision(decision)
        self.producer.send(self.control_topic, key=key, value=value).get(timeout=self.write_timeout_s)
        self.producer.flush(timeout=self.write_timeout_s)

    def close(self) -> None:
        for consumer in (self.snapshots, self.outcomes):
            try:
                consumer.close(autocommit=False)
            except Exception as exc:
                log.warning("consumer did not close cleanly: %s", exc)
        try:
            self.producer.close(timeout=10)
        except Exception as exc:
            log.warning("producer did not close cleanly: %s", exc)


def _partitions(consumer: Any, topic: str, wait_s: float = 30.0) -> set[int]:
    deadline = time.monotonic() + wait_s
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} not found (run `paperec topics create`)")
        time.sleep(0.5)


class RolloutService:
    """The loop (see the module docstring). ``io`` and ``writer`` injectable for tests."""

    def __init__(
        self,
        settings: Settings,
        *,
        io: ControllerIO | None = None,
        writer: Any = None,
        clock: Callable[[], int] | None = None,
        poll_ms: int = 200,
    ) -> None:
        self.settings = settings
        self.keys = snapshot_keys(settings)
        self.keys.signing()  # no signing key: fail at start, naming the setting
        self.cfg = ControllerConfig.from_settings(settings)
        self.cache = SnapshotCache()
        gate = ope_gate(settings, self.cfg, self.cache, self.keys) if self.cfg.ope_lists else None
        kwargs: dict[str, Any] = {"ope_gate": gate}
        if clock is not None:
            kwargs["clock"] = clock
        self.controller = Controller(self.cfg, **kwargs)
        self.m = Instruments()
        self.io = io
        self.writer = writer
        self.poll_ms = poll_ms
        self.stop_event = threading.Event()

    def request_stop(self) -> None:
        self.stop_event.set()

    # ------------------------------------------------------------------ start
    def open(self) -> None:
        if self.io is None:
            self.io = KafkaIO(self.settings)
        latest = self.io.latest_decision(self.keys, lambda kind: self.m.control_rejected.labels(kind).inc())
        self.controller.recover(latest)
        if latest is not None and self.writer is not None:
            self.writer.add(decision_row(latest))  # idempotent: the row id is the decision id
        replay = self.controller.replay_from_ms
        if replay is not None:
            self.io.seek_outcomes(replay - REPLAY_MARGIN_MS)
            log.info(
                "canary of snapshot %s open since %d: re-reading its list outcomes",
                latest and latest.candidate,
                replay,
            )
        elif self.cfg.ope_lists:
            self.io.seek_outcomes(int(time.time() * 1000) - OPE_LOOKBACK_MS)
        else:
            self.io.seek_outcomes(None)

    def catch_up(self, timeout_s: float = 120.0) -> None:
        """Read both topics up to their end offsets at start before any decision."""
        assert self.io is not None
        self.io.mark_ends()
        deadline = time.monotonic() + timeout_s
        while not self.stop_event.is_set():
            if self.io.reached_ends():
                break
            if time.monotonic() > deadline:
                log.warning("not caught up after %.0f s; deciding on what was read", timeout_s)
                break
            self.poll()
        c = self.controller
        log.info(
            "caught up: %d verified snapshots, %d canary / %d personalized lists counted",
            len(c.verified),
            c.canary.lists,
            c.personalized.lists,
        )

    # ------------------------------------------------------------------ loop
    def poll(self) -> None:
        assert self.io is not None
        for headers, value in self.io.poll_snapshots():
            self.on_snapshot(headers, value)
        for headers, raw in self.io.poll_outcomes(self.poll_ms):
            self.on_outcome(headers, raw)

    def on_snapshot(self, headers: Sequence[tuple[str, bytes]] | None, payload: bytes | None) -> None:
        if payload is None:
            return  # tombstone
        try:
            version, header_bytes = verify_snapshot_record(headers, payload, self.keys)
        except (SchemaError, ValueError) as exc:
            self.m.snapshots.labels("rejected").inc()
            log.error("snapshot record rejected: %s", exc)
            return
        self.m.snapshots.labels("verified").inc()
        if self.cfg.ope_lists:
            self.cache.put(version, HeldSnapshot(header_bytes, payload))
        self.controller.snapshot_verified(version)

    def on_outcome(self, headers: Sequence[tuple[str, bytes]] | None, raw: bytes | None) -> None:
        if any(name == PROGRESS_HEADER for name, _ in headers or ()):
            return  # the streams worker's progress announcement, not a list
        try:
            outcome = decode_list_outcome(raw or b"")
        except SchemaError as exc:
            self.m.lists.labels("invalid").inc()
            log.warning("list outcome skipped: %s", exc)
            return
        self.m.lists.labels(self.controller.list_outcome(outcome).arm).inc()

    def decide(self) -> None:
        """Every due decision, each written before the next is taken."""
        while not self.stop_event.is_set():
            draft = self.controller.step()
            if draft is None:
                break
            self.publish(draft)
        self.observe()

    def publish(self, draft: Decision) -> None:
        assert self.io is not None
        signed = sign_decision(self.keys, **draft.fields())
        backoff = 0.2
        while True:
            try:
                self.io.write(signed)
                break
            except Exception as exc:  # broker away: the state must reach the topic before moving on
                self.m.publish_failures.inc()
                log.error(
                    "decision %s not written (%s); retrying in %.1f s", signed.decision_id, exc, backoff
                )
                if self.stop_event.wait(backoff):
                    return
                backoff = min(backoff * 2, 10.0)
        self.m.decisions.labels(signed.decision).inc()
        self.m.last_decision.set(signed.decided_at_ms / 1000.0)
        written_ms = int(time.time() * 1000)
        log.info(
            "wrote decision %s (%s of snapshot %d; incumbent %s, candidate %s) %d ms after deciding",
            signed.decision_id,
            signed.decision,
            signed.version,
            signed.incumbent,
            signed.candidate,
            written_ms - signed.decided_at_ms,
        )
        if self.writer is not None:
            self.writer.add(decision_row(signed))

    def observe(self) -> None:
        c, m = self.controller, self.m
        m.incumbent.set(c.serving.incumbent or 0)
        m.candidate.set(c.serving.candidate or 0)
        m.canary_lists.labels("canary").set(c.canary.lists)
        m.canary_lists.labels("personalized").set(c.personalized.lists)
        for key, value in c.last_verdict.items():
            objective, _, stat = key.partition(".")
            if objective in c.objectives:
                m.bound.labels(objective, stat).set(value)

    def run(self) -> int:
        self.open()
        try:
            self.catch_up()
            while not self.stop_event.is_set():
                self.decide()
                self.poll()
        finally:
            self.close()
        return 0

    def close(self) -> None:
        if self.io is not None:
            self.io.close()
        if self.writer is not None:
            self.writer.close()


def serve_metrics(m: Instruments, host: str, port: int) -> None:
    """``/metrics`` (any path answers with the metrics: a liveness probe may use ``/healthz``)."""
    if port:
        start_http_server(port, addr=host, registry=m.registry)
        log.info("metrics on http://%s:%d/metrics", host, port)


__all__ = [
    "ControllerIO",
    "HeldSnapshot",
    "Instruments",
    "KafkaIO",
    "RolloutService",
    "SnapshotCache",
    "decision_row",
    "ope_gate",
    "serve_metrics",
    "verify_snapshot_record",
]
