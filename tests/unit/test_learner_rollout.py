"""The learner's side of the guarded rollout (learner/rollout_follow.py, learner/publisher.py):
signed decisions on the control topic are applied and rejected versions recorded (log, metric,
checkpoint), forged or malformed records are refused and counted; snapshot headers carry the
moving average of the weight generator's mean weights as ``global_weights``."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_learner_service_run import KEY, Fakes, _service

import schemas
from learner.publisher import GlobalWeights
from learner.rollout_follow import MAX_REJECTED_KEPT, RolloutFollower, RolloutLedger
from model.rollout_signing import encode_decision, sign_decision
from model.snapshot import header_of
from model.snapshot_keys import SnapshotKeys

KEYS = SnapshotKeys({"k1": KEY}, "k1")


def decision(decision: str, version: int, **kw: Any) -> schemas.RolloutDecision:
    fields: dict[str, Any] = {
        "decision_id": f"{version}-{decision}",
        "decided_at_ms": 1_000 + version,
        "decision": decision,
        "version": version,
        "incumbent": 1,
        "candidate": None,
        "canary_share": 0.2,
        "canary_started_at_ms": None,
        "reason": "test",
        "evidence": {"dwell.upper": -0.08},
        "rejected": (),
        **kw,
    }
    return sign_decision(KEYS, **fields)


class MemoryDecisions:
    """The control topic's values, handed out once each."""

    def __init__(self, values: list[bytes | None]) -> None:
        self.values = list(values)
        self.closed = False

    def poll(self) -> list[bytes | None]:
        out, self.values = self.values, []
        return out

    def close(self) -> None:
        self.closed = True


def control_topic() -> list[bytes | None]:
    canary = decision("canary", 2, candidate=2, canary_started_at_ms=1_000)
    rollback = decision("rollback", 2, rejected=(2,))
    forged = schemas.make_decision(  # signed, but with a key the learner does not accept
        **{
            f.name: getattr(rollback, f.name)
            for f in dataclasses.fields(rollback)
            if f.init and f.name != "signature"
        }
        | {"key": b"attacker", "rejected": (1, 2), "version": 1, "incumbent": 2, "decision_id": "x"}
    )
    tampered = orjson.loads(encode_decision(rollback)[1])
    tampered["rejected"] = [1, 2]  # a valid record, not the one that was signed
    tampered["incumbent"], tampered["version"] = 3, 1
    unknown_key = orjson.loads(encode_decision(rollback)[1]) | {"key_id": "k9"}
    return [
        encode_decision(canary)[1],
        encode_decision(forged)[1],
        orjson.dumps(tampered),
        orjson.dumps(unknown_key),
        b'{"type":"rollout_decision"',  # not JSON
        None,  # a tombstone
        encode_decision(rollback)[1],
        encode_decision(rollback)[1],  # read again (the topic from its start after a restart)
    ]


def test_a_signed_rollback_is_recorded_and_forged_records_are_refused_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = MemoryDecisions(control_topic())
    follower = RolloutFollower(source, KEYS.accepted, poll_every_s=0.0)
    with caplog.at_level(logging.WARNING, logger="learner.rollout_follow"):
        assert follower.poll() == 8
    ledger = follower.ledger
    assert ledger.rejected == [2]  # once, though read twice; nothing from the forged ones
    assert (ledger.incumbent, ledger.candidate, ledger.last_decision_id) == (1, None, "2-rollback")
    assert ledger.decisions == 3
    assert ledger.invalid == {"empty": 1, "schema": 1, "unknown_key": 1, "signature": 2}
    rejected_lines = [r.getMessage() for r in caplog.records if "rejected (rollback" in r.getMessage()]
    assert rejected_lines == [
        "rollout: snapshot v2 rejected (rollback 2-rollback: test); recorded, training continues"
    ]
    assert ledger.metrics() == {
        "rollout_rejected_total": 1.0,
        "rollout_decisions_total": 3.0,
        "rollout_invalid_total/empty": 1.0,
        "rollout_invalid_total/schema": 1.0,
        "rollout_invalid_total/unknown_key": 1.0,
        "rollout_invalid_total/signature": 2.0,
    }
    follower.close()
    assert source.closed


def test_the_follower_polls_at_most_every_interval_and_survives_a_failing_source() -> None:
    now = [0.0]

    class Failing(MemoryDecisions):
        def poll(self) -> list[bytes | None]:
            raise ConnectionError("broker away")

    follower = RolloutFollower(Failing([]), KEYS.accepted, poll_every_s=1.0, clock=lambda: now[0])
    assert follower.poll() == 0  # failed, logged, no exception
    follower.source = MemoryDecisions([encode_decision(decision("rollback", 5, rejected=(5,)))[1]])
    now[0] = 0.5
    assert follower.poll() == 0 and follower.ledger.rejected == []  # not due yet
    now[0] = 1.0
    assert follower.poll() == 1 and follower.ledger.rejected == [5]


def test_the_ledger_round_trips_and_stays_bounded() -> None:
    ledger = RolloutLedger()
    for v in range(2, MAX_REJECTED_KEPT + 12):  # v1 is the incumbent
        ledger.apply(decision("reject_ope", v, rejected=(v,)))
    assert len(ledger.rejected) == MAX_REJECTED_KEPT and ledger.rejected[-1] == MAX_REJECTED_KEPT + 11
    again = RolloutLedger()
    again.load_state_dict(ledger.state_dict())
    assert again.state_dict() == ledger.state_dict()
    assert again.apply(decision("rollback", 7, rejected=(ledger.rejected[-1], 7))) == [7]


def test_global_weights_are_a_moving_average_on_the_simplex() -> None:
    g = GlobalWeights(momentum=0.9)
    assert g.value() is None
    g.update([0.2, 0.8])  # the first batch: no bias toward zero
    assert g.value() == pytest.approx((0.2, 0.8))
    g.update([0.6, 0.4])
    assert g.value() == pytest.approx((0.9 * 0.2 + 0.1 * 0.6, 0.9 * 0.8 + 0.1 * 0.4))
    for bad in ([math.nan, 1.0], [-0.1, 1.1], [1.0], []):
        g.update(bad)
    assert g.updates == 2 and g.skipped == 4
    again = GlobalWeights()
    again.load_state_dict(g.state_dict())
    assert again.value() == g.value() and again.momentum == 0.9
    value = g.value()
    assert value is not None and math.fsum(value) == pytest.approx(1.0, abs=1e-12)


def test_the_service_publishes_global_weights_records_a_rollback_and_keeps_it_across_a_restart(
    tmp_path: Path,
) -> None:
    fakes = Fakes(tmp_path)
    source = MemoryDecisions(control_topic())
    clients = fakes.clients()
    clients.rollout = lambda: RolloutFollower(source, KEYS.accepted, poll_every_s=0.0)
    fakes.clients = lambda: clients  # type: ignore[method-assign]
    assert _service(fakes, max_steps=12).run() == 0
    assert source.closed
    # training went on after the rollback of v2: snapshots 1..3 all published, each with
    # global_weights on the simplex, moving as the generator trains
    headers = [schemas.decode_snapshot_header(header_of(h)) for _, _, _, h in fakes.snapshots.sent]
    assert [h.snapshot_version for h in headers] == [1, 2, 3]
    weights = [h.global_weights for h in headers]
    assert all(w is not None and len(w) == 2 and math.fsum(w) == pytest.approx(1.0) for w in weights)
    assert fakes.versions() == [1, 2, 3]  # and they verify: global_weights is signed
    state = fakes.checkpoints.load_latest()[1]  # type: ignore[index]
    assert state["rollout"]["ledger"]["rejected"] == [2]
    assert state["rollout"]["global_weights"]["updates"] == 12
    by_name = {(r.name, r.label): r.value for r in fakes.rows}
    assert by_name[("rollout_rejected_total", "")] == 1.0
    assert by_name[("rollout_invalid_total", "signature")] == 2.0

    # a restart: the ledger and the average come back from the checkpoint
    clients.rollout = lambda: RolloutFollower(MemoryDecisions([]), KEYS.accepted, poll_every_s=0.0)
    again = _service(fakes, max_steps=13)
    loop = again.start(again.resume())
    try:
        assert loop.ledger.rejected == [2]
        assert loop.global_weights.updates == 12 and loop.global_weights.value() == pytest.approx(weights[-1])
    finally:
        again.shutdown(loop, clean=False)
