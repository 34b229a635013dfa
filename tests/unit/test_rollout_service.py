"""The rollout service (rollout/service.py) on an in-memory ControllerIO: snapshots verified with
the node's keys (a forged one never becomes a candidate), decisions signed and written before the
next is taken, a failed write retried, recovery from the control topic (a forged record at its
end skipped and counted), the ClickHouse row and /metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Sequence

import pytest
from prometheus_client import generate_latest
from test_rollout_controller import outcome

from actor_service.devtools import make_model, snapshot_record, tampered
from base.metrics_store import ROLLOUT_DECISION_FIELDS
from base.settings import Settings
from model.ranker import RankerConfig
from model.rollout_signing import decode_decision, encode_decision
from model.snapshot_keys import SnapshotKeys, snapshot_keys
from rollout.service import PROGRESS_HEADER, RecordParts, RolloutService, decision_row
from schemas import ListOutcome, RolloutDecision, encode, make_decision

SETTINGS = Settings(
    dev_mode=True,
    canary_share=0.5,
    rollout_max_drop=0.2,
    rollout_min_lists=40,
    rollout_max_lists=5000,
    rollout_ope_lists=0,
)


class MemoryIO:
    """The three topics in memory; ``fail_writes`` writes fail before one succeeds."""

    def __init__(self, control: Sequence[bytes | None] = (), fail_writes: int = 0) -> None:
        self.control: list[bytes | None] = list(control)
        self.snapshots: list[RecordParts] = []
        self.outcomes: list[RecordParts] = []
        self.sought: list[int | None] = []
        self.fail_writes = fail_writes
        self._snap_pos = self._out_pos = 0

    def latest_decision(self, keys: SnapshotKeys, rejected: Callable[[str], None]) -> RolloutDecision | None:
        from model.rollout_signing import DecisionRejected

        latest = None
        for raw in self.control:
            try:
                latest = decode_decision(raw, keys.accepted)
            except DecisionRejected as exc:
                rejected(exc.kind)
        return latest

    def seek_outcomes(self, from_ms: int | None) -> None:
        self.sought.append(from_ms)

    def mark_ends(self) -> None:
        pass

    def reached_ends(self) -> bool:
        return self._snap_pos == len(self.snapshots) and self._out_pos == len(self.outcomes)

    def poll_snapshots(self) -> list[RecordParts]:
        out, self._snap_pos = self.snapshots[self._snap_pos :], len(self.snapshots)
        return out

    def poll_outcomes(self, timeout_ms: int) -> list[RecordParts]:
        out, self._out_pos = self.outcomes[self._out_pos :], len(self.outcomes)
        return out

    def write(self, decision: RolloutDecision) -> None:
        if self.fail_writes:
            self.fail_writes -= 1
            raise TimeoutError("broker away")
        self.control.append(encode_decision(decision)[1])

    def close(self) -> None:
        pass

    def decisions(self) -> list[RolloutDecision]:
        """The valid decisions on the control topic, in order."""
        from model.rollout_signing import DecisionRejected

        out = []
        for raw in self.control:
            with contextlib.suppress(DecisionRejected):
                out.append(decode_decision(raw, snapshot_keys(SETTINGS).accepted))
        return out


class Rows:
    def __init__(self) -> None:
        self.rows: list[tuple[object, ...]] = []

    def add(self, row: tuple[object, ...]) -> None:
        self.rows.append(row)

    def close(self) -> None:
        pass


def publish(io: MemoryIO, version: int, forged: bool = False) -> None:
    rec = snapshot_record(make_model(version, RankerConfig.tiny()), version, SETTINGS)
    if forged:
        rec = tampered(rec)
    io.snapshots.append((list(rec.headers), rec.value))


def listed(o: ListOutcome) -> RecordParts:
    """A list outcome as the streams worker writes it (no headers)."""
    return (None, encode(o))


def metric(service: RolloutService, line_start: str) -> float:
    text = generate_latest(service.m.registry).decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def test_bootstrap_canary_rollback_on_memory_topics() -> None:
    io, rows, clock = MemoryIO(), Rows(), [1_800_000_000_000]
    service = RolloutService(SETTINGS, io=io, writer=rows, clock=lambda: clock[0])
    service.open()
    assert io.sought == [None]  # no canary open, no gate: list outcomes from now on
    publish(io, 1)
    publish(io, 2, forged=True)  # a bad checksum: counted, never a candidate
    service.catch_up()
    service.decide()
    assert [(d.decision, d.version) for d in io.decisions()] == [("bootstrap", 1)]
    assert metric(service, 'paperec_rollout_snapshots_total{status="rejected"}') == 1
    publish(io, 3)
    service.poll()
    service.decide()
    canary = io.decisions()[-1]
    assert (canary.decision, canary.version, canary.incumbent, canary.candidate) == ("canary", 3, 1, 3)
    for i in range(200):  # the canary loses every click
        arm, version, clicks = ("canary", 3, 0) if i % 2 else ("personalized", 1, 1 + i % 3)
        io.outcomes.append(listed(outcome(arm, version, clock[0] + i, clicks, 10.0 * clicks)))
    io.outcomes.append((None, b'{"type": "list_outcome"}'))  # invalid: counted, skipped
    # the streams worker's progress announcements share the topic: skipped, not invalid
    io.outcomes.append(([(PROGRESS_HEADER, b"1")], b'{"partition": 0, "closed_through_ms": 5}'))
    service.poll()
    service.decide()
    rollback = io.decisions()[-1]
    assert (rollback.decision, rollback.version, rollback.incumbent, rollback.candidate) == (
        "rollback",
        3,
        1,
        None,
    )
    assert rollback.rejected == (3,)
    assert metric(service, 'paperec_rollout_decisions_total{decision="rollback"}') == 1
    assert metric(service, 'paperec_rollout_lists_total{arm="invalid"}') == 1
    assert metric(service, "paperec_rollout_incumbent_version") == 1
    # one ClickHouse row per decision, in the table's column order, the evidence as JSON
    assert [r[1] for r in rows.rows] == [d.decision_id for d in io.decisions()]
    row = dict(zip(ROLLOUT_DECISION_FIELDS, rows.rows[-1], strict=True))
    assert (row["decision"], row["version"], row["incumbent"], row["candidate"]) == ("rollback", 3, 1, None)
    assert json.loads(str(row["evidence_json"]))["click.upper"] < -0.2


def test_a_failed_write_is_retried_before_any_other_decision() -> None:
    io = MemoryIO(fail_writes=2)
    service = RolloutService(SETTINGS, io=io, writer=Rows())
    service.open()
    publish(io, 1)
    service.poll()
    service.decide()  # the bootstrap fails twice, then is written
    publish(io, 2)
    service.poll()
    service.decide()
    assert [(d.decision, d.version) for d in io.decisions()] == [("bootstrap", 1), ("canary", 2)]
    assert metric(service, "paperec_rollout_publish_failures_total") == 2


def test_restart_recovers_the_open_canary_and_skips_a_forged_record() -> None:
    keys = snapshot_keys(SETTINGS)
    key_id, key = keys.signing()
    canary = make_decision(
        decision_id="5-canary-1800000000000",
        decided_at_ms=1_800_000_000_000,
        decision="canary",
        version=5,
        incumbent=4,
        candidate=5,
        canary_share=0.5,
        canary_started_at_ms=1_800_000_000_000,
        reason="test",
        evidence={},
        rejected=(2,),
        key=key,
        key_id=key_id,
    )
    forged = dataclasses.replace(
        canary, decision_id="forged", candidate=None, decision="promote", incumbent=5
    )
    io = MemoryIO([encode(canary), encode(forged), b"not json"])
    rows = Rows()
    service = RolloutService(SETTINGS, io=io, writer=rows, clock=lambda: 1_800_000_500_000)
    service.open()
    assert service.controller.serving.candidate == 5 and service.controller.serving.rejected == (2,)
    assert io.sought == [1_800_000_000_000 - 60_000]  # the canary's lists again, with a margin
    assert rows.rows[0][1] == canary.decision_id  # its row written again (the row id dedups)
    assert metric(service, "paperec_rollout_control_records_rejected_total") == 2
    for i in range(400):
        arm, version = ("canary", 5) if i % 2 else ("personalized", 4)
        clicks = 1 + (i // 2) % 3
        io.outcomes.append(listed(outcome(arm, version, 1_800_000_000_000 + i, clicks, 20.0 * clicks)))
    service.catch_up()
    service.decide()
    promote = io.decisions()[-1]
    assert (promote.decision, promote.version, promote.incumbent, promote.rejected) == ("promote", 5, 5, (2,))


def test_decision_row_matches_the_table_columns() -> None:
    keys = snapshot_keys(SETTINGS)
    key_id, key = keys.signing()
    d = make_decision(
        decision_id="1-bootstrap-1800000000123",
        decided_at_ms=1_800_000_000_123,
        decision="bootstrap",
        version=1,
        incumbent=1,
        candidate=None,
        canary_share=0.0,
        canary_started_at_ms=None,
        reason="first",
        evidence={"a": 1.5},
        rejected=(),
        key=key,
        key_id=key_id,
    )
    row = decision_row(d)
    assert len(row) == len(ROLLOUT_DECISION_FIELDS)
    assert int(row[0].timestamp()) == 1_800_000_000
    assert json.loads(str(row[-1])) == {"a": 1.5}


def test_settings_without_a_usable_key_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="development key"):
        RolloutService(dataclasses.replace(SETTINGS, dev_mode=False), io=MemoryIO())


def test_the_progress_header_is_the_streams_workers() -> None:
    from streams.stage import PROGRESS_HEADER as STREAMS_PROGRESS_HEADER

    assert PROGRESS_HEADER == STREAMS_PROGRESS_HEADER


def test_the_ope_gate_adapter_judges_the_held_snapshot_only() -> None:
    from rollout.service import HeldSnapshot, SnapshotCache, ope_gate, verify_snapshot_record

    settings = dataclasses.replace(SETTINGS, rollout_ope_lists=1000)
    service = RolloutService(settings, io=MemoryIO())
    cache = SnapshotCache(kept=2)
    for version in (1, 2, 3):
        rec = snapshot_record(make_model(version, RankerConfig.tiny()), version, settings)
        _, header = verify_snapshot_record(list(rec.headers), rec.value, service.keys)
        cache.put(version, HeldSnapshot(header, rec.value))
    assert cache.get(1) is None and cache.get(3) is not None  # the newest kept
    judge = ope_gate(settings, service.cfg, cache, service.keys)
    unheld = judge(1, [])
    assert unheld.ok and "not held" in unheld.reason
    few = judge(3, [outcome("personalized", 2, 0, 1)])
    assert few.ok and few.reason.startswith("ope: not judged") and few.evidence["ope.lists"] == 1.0
