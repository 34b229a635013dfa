"""The learner's side of the guarded rollout (docs/rollout.md): follow the control topic, record
the snapshot versions the rollout rejected, keep training.

A rollback (or an off-policy rejection) does not stop or rewind the learner: the next snapshot
it publishes is a new candidate, judged again by the controller. What the learner does is record
it: a warning log line per newly rejected version, the metric ``rollout_rejected_total``, and the
list in its checkpoint (so the record survives restarts). Every control-topic record is decoded
and its signature verified with the snapshot keys (``model.rollout_signing``); a record that
fails is counted (``rollout_invalid_total`` by kind: ``schema``, ``unknown_key``, ``signature``,
``empty``) and changes nothing.

:class:`RolloutLedger` is the state (pure, no Kafka); :class:`RolloutFollower` polls a
:class:`DecisionSource` between training steps (non-blocking, at most every ``poll_every_s``);
:class:`KafkaDecisionSource` reads the topic from its start without a consumer group (the topic
is compacted: the latest decision is the state, older ones only re-add known rejections).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from base import kafka as kafka_clients
from base.settings import Settings
from model.rollout_signing import REJECTION_KINDS, DecisionRejected, decode_decision
from schemas import RolloutDecision

log = logging.getLogger(__name__)

MAX_REJECTED_KEPT = 256
"""Rejected versions the ledger keeps (the most recent): a bound on the checkpoint's size."""


@dataclass
class RolloutLedger:
    """What the learner knows of the rollout."""

    rejected: list[int] = field(default_factory=list)
    """rejected snapshot versions, in the order they were learned (at most MAX_REJECTED_KEPT)"""
    incumbent: int | None = None
    """the snapshot serving the holdout and personalized users, per the latest decision"""
    candidate: int | None = None
    """the snapshot in canary, per the latest decision"""
    last_decision_id: str = ""
    decisions: int = 0
    """authentic decisions read since this process started (not checkpointed)"""
    invalid: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTION_KINDS, 0))
    """records refused since this process started, by kind (not checkpointed)"""

    def apply(self, decision: RolloutDecision) -> list[int]:
        """Record one authentic decision; returns the versions it newly rejects (in its order)."""
        self.decisions += 1
        self.incumbent, self.candidate = decision.incumbent, decision.candidate
        self.last_decision_id = decision.decision_id
        known = set(self.rejected)
        new = [v for v in dict.fromkeys(decision.rejected) if v not in known]
        self.rejected.extend(new)
        del self.rejected[:-MAX_REJECTED_KEPT]
        return new

    def refuse(self, kind: str) -> None:
        """Count a control-topic record that is not an authentic decision."""
        self.invalid[kind] = self.invalid.get(kind, 0) + 1

    def metrics(self) -> dict[str, float]:
        out = {
            "rollout_rejected_total": float(len(self.rejected)),
            "rollout_decisions_total": float(self.decisions),
        }
        out.update({f"rollout_invalid_total/{kind}": float(n) for kind, n in self.invalid.items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "rejected": list(self.rejected),
            "incumbent": self.incumbent,
            "candidate": self.candidate,
            "last_decision_id": self.last_decision_id,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rejected = [int(v) for v in state["rejected"]][-MAX_REJECTED_KEPT:]
        self.incumbent = None if state["incumbent"] is None else int(state["incumbent"])
        self.candidate = None if state["candidate"] is None else int(state["candidate"])
        self.last_decision_id = str(state["last_decision_id"])


class DecisionSource(Protocol):
    def poll(self) -> list[bytes | None]:
        """The values of the records that arrived since the last call (never blocks long)."""
        ...

    def close(self) -> None: ...


class RolloutFollower:
    """Applies the control topic's records to a ledger; called from the training loop."""

    def __init__(
        self,
        source: DecisionSource,
        accepted: Mapping[str, bytes],
        ledger: RolloutLedger | None = None,
        poll_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.accepted = accepted  # SnapshotKeys.accepted: the same keys as snapshots
        self.ledger = ledger or RolloutLedger()
        self.poll_every_s = poll_every_s
        self.clock = clock
        self._last_poll = -float("inf")

    def poll(self) -> int:
        """Read what arrived (at most every ``poll_every_s``); returns the records handled."""
        now = self.clock()
        if now - self._last_poll < self.poll_every_s:
            return 0
        self._last_poll = now
        try:
            values = self.source.poll()
        except Exception as exc:  # a broker hiccup must not stop training; the next poll retries
            log.warning("rollout: reading the control topic failed: %r", exc)
            return 0
        for value in values:
            self.handle(value)
        return len(values)

    def handle(self, value: bytes | None) -> None:
        try:
            decision = decode_decision(value, self.accepted)
        except DecisionRejected as exc:
            self.ledger.refuse(exc.kind)
            log.warning("rollout: control-topic record refused (%s): %s", exc.kind, exc)
            return
        for version in self.ledger.apply(decision):
            log.warning(
                "rollout: snapshot v%d rejected (%s %s: %s); recorded, training continues",
                version,
                decision.decision,
                decision.decision_id,
                decision.reason,
            )

    def close(self) -> None:
        self.source.close()


class KafkaDecisionSource:
    """The control topic's one partition, read from its start, no consumer group. Waits for the
    topic to exist (a deployment without the guarded rollout may never create it): checked again
    every ``retry_s``."""

    def __init__(self, settings: Settings, topic: str, retry_s: float = 30.0) -> None:
        self.topic = topic
        self.retry_s = retry_s
        self.consumer = kafka_clients.consumer(
            settings,
            group_id=None,
            client_id="paperec-learner-rollout",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._assigned = False
        self._next_check = 0.0

    def _assign(self) -> bool:
        if self._assigned:
            return True
        if time.monotonic() < self._next_check:
            return False
        from kafka import TopicPartition

        partitions = self.consumer.partitions_for_topic(self.topic)
        if not partitions:
            if self._next_check == 0.0:
                log.info(
                    "rollout: control topic %s not found; checking again every %.0f s",
                    self.topic,
                    self.retry_s,
                )
            self._next_check = time.monotonic() + self.retry_s
            return False
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self._assigned = True
        log.info("rollout: following %s", self.topic)
        return True

    def poll(self) -> list[bytes | None]:
        if not self._assign():
            return []
        polled = self.consumer.poll(timeout_ms=0)
        return [m.value for msgs in polled.values() for m in msgs]

    def close(self) -> None:
        self.consumer.close()


__all__ = [
    "MAX_REJECTED_KEPT",
    "DecisionSource",
    "KafkaDecisionSource",
    "RolloutFollower",
    "RolloutLedger",
]
