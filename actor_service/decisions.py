"""Follow the rollout controller's decisions (guarded mode): verify each record of the compacted
control topic and apply the latest one to the model slot.

Every node reads the whole ``rollout`` topic itself, from its start (no consumer group; compaction
keeps the latest record, which is the whole serving state), then follows it; its readiness waits
until the end offset seen at start has been read, so a restarted node applies the latest decision
(and its list of rejected versions) before it serves a request. A record is authenticated like a
snapshot header (``model.rollout_signing.decode_decision``: HMAC-SHA256 with the snapshot keys);
a forged, unsigned or malformed record is counted by reason, logged and changes nothing.

Applying a decision is a few dictionary operations under the slot's lock, on the event loop (it
never waits behind a snapshot being built). A decision naming a snapshot the node does not hold
serves the previous incumbent to that arm until the snapshot arrives (counted by role); if the
node has already read past that version on the snapshot topic without building it, the snapshot
consumer reads the topic again (``on_unheld``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from actor_service.follower import TopicFollower
from actor_service.instruments import Instruments
from actor_service.model_slot import ModelSlot
from actor_service.snapshots import RecordLike
from model.rollout_signing import ROLLOUT_KEY, DecisionRejected, decode_decision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecisionOutcome:
    offset: int
    status: str  # "applied", "duplicate", "stale", "rejected"
    decision: str = ""  # the decision's kind (canary, promote, ...); the rejection's kind if rejected
    version: int | None = None


class DecisionApplier:
    """Verifies control-topic records and applies them to the slot (on the event loop)."""

    def __init__(
        self,
        slot: ModelSlot,
        accepted_keys: Mapping[str, bytes],
        instruments: Instruments,
        *,
        on_unheld: Callable[[dict[str, int]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.slot = slot
        self.keys = accepted_keys
        self.m = instruments
        self.on_unheld = on_unheld
        self.clock = clock

    def handle(self, records: Sequence[RecordLike], live: bool = True) -> list[DecisionOutcome]:
        """In offset order: every record is applied in turn, so the last valid one is the state.
        ``live``: the records are new (not the catch-up at start), so their latency is measured."""
        return [self.handle_one(rec, live) for rec in records]

    def handle_one(self, rec: RecordLike, live: bool = True) -> DecisionOutcome:
        if rec.key != ROLLOUT_KEY:
            return self._reject(rec, "key", f"record key {rec.key!r} is not {ROLLOUT_KEY!r}")
        try:
            decision = decode_decision(rec.value, self.keys)
        except DecisionRejected as exc:
            return self._reject(rec, exc.kind, str(exc))
        applied = self.slot.apply(decision)
        if applied.status != "applied":
            self.m.decisions_ignored.labels(applied.status).inc()
            log.warning(
                "rollout decision %s at offset %d ignored (%s): decided at %d, the applied one at %s",
                decision.decision_id,
                rec.offset,
                applied.status,
                decision.decided_at_ms,
                None if self.slot.decision is None else self.slot.decision.decided_at_ms,
            )
            return DecisionOutcome(rec.offset, applied.status, decision.decision, decision.version)
        latency_s = max(0.0, self.clock() - decision.decided_at_ms / 1000.0)
        self.m.decisions_applied.labels(decision.decision).inc()
        if live:
            self.m.decision_to_applied.observe(latency_s)
        for role in applied.unheld:
            self.m.decision_unheld.labels(role).inc()
        log.info(
            "rollout decision %s applied: %s of snapshot %d (%s); serving incumbent %s, canary %s at "
            "share %g%s; %.0f ms after the decision",
            decision.decision_id,
            decision.decision,
            decision.version,
            decision.reason,
            self.slot.version(),
            self.slot.candidate_version(),
            decision.canary_share if decision.candidate is not None else 0.0,
            "".join(f"; {role} {v} not held yet" for role, v in applied.unheld.items()),
            latency_s * 1e3,
        )
        if applied.unheld and self.on_unheld is not None:
            self.on_unheld(applied.unheld)
        return DecisionOutcome(rec.offset, "applied", decision.decision, decision.version)

    def _reject(self, rec: RecordLike, kind: str, reason: str) -> DecisionOutcome:
        self.m.decisions_rejected.labels(kind).inc()
        log.error(
            "rejected rollout record at offset %d: %s; the serving state is unchanged", rec.offset, reason
        )
        return DecisionOutcome(rec.offset, "rejected", kind)


class DecisionConsumer(TopicFollower):
    """The background task that follows the control topic and feeds the applier."""

    def __init__(
        self,
        applier: DecisionApplier,
        make_consumer: Callable[[], Any],
        topic: str,
        max_backoff_s: float = 5.0,
    ) -> None:
        super().__init__("rollout decision consumer", make_consumer, topic, self._apply, max_backoff_s)
        self.applier = applier

    async def _apply(self, records: Sequence[RecordLike]) -> None:
        self.applier.handle(records, live=self.caught_up.is_set())
