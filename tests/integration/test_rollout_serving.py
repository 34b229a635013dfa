"""Guarded rollout on the real broker: two serving nodes in ``rollout=guarded`` mode follow signed
decisions on the control topic (issue 18; docs/rollout.md, "Serving: arms and decisions").

A canary of v2 at share 0.5 reaches both nodes within 1 s and both serve the arms by the user
hash (the same arm and version for a user on either node); a forged decision is rejected and
counted by both; a rollback of v2 makes both stop serving it within 1 s; a node restarted
afterwards applies the latest decision before it serves and never serves v2. The decision-to-
applied latency each node measures (``paperec_serving_rollout_decision_to_applied_seconds``) is
printed and bounded.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from actor_service.arms import CANARY, HOLDOUT, assign_arm
from actor_service.devtools import (
    NodeProcess,
    SnapshotPublisher,
    example_request,
    make_model,
    metric_value,
    signed_decision,
    snapshot_record,
    start_node,
    wait_ready,
)
from base.settings import Settings
from base.topics import create_topics, delete_prefixed_topics

pytestmark = pytest.mark.integration

LIMIT_S = 1.0
SALT, HOLDOUT_SHARE, CANARY_SHARE = "paperec", 0.1, 0.5
USERS = [f"user-{i}" for i in range(40)]
APPLIED = "paperec_serving_rollout_decision_to_applied_seconds"


def rank(client: httpx.Client, node: NodeProcess, user: str) -> dict[str, object]:
    r = client.post(node.url + "/rank", json=example_request(3, user_id=user))
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def metrics(node: NodeProcess) -> str:
    return httpx.get(node.url + "/metrics", timeout=5).text


def wait_state(
    nodes: list[NodeProcess], decided_at_s: float, candidate: int | None, incumbent: int
) -> list[float]:
    """Seconds from the decision until each node's /readyz reports the serving state."""
    out = []
    with httpx.Client(timeout=5) as client:
        for node in nodes:
            while True:
                body = client.get(node.url + "/readyz").json()
                if (body["candidate_version"], body["snapshot_version"]) == (candidate, incumbent):
                    out.append(time.time() - decided_at_s)
                    break
                assert time.time() - decided_at_s < 10, f"{node.url} never applied the decision: {body}"
                time.sleep(0.005)
    return out


def applied_seconds(node: NodeProcess) -> tuple[float, float]:
    """(count, sum) of the node's decision-to-applied histogram."""
    text = metrics(node)
    return metric_value(text, APPLIED + "_count"), metric_value(text, APPLIED + "_sum")


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, SnapshotPublisher, Path]]:
    s = settings.replace(topic_prefix=f"paperec.test.{uuid.uuid4().hex[:8]}.")
    assert create_topics(s) == []
    publisher = SnapshotPublisher(s)
    try:
        yield s, publisher, tmp_path
    finally:
        publisher.close()
        delete_prefixed_topics(s)


def test_canary_rollback_and_restart_on_two_guarded_nodes(
    stack: tuple[Settings, SnapshotPublisher, Path],
) -> None:
    s, publisher, log_dir = stack
    for version in (1, 2):
        publisher.publish(snapshot_record(make_model(version), version, s))
    publisher.publish_decision(signed_decision(s, "bootstrap", 1, incumbent=1))
    args = ["--rollout", "guarded", "--holdout-share", str(HOLDOUT_SHARE), "--holdout-salt", SALT,
            "--serve-metrics-clickhouse", "false"]  # fmt: skip
    nodes = [start_node(s, log_dir, name=f"node-{i}", extra_args=args) for i in (1, 2)]
    try:
        wait_ready(nodes, timeout_s=90, version=1)
        report: dict[str, object] = {}

        # canary of v2 at share 0.5: both nodes within 1 s, arms by the user hash
        canary = signed_decision(s, "canary", 2, incumbent=1, candidate=2, canary_share=CANARY_SHARE)
        publisher.publish_decision(canary)
        seen = wait_state(nodes, canary.decided_at_ms / 1000, candidate=2, incumbent=1)
        report["canary_seen_s"] = seen
        assert max(seen) < LIMIT_S, seen
        with httpx.Client(timeout=5) as client:
            for user in USERS:
                arm = assign_arm(user, SALT, HOLDOUT_SHARE, CANARY_SHARE)
                for node in nodes:
                    body = rank(client, node, user)
                    assert body["arm"] == arm, (node.url, user)
                    assert body["snapshot_version"] == (2 if arm == CANARY else 1)
                    if arm == HOLDOUT:
                        assert body["log_propensity"] is None
        assert {assign_arm(u, SALT, HOLDOUT_SHARE, CANARY_SHARE) for u in USERS} == {
            "holdout",
            "personalized",
            "canary",
        }

        # a forged decision (another key) is rejected and counted; nothing changes
        forged = signed_decision(s.replace(snapshot_hmac_key="forger"), "promote", 2, incumbent=2)
        publisher.publish_decision(forged)
        deadline = time.monotonic() + 10
        for node in nodes:
            while metric_value(metrics(node), "paperec_serving_rollout_decisions_rejected_total",
                               'reason="signature"') != 1:  # fmt: skip
                assert time.monotonic() < deadline, f"{node.url} did not count the forged decision"
                time.sleep(0.05)
        assert wait_state(nodes, time.time(), candidate=2, incumbent=1)

        # rollback: both nodes stop serving v2 within 1 s
        rollback = signed_decision(s, "rollback", 2, incumbent=1, rejected=[2])
        publisher.publish_decision(rollback)
        seen = wait_state(nodes, rollback.decided_at_ms / 1000, candidate=None, incumbent=1)
        report["rollback_seen_s"] = seen
        assert max(seen) < LIMIT_S, seen
        canary_users = [u for u in USERS if assign_arm(u, SALT, HOLDOUT_SHARE, CANARY_SHARE) == CANARY]
        with httpx.Client(timeout=5) as client:
            for node in nodes:
                assert all(rank(client, node, u)["snapshot_version"] == 1 for u in canary_users)
        # the latency each node measured itself: decided_at_ms to applied (canary + rollback)
        measured = [applied_seconds(n) for n in nodes]
        report["node_applied_mean_s"] = [total / count for count, total in measured]
        assert all(count == 2 and total / count < LIMIT_S for count, total in measured), measured

        # a node restarted afterwards applies the latest decision first and never serves v2
        nodes[0].stop()
        nodes[0] = start_node(s, log_dir, name="node-1", extra_args=args)
        wait_ready([nodes[0]], timeout_s=90)
        with httpx.Client(timeout=5) as client:
            ready = client.get(nodes[0].url + "/readyz").json()
            assert ready["decisions_caught_up"] and ready["decision_id"] == rollback.decision_id
            assert all(rank(client, nodes[0], u)["snapshot_version"] == 1 for u in USERS)
        text = metrics(nodes[0])
        assert metric_value(text, "paperec_serving_snapshot_version") == 1
        assert (
            metric_value(text, "paperec_serving_rollout_decisions_rejected_total", 'reason="signature"') == 1
        )
        print("rollout serving latencies:", report)
    finally:
        for node in nodes:
            node.stop()
