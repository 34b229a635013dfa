"""Serving in guarded rollout mode, in-process with in-memory topics: decisions are verified
(forged ones counted and ignored), applied in order, arms served by hash, readiness waits for the
control topic, and a restarted node never serves a rolled-back version."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

with warnings.catch_warnings():  # starlette's TestClient warns about its httpx dependency
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from actor_service.app import create_app
from actor_service.arms import CANARY, HOLDOUT, assign_arm
from actor_service.decisions import DecisionApplier
from actor_service.devtools import (
    FakeProducer,
    FakeRecord,
    FakeSnapshotConsumer,
    example_request,
    make_model,
    metric_value,
    signed_decision,
    snapshot_record,
)
from actor_service.instruments import Instruments
from actor_service.model_slot import ArmSettings, ModelSlot
from actor_service.node import Node
from base.settings import TOPIC_ROLLOUT, TOPIC_SNAPSHOTS, Settings
from model.ranker import RankerConfig
from model.rollout_signing import encode_decision
from model.snapshot_keys import snapshot_keys
from schemas import decode_impression

TINY = RankerConfig.tiny()
TINY_JSON = json.dumps({"ranker": {k: getattr(TINY, k) for k in ("user_dim", "item_dim", "context_dim",
                                                                  "hash_buckets", "d_model", "n_heads",
                                                                  "n_layers", "history_len")}})  # fmt: skip
BASE = Settings().replace(
    serve_metrics_clickhouse=False,
    serve_cold_start_config=TINY_JSON,
    serve_node_id="unit",
    dev_mode=True,
    rollout="guarded",
    holdout_share=0.1,
)
KEYS = snapshot_keys(BASE).accepted


def record(decision: Any, offset: int = 0) -> FakeRecord:
    key, value = encode_decision(decision)
    return FakeRecord(offset, key, value, [])


# ------------------------------------------------------------------------ the applier
def applier() -> tuple[DecisionApplier, ModelSlot, Instruments]:
    slot, m = ModelSlot(guarded=True, arms=ArmSettings(0.1)), Instruments()
    return DecisionApplier(slot, KEYS, m, clock=lambda: 100.0), slot, m


def test_forged_unsigned_and_malformed_decisions_are_rejected_and_counted() -> None:
    ap, slot, m = applier()
    good = signed_decision(BASE, "bootstrap", 1, incumbent=1, decided_at_ms=99_900)
    other_key = signed_decision(BASE.replace(snapshot_hmac_key="not-the-key"), "bootstrap", 2, incumbent=2)
    unknown_id = signed_decision(
        BASE.replace(snapshot_hmac_keys="rogue:secret", snapshot_hmac_key_id="rogue"),
        "bootstrap",
        2,
        incumbent=2,
    )
    tampered = (
        encode_decision(good)[1]
        .replace(b'"version":1', b'"version":2')
        .replace(b'"incumbent":1', b'"incumbent":2')
    )
    cases = [
        (FakeRecord(0, b"rollout", encode_decision(other_key)[1], []), "signature"),
        (FakeRecord(1, b"rollout", encode_decision(unknown_id)[1], []), "unknown_key"),
        (FakeRecord(2, b"rollout", tampered, []), "signature"),
        (FakeRecord(3, b"rollout", b"{not json", []), "schema"),
        (FakeRecord(4, b"rollout", None, []), "empty"),
        (FakeRecord(5, b"other", encode_decision(good)[1], []), "key"),
    ]
    for rec, kind in cases:
        out = ap.handle_one(rec)
        assert (out.status, out.decision) == ("rejected", kind)
        assert m.value("paperec_serving_rollout_decisions_rejected_total", reason=kind) >= 1
    assert slot.decision is None
    out = ap.handle_one(record(good, 6))
    assert out.status == "applied" and slot.decision == good
    assert m.value("paperec_serving_rollout_decisions_total", decision="bootstrap") == 1
    assert m.value("paperec_serving_rollout_unheld_total", role="incumbent") == 1  # not held here
    assert m.value("paperec_serving_rollout_decision_to_applied_seconds_sum") == pytest.approx(0.1)


def test_catch_up_records_apply_in_order_without_measuring_latency() -> None:
    ap, slot, m = applier()
    decisions = [
        signed_decision(BASE, "bootstrap", 1, incumbent=1, decided_at_ms=1),
        signed_decision(BASE, "canary", 2, incumbent=1, candidate=2, canary_share=0.5, decided_at_ms=2),
        signed_decision(BASE, "rollback", 2, incumbent=1, rejected=[2], decided_at_ms=3),
    ]
    ap.handle([record(d, i) for i, d in enumerate(decisions)], live=False)
    assert slot.decision == decisions[-1] and 2 in slot.rejected
    assert m.value("paperec_serving_rollout_decision_to_applied_seconds_count") == 0


# ------------------------------------------------------------------------ a node
class Harness:
    def __init__(
        self, settings: Settings, snapshots: FakeSnapshotConsumer, control: FakeSnapshotConsumer
    ) -> None:
        self.producer = FakeProducer()
        self.snapshots, self.control = snapshots, control
        self.node = Node(
            settings,
            make_producer=lambda: self.producer,
            make_consumer=lambda: snapshots,
            make_decision_consumer=lambda: control,
            seed=0,
        )
        self.client = TestClient(create_app(self.node))

    def rank(self, user: str) -> Any:
        body = example_request(3, TINY, user_id=user)
        r = self.client.post("/rank", content=orjson.dumps(body))
        assert r.status_code == 200, r.text
        return r.json()

    def metric(self, name: str, labels: str = "") -> float:
        return metric_value(self.client.get("/metrics").text, name, labels)

    def wait(self, cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            assert time.monotonic() < deadline, "condition not met in time"
            time.sleep(0.01)


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[Any]:
    started: list[Harness] = []

    def make(snapshots: FakeSnapshotConsumer, control: FakeSnapshotConsumer, **changes: Any) -> Harness:
        settings = BASE.replace(**{"serve_snapshot_dir": str(tmp_path / "node"), **changes})
        h = Harness(settings, snapshots, control)
        h.client.__enter__()
        started.append(h)
        return h

    yield make
    for h in started:
        h.client.__exit__(None, None, None)


def topics() -> tuple[FakeSnapshotConsumer, FakeSnapshotConsumer]:
    snapshots = FakeSnapshotConsumer(BASE.topic(TOPIC_SNAPSHOTS))
    for v in (1, 2):
        snapshots.append(snapshot_record(make_model(v, TINY), v, BASE))
    return snapshots, FakeSnapshotConsumer(BASE.topic(TOPIC_ROLLOUT))


USERS = [f"user-{i}" for i in range(60)]


def test_guarded_node_serves_arms_by_hash_and_stops_serving_a_rolled_back_version(make_harness: Any) -> None:
    snapshots, control = topics()
    h = make_harness(snapshots, control)
    h.wait(lambda: h.client.get("/readyz").status_code == 200)
    # snapshots held, but no decision yet: the cold-start model serves
    assert h.rank("user-1")["snapshot_version"] == 0
    h.wait(lambda: h.node.slot.held_versions() == [2])  # the newest; 1 was read past unbuilt
    control.append_decision(signed_decision(BASE, "bootstrap", 1, incumbent=1))
    h.wait(lambda: h.node.slot.version() == 1)  # the snapshot topic was read again for it
    assert h.metric("paperec_serving_rollout_unheld_total", 'role="incumbent"') == 1
    control.append_decision(signed_decision(BASE, "canary", 2, incumbent=1, candidate=2, canary_share=0.5))
    h.wait(lambda: h.node.slot.candidate_version() == 2)
    ready = h.client.get("/readyz").json()
    assert ready["rollout"] == "guarded" and ready["candidate_version"] == 2 and ready["canary_share"] == 0.5
    seen: dict[str, int] = {}
    for user in USERS:
        body = h.rank(user)
        arm = assign_arm(user, "paperec", 0.1, 0.5)
        assert body["arm"] == arm and body["snapshot_version"] == (2 if arm == CANARY else 1)
        if arm == HOLDOUT:
            assert body["log_propensity"] is None and body["noise"] == [0.0, 0.0]
        seen[arm] = seen.get(arm, 0) + 1
    assert set(seen) == {"holdout", "personalized", "canary"}
    h.wait(lambda: len(h.producer.sent) >= len(USERS) + 1)
    arms = {decode_impression(v).arm for _, _, v in h.producer.sent[1:]}
    assert arms == {"holdout", "personalized", "canary"}
    assert h.metric("paperec_serving_arm_requests_total", 'arm="canary"') == seen["canary"]
    assert h.metric("paperec_serving_candidate_version") == 2
    assert h.metric("paperec_serving_rollout_decisions_total", 'decision="canary"') == 1
    # a forged decision changes nothing and is counted
    forged = signed_decision(BASE.replace(snapshot_hmac_key="forger"), "promote", 2, incumbent=2)
    control.append_decision(forged)
    h.wait(lambda: h.metric("paperec_serving_rollout_decisions_rejected_total", 'reason="signature"') == 1)
    assert h.node.slot.version() == 1
    control.append_decision(signed_decision(BASE, "rollback", 2, incumbent=1, rejected=[2]))
    h.wait(lambda: h.node.slot.candidate_version() is None)
    assert all(h.rank(u)["snapshot_version"] == 1 for u in USERS)
    assert h.metric("paperec_serving_rollout_decisions_total", 'decision="rollback"') == 1


def test_a_restarted_node_applies_the_latest_decision_before_it_serves(
    make_harness: Any, tmp_path: Path
) -> None:
    snapshots, control = topics()
    control.append_decision(signed_decision(BASE, "bootstrap", 1, incumbent=1, decided_at_ms=1000))
    control.append_decision(
        signed_decision(BASE, "canary", 2, incumbent=1, candidate=2, canary_share=1.0, decided_at_ms=2000)
    )
    control.append_decision(
        signed_decision(BASE, "rollback", 2, incumbent=1, rejected=[2], decided_at_ms=3000)
    )
    h = make_harness(snapshots, control)
    h.wait(lambda: h.client.get("/readyz").status_code == 200)
    assert h.node.slot.version() == 1 and 2 in h.node.slot.rejected
    assert 2 not in h.node.slot.held_versions()
    assert all(h.rank(u)["snapshot_version"] == 1 for u in USERS)
    assert h.metric("paperec_serving_snapshots_skipped_total") >= 1  # v2 never built


def test_readiness_waits_for_the_control_topic(make_harness: Any) -> None:
    snapshots, _ = topics()
    down = FakeSnapshotConsumer(BASE.topic(TOPIC_ROLLOUT), fail_start=True)
    h = make_harness(snapshots, down)
    time.sleep(0.5)
    ready = h.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["decisions_caught_up"] is False
    down.fail_start = False  # the next reconnect reads it
    h.wait(lambda: h.client.get("/readyz").status_code == 200)


def test_direct_mode_is_unchanged_by_arms(make_harness: Any) -> None:
    snapshots, control = topics()
    h = make_harness(snapshots, control, rollout="direct", holdout_share=0.0)
    h.wait(lambda: h.client.get("/readyz").status_code == 200 and h.node.slot.version() == 2)
    body = h.rank("user-1")
    assert body["snapshot_version"] == 2 and body["arm"] is None
    assert h.node.decisions is None


def test_the_stored_incumbent_serves_after_a_restart_once_compaction_dropped_its_record(
    make_harness: Any,
) -> None:
    snapshots, control = topics()
    control.append_decision(signed_decision(BASE, "bootstrap", 2, incumbent=2))
    first = make_harness(snapshots, control)
    first.wait(lambda: first.node.slot.version() == 2)
    first.wait(lambda: (first.node.loader.store is not None) and first.node.loader.store.load() is not None)
    first.client.__exit__(None, None, None)
    # compacted: only a newer snapshot is left on the topic; the decision still names 2
    compacted = FakeSnapshotConsumer(BASE.topic(TOPIC_SNAPSHOTS))
    compacted.append(snapshot_record(make_model(3, TINY), 3, BASE))
    second = make_harness(compacted, control)
    second.wait(lambda: second.client.get("/readyz").status_code == 200)
    assert second.node.slot.version() == 2 and second.rank("user-1")["snapshot_version"] == 2
