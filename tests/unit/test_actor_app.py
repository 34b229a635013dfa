"""The HTTP API in-process (FastAPI TestClient), with in-memory Kafka stand-ins: validation
errors name the field, bounded body and candidate count, cold-start policies, readiness,
metrics, OpenAPI, impressions, and serving through a Kafka outage."""

from __future__ import annotations

import json
import math
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
from actor_service.devtools import (
    FakeProducer,
    FakeSnapshotConsumer,
    example_request,
    make_model,
    metric_value,
    snapshot_record,
)
from actor_service.node import Node
from base.settings import TOPIC_SNAPSHOTS, Settings
from model.ranker import RankerConfig
from schemas import Exploration, decode_impression

TINY = RankerConfig.tiny()
TINY_JSON = json.dumps({"ranker": {k: getattr(TINY, k) for k in ("user_dim", "item_dim", "context_dim",
                                                                  "hash_buckets", "d_model", "n_heads",
                                                                  "n_layers", "history_len")}})  # fmt: skip
BASE = Settings().replace(
    serve_metrics_clickhouse=False,
    serve_cold_start_config=TINY_JSON,
    serve_max_items=50,
    serve_max_body_bytes=64 * 1024,
    serve_node_id="unit",
    dev_mode=True,  # the built-in snapshot key
)


class Harness:
    def __init__(self, settings: Settings, producer: FakeProducer, topic: FakeSnapshotConsumer) -> None:
        self.producer, self.topic = producer, topic
        self.node = Node(settings, make_producer=lambda: producer, make_consumer=lambda: topic, seed=0)
        self.client = TestClient(create_app(self.node))

    def rank(self, body: Any, **kw: Any) -> Any:
        return self.client.post("/rank", content=orjson.dumps(body), **kw)

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

    def make(
        producer: FakeProducer | None = None, topic: FakeSnapshotConsumer | None = None, **changes: Any
    ) -> Harness:
        # each node its own (empty) snapshot store: a stored snapshot would be served at start
        store = str(tmp_path / f"node-{len(started)}")
        settings = BASE.replace(**{"serve_snapshot_dir": store, **changes})
        topic = topic or FakeSnapshotConsumer(settings.topic(TOPIC_SNAPSHOTS))
        h = Harness(settings, producer or FakeProducer(), topic)
        h.client.__enter__()
        started.append(h)
        return h

    yield make
    for h in started:
        h.client.__exit__(None, None, None)


def test_rank_serves_the_cold_start_model_and_logs_the_impression(make_harness: Any) -> None:
    h = make_harness()
    assert h.client.get("/healthz").json() == {"status": "ok"}
    ready = h.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["snapshot_version"] == 0 and ready.json()["cold_start"]
    r = h.rank(example_request(5, TINY))
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["request_id"]) == 32  # generated uuid4 hex
    assert body["snapshot_version"] == 0 and len(body["items"]) == 5
    h.wait(lambda: len(h.producer.sent) == 1)
    topic, key, value = h.producer.sent[0]
    assert topic == "paperec.impressions" and key == body["request_id"].encode()
    imp = decode_impression(value)
    assert imp.snapshot_version == 0 and list(imp.weights) == body["weights"]
    assert [it.item_id for it in imp.items] == [it["item_id"] for it in body["items"]]


def test_a_snapshot_on_the_topic_is_served(make_harness: Any) -> None:
    topic = FakeSnapshotConsumer("paperec.actor-snapshots")
    topic.append(snapshot_record(make_model(1, TINY), 4, BASE))
    h = make_harness(topic=topic, serve_cold_start="refuse")
    h.wait(lambda: h.client.get("/readyz").status_code == 200)
    assert h.rank(example_request(3, TINY, request_id="abc")).json()["snapshot_version"] == 4
    topic.append(snapshot_record(make_model(2, TINY), 5, BASE))
    h.wait(lambda: h.rank(example_request(3, TINY)).json()["snapshot_version"] == 5)
    assert h.metric("paperec_serving_snapshot_version") == 5
    assert h.metric("paperec_serving_snapshot_age_seconds") >= 0
    assert h.metric("paperec_serving_snapshots_loaded_total") == 2


def test_a_snapshot_is_served_with_the_exploration_its_header_records(make_harness: Any) -> None:
    """``serve_noise_std`` is the cold-start model's; a snapshot brings the learner's exploration."""
    topic = FakeSnapshotConsumer("paperec.actor-snapshots")
    h = make_harness(topic=topic, serve_noise_std=0.0)
    cold = h.rank(example_request(3, TINY)).json()
    assert cold["snapshot_version"] == 0 and cold["noise"] == [0.0, 0.0]
    topic.append(snapshot_record(make_model(1, TINY), 4, BASE, noise_std=0.5))
    h.wait(lambda: h.rank(example_request(3, TINY)).json()["snapshot_version"] == 4)
    explored = h.rank(example_request(3, TINY)).json()
    assert explored["snapshot_version"] == 4 and all(x != 0.0 for x in explored["noise"])
    topic.append(snapshot_record(make_model(2, TINY), 5, BASE, noise_std=0.0))
    h.wait(lambda: h.rank(example_request(3, TINY)).json()["snapshot_version"] == 5)
    assert h.rank(example_request(3, TINY)).json()["noise"] == [0.0, 0.0]


def test_rank_logs_the_propensity_of_the_served_weights(make_harness: Any) -> None:
    """A snapshot with wide exploration: every impression carries a finite log_propensity (the
    response too); served without noise, it is null."""
    topic = FakeSnapshotConsumer("paperec.actor-snapshots")
    h = make_harness(topic=topic, serve_noise_std=0.0)
    cold = h.rank(example_request(3, TINY)).json()
    assert cold["log_propensity"] is None  # the cold-start model, exploiting
    wide = Exploration(noise_std=0.1, wide_std=1.0, wide_share=0.5)
    topic.append(snapshot_record(make_model(1, TINY), 4, BASE, exploration=wide))
    h.wait(lambda: h.rank(example_request(3, TINY)).json()["snapshot_version"] == 4)
    bodies = [h.rank(example_request(3, TINY, request_id=f"req-{i}")).json() for i in range(20)]
    h.wait(lambda: {k.decode() for _, k, _ in h.producer.sent} >= {b["request_id"] for b in bodies})
    logged = {imp.request_id: imp for imp in (decode_impression(v) for _, _, v in h.producer.sent)}
    for body in bodies:
        imp = logged[body["request_id"]]
        assert imp.schema_version == 2 and imp.snapshot_version == 4
        assert imp.log_propensity is not None and math.isfinite(imp.log_propensity)
        assert imp.log_propensity == body["log_propensity"]
        assert imp.log_propensity == pytest.approx(_density(imp.noise, wide), abs=1e-6)
    assert cold["request_id"] in logged and logged[cold["request_id"]].log_propensity is None


def _density(noise: tuple[float, ...], e: Exploration) -> float:
    """The mixture density of K = 2 logit noise at temperature 1 (docs/schemas.md: Propensity)."""
    d = noise[0] - noise[1]  # y - mu
    return math.log(
        sum(
            share / (s * math.sqrt(2 * math.pi * 2)) * math.exp(-(d * d) / (2 * 2 * s * s))
            for share, s in ((1 - e.wide_share, e.noise_std), (e.wide_share, e.wide_std))
        )
    )


def test_refuse_policy_is_503_until_a_snapshot_arrives(make_harness: Any) -> None:
    h = make_harness(serve_cold_start="refuse")
    r = h.rank(example_request(3, TINY))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert h.client.get("/readyz").status_code == 503
    assert h.client.get("/healthz").status_code == 200
    assert h.metric("paperec_serving_errors_total", 'kind="not_ready"') == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b.pop("user_id"), "user_id"),
        (lambda b: b.update(user_id=""), "user_id"),
        (lambda b: b.update(request_id="x" * 129), "request_id"),
        (lambda b: b.update(items=[]), "items"),
        (lambda b: b["items"][2].update(item_id=b["items"][0]["item_id"]), "items"),
        (lambda b: b["items"][1].update(features="abc"), "items[1].features"),
        (lambda b: b["items"][1]["features"].__setitem__(0, "x"), "items[1].features[0]"),
        (lambda b: b["items"][3].pop("features"), "items[3].features"),
        (lambda b: b["history"].__setitem__(1, 5), "history[1]"),
        (lambda b: b["items"][2]["features"].append(0.5), "items[2].features"),  # width vs model
        (lambda b: b.update(context=[0.0]), "context"),  # width vs model
        (lambda b: b.update(items=b["items"] * 11), "items"),  # 55 > serve_max_items (50)
    ],
)
def test_invalid_requests_are_422_naming_the_field(make_harness: Any, change: Any, field: str) -> None:
    h = make_harness()
    body = example_request(5, TINY)
    change(body)
    r = h.rank(body)
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["detail"]], r.json()


def test_non_finite_numbers_and_bad_json_are_rejected(make_harness: Any) -> None:
    h = make_harness()
    raw = orjson.dumps(example_request(2, TINY)).replace(b'"user_features":[', b'"user_features":[NaN,', 1)
    r = h.client.post("/rank", content=raw)
    assert r.status_code == 422
    r = h.client.post("/rank", content=b"{not json")
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "$"


def test_body_size_is_bounded(make_harness: Any) -> None:
    h = make_harness(serve_max_body_bytes=2048)
    r = h.rank(example_request(40, TINY))
    assert r.status_code == 413 and r.json()["detail"][0]["type"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        raw = orjson.dumps(example_request(40, TINY))
        for i in range(0, len(raw), 1000):
            yield raw[i : i + 1000]

    r = h.client.post("/rank", content=chunks())
    assert r.status_code == 413
    assert h.metric("paperec_serving_errors_total", 'kind="too_large"') == 2


def test_serving_continues_while_kafka_is_unreachable(make_harness: Any) -> None:
    h = make_harness(
        producer=FakeProducer(down=True),
        topic=FakeSnapshotConsumer("paperec.actor-snapshots", fail_start=True),
        serve_startup_timeout_s=0.0,
        serve_impression_buffer=3,
    )
    for i in range(5):
        r = h.rank(example_request(3, TINY, seed=i))
        assert r.status_code == 200
    assert h.metric("paperec_serving_impressions_buffered") == 3
    assert h.metric("paperec_serving_impressions_total", 'outcome="dropped_buffer_full"') == 2
    assert h.metric("paperec_serving_impression_producer_connected") == 0


def test_metrics_and_openapi(make_harness: Any) -> None:
    h = make_harness()
    h.rank(example_request(3, TINY))
    h.rank({"user_id": 1})
    text = h.client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert metric_value(text.text, "paperec_serving_requests_total", 'route="/rank",status="200"') == 1
    assert metric_value(text.text, "paperec_serving_requests_total", 'route="/rank",status="422"') == 1
    assert metric_value(text.text, "paperec_serving_request_latency_seconds_count", 'route="/rank"') == 2
    assert metric_value(text.text, "paperec_serving_candidates_total") == 3
    spec = h.client.get("/openapi.json").json()
    rank_op = spec["paths"]["/rank"]["post"]
    assert rank_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RankRequest")
    schemas = spec["components"]["schemas"]
    assert {"RankRequest", "Candidate", "RankResponse", "RankedItem", "ErrorBody"} <= set(schemas)
    assert {"user_id", "items"} <= set(schemas["RankRequest"]["required"])
    assert {"/healthz", "/readyz", "/metrics"} <= set(spec["paths"])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="serve_cold_start"):
        Node(BASE.replace(serve_cold_start="maybe"))
    with pytest.raises(ValueError, match="serve_max_items"):
        Node(BASE.replace(serve_max_items=5000))
