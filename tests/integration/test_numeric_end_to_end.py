"""Numerically safe learning on the real broker (docs/hardening.md section 1): a number beyond the
float32-safe bound is refused at every door, with the field named, and the learner keeps
publishing valid snapshots with rising versions when such a record reaches its topic."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import orjson
import pytest
from clickhouse_driver import Client
from test_learner import RANKER, Learner, _snapshots
from test_streams_worker import Reader, Worker, producer, send, streams_settings

from actor_service.devtools import example_request, start_node, wait_ready
from base.kafka import read_topic
from base.metrics_store import init_tables
from base.settings import (
    TOPIC_DEAD_LETTER,
    TOPIC_IMPRESSIONS,
    TOPIC_SNAPSHOTS,
    TOPIC_TRANSITIONS,
    Settings,
)
from base.topics import create_topics
from learner.devtools import encoded, produce, synthetic_transitions
from schemas import decode_dead_letter
from streams import fixtures as fx

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HUGE = 1e300  # finite in float64, inf in float32


def test_rank_refuses_a_huge_feature_with_422_naming_the_field(
    settings: Settings, unique_prefix: str, tmp_path: Path
) -> None:
    s = settings.replace(topic_prefix=unique_prefix)
    args = ["--serve-cold-start", "random", "--serve-metrics-clickhouse", "false"]
    node = start_node(s, tmp_path, name="numeric", extra_args=args)
    try:
        wait_ready([node], timeout_s=90)
        body = example_request(4, seed=1)
        body["items"][3]["features"][1] = HUGE
        with httpx.Client(base_url=node.url, timeout=5) as client:
            r = client.post("/rank", json=body)
            assert r.status_code == 422, r.text
            assert [d["field"] for d in r.json()["detail"]] == ["items[3].features[1]"]
            body["items"][3]["features"][1] = 1e15  # the bound itself is served
            assert client.post("/rank", json=body).status_code == 200
    finally:
        node.stop()


def test_streams_dead_letter_an_impression_with_a_huge_feature(
    settings: Settings, unique_prefix: str, tmp_path: Path
) -> None:
    s = streams_settings(settings, unique_prefix, tmp_path)
    worker = Worker(s, tmp_path / "worker.log").start()
    dead = Reader(s, TOPIC_DEAD_LETTER)
    try:
        imp = fx.impression("huge-r1", "huge-u1", int(time.time() * 1000))
        imp["items"][0]["features"][1] = HUGE
        p = producer(s)
        send(p, s, TOPIC_IMPRESSIONS, "huge-r1", imp)
        p.flush()
        p.close()
        letters = [decode_dead_letter(r.value) for r in dead.until(lambda rs: len(rs) >= 1, 60, worker)]
    finally:
        dead.close()
        worker.stop()
    assert [(d.stage, d.error_field) for d in letters] == [("streams.decode", "items[0].features[1]")]
    assert "out of range" in letters[0].reason and letters[0].source_topic == s.topic(TOPIC_IMPRESSIONS)


def test_a_non_finite_transition_on_the_topic_never_stops_snapshots(
    settings: Settings, unique_prefix: str, tmp_path: Path, clickhouse_client: Client
) -> None:
    """Transitions written around validation (raw JSON bytes) reach the learner: it dead-letters
    them with the field, and every snapshot it publishes decodes (finite), versions rising."""
    s = settings.replace(topic_prefix=unique_prefix, snapshot_hmac_key="integration-test-key")
    assert create_topics(s) == []
    init_tables(s)
    good = encoded(synthetic_transitions(RANKER, 200, seed=5))
    huge = orjson.loads(good[0])
    huge["transition_id"] = "huge-feature"
    huge["state"]["items"][0]["features"][1] = HUGE
    nan_text = good[1].replace(b'"features":[', b'"features":[NaN,', 1)  # not even JSON
    poison = [orjson.dumps(huge), nan_text]
    values = [*good[:100], *poison, *good[100:]]
    produce(s, s.topic(TOPIC_TRANSITIONS), values)
    source = f"numeric-it:{unique_prefix}"
    learner = Learner(s, tmp_path / "ckpt", tmp_path / "learner.log", source)
    try:
        learner.wait_for("3 snapshots", lambda: len(read_topic(s, TOPIC_SNAPSHOTS)) >= 3, timeout_s=90)
    finally:
        learner.kill(signal.SIGTERM)
        rc = learner.wait()
    assert rc == 0, learner.log()[-3000:]

    snaps = _snapshots(s)  # decodes and verifies each one: a non-finite tensor would be rejected
    versions = [h.snapshot_version for h, _, _ in snaps]
    assert len(versions) >= 3 and versions == sorted(set(versions))
    letters = [decode_dead_letter(m.value) for m in read_topic(s, TOPIC_DEAD_LETTER)]
    assert {(d.stage, d.error_field) for d in letters} == {
        ("learner.ingest", "state.items[0].features[1]"),
        ("learner.ingest", "$"),
    }
    # the counters are exported (rows may land just after the learner's exit)
    rows: dict[str, float] = {}
    deadline = time.monotonic() + 15
    while len(rows) < 2 and time.monotonic() < deadline:
        rows = dict(
            clickhouse_client.execute(
                f"SELECT name, max(value) FROM {s.clickhouse_database}.learner_metrics WHERE source = "
                "%(source)s AND name IN ('nonfinite_steps_total', 'dead_letters_total') GROUP BY name",
                {"source": source},
            )
        )
        time.sleep(0.5)
    assert rows == {"nonfinite_steps_total": 0.0, "dead_letters_total": 2.0}
