"""Bearer-token authentication of the serving node, in-process (FastAPI TestClient, in-memory Kafka
stand-ins): /rank and /metrics need the token once one is configured, the health probes do not;
a refusal is a 401 in the house error shape with ``WWW-Authenticate: Bearer``, counted, and comes
before admission and before the body is read. Also the settings (token or token file, masked)
and the clients that send the token (the demo's /rank client, the demo's serving nodes)."""

from __future__ import annotations

import json
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

with warnings.catch_warnings():  # starlette's TestClient warns about its httpx dependency
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from actor_service.app import create_app
from actor_service.auth import MIN_TOKEN_CHARS
from actor_service.devtools import FakeProducer, FakeSnapshotConsumer, example_request, metric_value
from actor_service.node import Node
from base.settings import TOPIC_SNAPSHOTS, Settings
from model.ranker import RankerConfig
from paperec.demo import DemoOptions, demo_services
from paperec.demo_driver import HttpPolicy
from simulator import Candidate, ListRequest

TINY = RankerConfig.tiny()
TINY_JSON = json.dumps({"ranker": {k: getattr(TINY, k) for k in ("user_dim", "item_dim", "context_dim",
                                                                  "hash_buckets", "d_model", "n_heads",
                                                                  "n_layers", "history_len")}})  # fmt: skip
TOKEN = secrets.token_urlsafe(32)  # generated per run: no secret in the repository
BASE = Settings().replace(
    serve_metrics_clickhouse=False,
    serve_cold_start_config=TINY_JSON,
    serve_max_body_bytes=64 * 1024,
    serve_node_id="auth-unit",
    dev_mode=True,  # the built-in snapshot key
)
ERRORS = "paperec_serving_errors_total"


class Served:
    def __init__(self, settings: Settings) -> None:
        self.producer = FakeProducer()
        topic = FakeSnapshotConsumer(settings.topic(TOPIC_SNAPSHOTS))
        self.node = Node(settings, make_producer=lambda: self.producer, make_consumer=lambda: topic, seed=0)
        self.client = TestClient(create_app(self.node))

    def rank(self, headers: dict[str, str] | None = None, body: Any = None) -> httpx.Response:
        payload = orjson.dumps(example_request(3, TINY) if body is None else body)
        return self.client.post("/rank", content=payload, headers=headers or {})

    def metrics(self) -> str:
        return self.client.get("/metrics", headers=bearer(TOKEN)).text


def bearer(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(BASE.replace(serve_auth_token=TOKEN, serve_snapshot_dir=str(tmp_path / "store")))
    with s.client:
        yield s


def assert_unauthorized(r: httpx.Response, challenge: str) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == challenge
    [detail] = r.json()["detail"]
    assert detail["field"] == "$" and detail["type"] == "unauthorized" and detail["msg"]
    assert TOKEN not in r.text


def test_rank_needs_the_token_and_every_refusal_is_a_counted_401(served: Served) -> None:
    assert_unauthorized(served.rank(), 'Bearer realm="paperec"')
    assert_unauthorized(served.rank(bearer(TOKEN, scheme="Basic")), 'Bearer realm="paperec"')
    assert_unauthorized(served.rank({"Authorization": "Bearer"}), 'Bearer realm="paperec"')
    wrong = bearer(TOKEN[:-1] + ("x" if TOKEN[-1] != "x" else "y"))
    assert_unauthorized(served.rank(wrong), 'Bearer realm="paperec", error="invalid_token"')
    assert_unauthorized(served.rank(bearer(TOKEN + "x")), 'Bearer realm="paperec", error="invalid_token"')
    assert served.producer.sent == []  # nothing refused was ranked or logged

    ok = served.rank(bearer(TOKEN))
    assert ok.status_code == 200, ok.text
    assert served.rank(bearer(TOKEN, scheme="bearer")).status_code == 200  # schemes are case-insensitive
    text = served.metrics()
    assert metric_value(text, ERRORS, 'kind="unauthorized"') == 5
    assert metric_value(text, "paperec_serving_requests_total", 'route="/rank",status="401"') == 5
    assert metric_value(text, "paperec_serving_requests_total", 'route="/rank",status="200"') == 2


def test_metrics_needs_the_token_and_the_health_probes_stay_open(served: Served) -> None:
    assert_unauthorized(served.client.get("/metrics"), 'Bearer realm="paperec"')
    assert served.client.get("/metrics", headers=bearer(TOKEN)).status_code == 200
    assert served.client.get("/healthz").status_code == 200
    assert served.client.get("/readyz").status_code == 200
    text = served.metrics()
    assert metric_value(text, "paperec_serving_requests_total", 'route="/metrics",status="401"') == 1
    assert metric_value(text, ERRORS, 'kind="unauthorized"') == 0  # errors_total counts /rank only


def test_the_token_is_checked_before_admission_and_before_the_body(served: Served) -> None:
    admission = served.node.admission
    while admission.try_enter():  # every admission slot taken: an authorized /rank gets 503
        pass
    full = admission.in_flight
    try:
        assert served.rank(bearer(TOKEN)).status_code == 503
        assert_unauthorized(served.rank(), 'Bearer realm="paperec"')  # not 503: no slot was asked for
        assert admission.in_flight == full
    finally:
        for _ in range(full):
            admission.leave()
    too_large = {"padding": "x" * (BASE.serve_max_body_bytes + 1)}
    assert_unauthorized(served.rank(body=too_large), 'Bearer realm="paperec"')  # not 413
    assert served.rank(bearer(TOKEN), body=too_large).status_code == 413


def test_without_a_token_nothing_is_required(tmp_path: Path) -> None:
    s = Served(BASE.replace(serve_snapshot_dir=str(tmp_path / "store")))
    with s.client:
        assert s.node.auth is None
        assert s.rank().status_code == 200
        assert s.client.get("/metrics").status_code == 200


def test_token_settings_file_mask_and_bad_values(tmp_path: Path) -> None:
    assert Settings().serve_bearer_token() == "" and Settings().serve_auth_headers() == {}
    s = BASE.replace(serve_auth_token=TOKEN)
    assert s.serve_auth_headers() == {"Authorization": f"Bearer {TOKEN}"}
    assert s.public_dict()["serve_auth_token"] == "<set>" and TOKEN not in str(s.public_dict())
    assert Settings.from_env({"PAPEREC_SERVE_AUTH_TOKEN": TOKEN}).serve_bearer_token() == TOKEN

    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")  # as `echo` or a mounted secret writes it
    assert BASE.replace(serve_auth_token_file=str(token_file)).serve_bearer_token() == TOKEN

    with pytest.raises(ValueError, match="not both"):
        BASE.replace(serve_auth_token=TOKEN, serve_auth_token_file=str(token_file)).serve_bearer_token()
    with pytest.raises(ValueError, match="serve_auth_token_file: cannot read"):
        BASE.replace(serve_auth_token_file=str(tmp_path / "missing")).serve_bearer_token()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="holds no token"):
        BASE.replace(serve_auth_token_file=str(tmp_path / "empty")).serve_bearer_token()

    store = str(tmp_path / "store")
    for bad, why in (("x" * (MIN_TOKEN_CHARS - 1), "at least"), ("a" * MIN_TOKEN_CHARS + " b", "printable")):
        with pytest.raises(ValueError, match=f"serve_auth_token must .*{why}"):
            Node(BASE.replace(serve_auth_token=bad, serve_snapshot_dir=store))


def test_the_demo_sends_the_token_and_gives_it_to_its_nodes_by_environment(tmp_path: Path) -> None:
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        items = orjson.loads(request.content)["items"]
        body = {"items": items, "weights": [1.0], "noise": [0.0], "objectives": ["click"]}
        return httpx.Response(200, json={**body, "snapshot_version": 1})

    settings = BASE.replace(serve_auth_token=TOKEN)
    headers = settings.serve_auth_headers()
    policy = HttpPolicy(["http://node.test"], 1, 1, transport=httpx.MockTransport(answer), headers=headers)
    request = ListRequest("r", "u", 0, (0.0,), (), (0.0,), (Candidate("i", (0.0,)),))
    try:
        policy.rank([request])
    finally:
        policy.close()
    assert seen == [f"Bearer {TOKEN}"]

    opts = DemoOptions(1.0, 2, 1, 0, None, None, tmp_path, keep_devstack=True)
    services, _ = demo_services(settings, opts, tmp_path / "logs")
    nodes = [svc for svc in services if "serve" in svc.args]
    assert len(nodes) == 2
    for svc in nodes:
        assert svc.env["PAPEREC_SERVE_AUTH_TOKEN"] == TOKEN and TOKEN not in svc.args
