"""Bounded overload at serving, without Kafka: the in-flight limit (admission), the scoring
queue's bound and deadline, adaptive LIFO, and the HTTP answers (503 + Retry-After in the
API's error shape, counted) with the scorer held busy on purpose."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import torch

with warnings.catch_warnings():  # starlette's TestClient warns about its httpx dependency
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

import actor_service.batcher as batcher_module
from actor_service.app import create_app
from actor_service.batcher import MicroBatcher
from actor_service.devtools import FakeProducer, FakeSnapshotConsumer, example_request, metric_value
from actor_service.node import Node
from actor_service.overload import DEADLINE_EXCEEDED, OVERLOADED, Admission, ScoringCost, Shed
from actor_service.ranking import Job, Ranked
from base.settings import TOPIC_SNAPSHOTS, Settings
from model.ranker import RankerConfig

TINY = RankerConfig.tiny()
DEV = {"dev_mode": True, "serve_metrics_clickhouse": False}  # the built-in snapshot key, no ClickHouse
TINY_JSON = json.dumps(
    {
        "ranker": {
            k: getattr(TINY, k) for k in ("user_dim", "item_dim", "context_dim", "hash_buckets", "d_model")
        }
    }
)


# ---------------------------------------------------------------------------- admission
def test_admission_admits_up_to_the_limit_and_again_after_a_leave() -> None:
    a = Admission(2)
    assert a.try_enter() and a.try_enter()
    assert not a.try_enter() and a.in_flight == 2
    a.leave()
    assert a.try_enter() and a.peak == 2
    a.leave()
    a.leave()
    with pytest.raises(RuntimeError):
        a.leave()
    with pytest.raises(ValueError):
        Admission(0)


def test_scoring_cost_is_a_moving_average_of_the_cost_per_list() -> None:
    c = ScoringCost(alpha=0.5)
    assert c.per_list_s == 0.0  # nothing measured yet
    c.observe(0.04, 4)  # the first batch sets it: 10 ms a list
    assert c.per_list_s == pytest.approx(0.010)
    c.observe(0.03, 1)  # halfway to 30 ms
    assert c.per_list_s == pytest.approx(0.020)
    assert c.batches == 2
    for bad in ((0.01, 0), (-0.01, 1)):
        with pytest.raises(ValueError):
            c.observe(*bad)
    with pytest.raises(ValueError):
        ScoringCost(alpha=0)


def admitted(a: Admission) -> int:
    """How many requests ``a`` admits from now on when none leaves."""
    n = 0
    while a.try_enter():
        n += 1
    return n


@pytest.mark.parametrize(
    ("per_list_ms", "expected"),
    [
        (10.0, 3),  # 0, 10 and 20 ms of work ahead fit the 20 ms budget; 30 ms does not
        (1.0, 21),  # short lists: many more fit the same budget
        (50.0, 1),  # one list costs more than the budget: still one at a time, never none
        (0.0, 32),  # nothing measured yet: the count limit alone
    ],
)
def test_admission_bounds_the_expected_wait_not_the_count(per_list_ms: float, expected: int) -> None:
    cost = ScoringCost()
    if per_list_ms:
        cost.observe(per_list_ms / 1000, 1)
    a = Admission(32, wait_budget_s=0.020, cost=cost)
    assert admitted(a) == expected and a.in_flight == expected
    refusal = a.refusal()
    assert refusal is not None
    assert ("serve_max_in_flight" if expected == 32 else "serve_max_queue_wait_ms") in refusal
    a.leave()  # one answered: the next one fits again
    assert a.try_enter()
    with pytest.raises(ValueError):
        Admission(1, wait_budget_s=-1)


def test_admission_follows_the_measured_cost() -> None:
    """The same node admits fewer once its lists get more expensive, more once they get cheaper."""
    cost = ScoringCost(alpha=1.0)  # follow each batch at once
    a = Admission(32, wait_budget_s=0.020, cost=cost)
    cost.observe(0.005, 1)
    assert admitted(a) == 5  # up to 4 x 5 ms ahead
    cost.observe(0.010, 1)
    assert a.refusal() is not None  # 5 x 10 ms ahead now
    for _ in range(3):
        a.leave()
    assert admitted(a) == 1  # 2 x 10 ms ahead: one more; 3 x 10 ms: no more


# ---------------------------------------------------------------------------- the batcher
class Scorer:
    """Stands in for ``rank_batch``: records the request ids of every batch; holds the scoring
    thread while ``hold`` is clear."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, served: object, jobs: Sequence[Job], *_: object) -> list[Ranked]:
        self.hold.wait(10)
        self.batches.append([j.request_id for j in jobs])
        return [Ranked(b"{}", b"", 1, len(j.req.items)) for j in jobs]


@pytest.fixture
def scorer(monkeypatch: pytest.MonkeyPatch) -> Iterator[Scorer]:
    s = Scorer()
    monkeypatch.setattr(batcher_module, "rank_batch", s)
    yield s
    s.hold.set()


def request(n_items: int = 3) -> Any:
    return SimpleNamespace(items=[None] * n_items)


SERVED = object()


def make_batcher(**kw: Any) -> MicroBatcher:
    return MicroBatcher(ThreadPoolExecutor(1), torch.Generator(), **kw)


async def outcome(b: MicroBatcher, request_id: str, **kw: Any) -> str:
    try:
        await b.rank(SERVED, request(), request_id, 0, **kw)  # type: ignore[arg-type]
    except Shed as exc:
        return exc.kind
    return "ok"


async def wait_for(cond: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.002)


async def test_a_request_still_queued_at_its_deadline_is_shed_unscored(scorer: Scorer) -> None:
    b = make_batcher(deadline_s=0.05)
    scorer.hold.clear()  # the scorer is busy with "busy": the others queue
    busy = asyncio.create_task(outcome(b, "busy"))
    await wait_for(lambda: b.queued == 0 and b.batches == 1)
    late = [asyncio.create_task(outcome(b, f"late-{i}")) for i in range(3)]
    started = time.monotonic()
    results = await asyncio.gather(*late)
    assert results == [DEADLINE_EXCEEDED] * 3
    assert time.monotonic() - started < 2.0  # answered at the deadline, not after the busy batch
    assert b.queued == 0 and b.expired == 3
    scorer.hold.set()
    assert await busy == "ok"
    assert scorer.batches == [["busy"]]  # the shed requests were never scored


async def test_an_expired_request_already_late_on_arrival_is_shed_when_it_must_queue(scorer: Scorer) -> None:
    b = make_batcher(deadline_s=0.05)
    assert await outcome(b, "idle", arrived=time.monotonic() - 1) == "ok"  # a free scorer scores it
    scorer.hold.clear()
    busy = asyncio.create_task(outcome(b, "busy"))
    await wait_for(lambda: b.batches == 2)
    assert await outcome(b, "stale", arrived=time.monotonic() - 1) == DEADLINE_EXCEEDED
    scorer.hold.set()
    await busy


async def test_a_queued_request_that_would_finish_after_its_deadline_is_shed_before_scoring(
    scorer: Scorer,
) -> None:
    """Lists cost 0.5 s each (known from an earlier batch); the deadline is 2 s. "early" and
    "late" queue behind a busy batch that ends 0.2 s later. "late" arrived 1.5 s ago, so it has
    ~0.3 s left then: less than one list's cost, shed unscored although its deadline (the timer,
    ~0.3 s later) has not passed. "early" has ~1.8 s left: scored."""
    cost = ScoringCost()
    cost.observe(0.5, 1)
    b = make_batcher(deadline_s=2.0, max_lists=1, cost=cost, clock=lambda: 0.0)
    scorer.hold.clear()
    busy = asyncio.create_task(outcome(b, "busy"))
    await wait_for(lambda: b.batches == 1)
    early = asyncio.create_task(outcome(b, "early"))
    late = asyncio.create_task(outcome(b, "late", arrived=time.monotonic() - 1.5))
    await wait_for(lambda: b.queued == 2)
    await asyncio.sleep(0.2)
    scorer.hold.set()
    assert await asyncio.gather(busy, early, late) == ["ok", "ok", DEADLINE_EXCEEDED]
    assert scorer.batches == [["busy"], ["early"]]
    assert b.expired == 1


async def test_a_request_that_finds_the_scorer_idle_is_scored_whatever_its_deadline(scorer: Scorer) -> None:
    cost = ScoringCost()
    cost.observe(1.0, 1)  # a list costs more than the whole deadline
    b = make_batcher(deadline_s=0.05, cost=cost)
    assert await outcome(b, "alone") == "ok"


async def test_the_queue_is_bounded(scorer: Scorer) -> None:
    b = make_batcher(max_queue=2, max_lists=1)
    scorer.hold.clear()
    tasks = [asyncio.create_task(outcome(b, f"r{i}")) for i in range(3)]  # 1 scoring + 2 queued
    await wait_for(lambda: b.queued == 2)
    assert await outcome(b, "one-too-many") == OVERLOADED
    scorer.hold.set()
    assert await asyncio.gather(*tasks) == ["ok"] * 3


@pytest.mark.parametrize(
    ("lifo_after_s", "order"), [(None, ["a", "b", "c"]), (10.0, ["a", "b", "c"]), (0.05, ["c", "b", "a"])]
)
async def test_newest_first_only_once_the_oldest_waited_past_the_budget(
    scorer: Scorer, lifo_after_s: float | None, order: list[str]
) -> None:
    """a, b, c queue behind a busy batch held for 0.1 s. FIFO while the oldest has waited less
    than ``lifo_after_s`` (no switch at plain saturation); once it has waited longer, newest first."""
    b = make_batcher(max_lists=1, deadline_s=10.0, lifo_after_s=lifo_after_s)
    scorer.hold.clear()
    tasks = [asyncio.create_task(outcome(b, "busy"))]
    await wait_for(lambda: b.batches == 1)
    for n, rid in enumerate(("a", "b", "c"), start=1):
        tasks.append(asyncio.create_task(outcome(b, rid)))
        await wait_for(lambda n=n: b.queued == n)
    await asyncio.sleep(0.1)
    scorer.hold.set()
    assert await asyncio.gather(*tasks) == ["ok"] * 4
    assert [batch[0] for batch in scorer.batches] == ["busy", *order]


async def test_batches_stop_at_the_item_slot_budget(scorer: Scorer) -> None:
    b = make_batcher()  # default budget: 512 padded item slots, 16 lists
    scorer.hold.clear()
    busy = asyncio.create_task(b.rank(SERVED, request(1), "busy", 0))  # type: ignore[arg-type]
    await wait_for(lambda: b.batches == 1)
    big = [asyncio.create_task(b.rank(SERVED, request(200), f"big{i}", 0)) for i in range(5)]  # type: ignore[arg-type]
    await wait_for(lambda: b.queued == 5)
    scorer.hold.set()
    await asyncio.gather(busy, *big)
    assert [len(batch) for batch in scorer.batches] == [1, 2, 2, 1]


async def test_the_batcher_times_each_batch_on_its_clock_and_feeds_the_cost(scorer: Scorer) -> None:
    ticks = iter([0.0, 0.030, 1.0, 1.012])  # read when each batch starts and ends scoring
    cost = ScoringCost(alpha=0.5)
    b = make_batcher(cost=cost, clock=lambda: next(ticks))
    scorer.hold.clear()
    busy = asyncio.create_task(outcome(b, "busy"))
    await wait_for(lambda: b.batches == 1)
    queued = [asyncio.create_task(outcome(b, f"r{i}")) for i in range(3)]
    await wait_for(lambda: b.queued == 3)
    scorer.hold.set()
    assert await asyncio.gather(busy, *queued) == ["ok"] * 4
    assert scorer.batches == [["busy"], ["r0", "r1", "r2"]]
    # 30 ms for one list, then 12 ms for three (4 ms a list): halfway from 30 to 4 ms
    assert cost.batches == 2 and cost.per_list_s == pytest.approx(0.017)


async def test_a_shed_request_leaves_no_reference_cycle(scorer: Scorer) -> None:
    """The garbage of a shed request (its parsed body) is freed at once, not by a full GC: full
    collections of that garbage stalled the node for 300+ ms under overload."""
    b = make_batcher(deadline_s=0.01)
    scorer.hold.clear()
    busy = asyncio.create_task(outcome(b, "busy"))
    await wait_for(lambda: b.batches == 1)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        assert await asyncio.gather(*(outcome(b, f"r{i}") for i in range(5))) == [DEADLINE_EXCEEDED] * 5
        gc.collect()
        garbage = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert garbage == []
    scorer.hold.set()
    await busy


# ---------------------------------------------------------------------------- over HTTP
@pytest.fixture
def node_client() -> Iterator[Any]:
    started: list[TestClient] = []

    def make(**changes: Any) -> tuple[Node, TestClient, FakeProducer]:
        s = Settings().replace(**DEV, serve_cold_start_config=TINY_JSON, serve_node_id="unit", **changes)
        producer = FakeProducer()
        topic = FakeSnapshotConsumer(s.topic(TOPIC_SNAPSHOTS))
        node = Node(s, make_producer=lambda: producer, make_consumer=lambda: topic, seed=0)
        client = TestClient(create_app(node))
        client.__enter__()
        started.append(client)
        return node, client, producer

    yield make
    for client in started:
        client.__exit__(None, None, None)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """While clear, every batch waits before it is scored (the real ``rank_batch``)."""
    event = threading.Event()
    real = batcher_module.rank_batch

    def gated(*args: Any) -> Any:
        event.wait(10)
        return real(*args)

    monkeypatch.setattr(batcher_module, "rank_batch", gated)
    yield event
    event.set()


def wait_until(cond: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def post(client: TestClient, seed: int) -> Any:
    return client.post("/rank", content=orjson.dumps(example_request(3, TINY, seed=seed)))


def shed_detail(r: Any, kind: str) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert r.json() == {"detail": [{"field": "$", "msg": r.json()["detail"][0]["msg"], "type": kind}]}


def test_past_the_in_flight_limit_rank_is_503_at_once_and_healthz_answers(
    node_client: Any, gate: threading.Event
) -> None:
    node, client, producer = node_client(serve_max_in_flight=2, serve_request_deadline_ms=0)
    with ThreadPoolExecutor(2) as pool:
        admitted = [pool.submit(post, client, i) for i in range(2)]  # one scoring, one queued
        wait_until(lambda: node.admission.in_flight == 2 and node.batcher.queued == 1)
        started = time.monotonic()
        shed_detail(post(client, 9), OVERLOADED)
        assert time.monotonic() - started < 2.0  # not queued behind the scorer
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert metric_value(client.get("/metrics").text, "paperec_serving_rank_in_flight") == 2
        gate.set()
        assert [f.result().status_code for f in admitted] == [200, 200]
    text = client.get("/metrics").text
    assert metric_value(text, "paperec_serving_errors_total", f'kind="{OVERLOADED}"') == 1
    assert metric_value(text, "paperec_serving_requests_total", 'route="/rank",status="503"') == 1
    assert node.admission.in_flight == 0 and node.admission.peak == 2
    assert post(client, 10).status_code == 200  # admitted again once below the limit
    wait_until(lambda: len(producer.sent) >= 3)
    assert len(producer.sent) == 3  # one impression per 200, none for the 503


def test_past_the_wait_budget_rank_is_503_with_the_reason(node_client: Any, gate: threading.Event) -> None:
    node, client, _ = node_client(serve_max_queue_wait_ms=20, serve_request_deadline_ms=0)
    node.admission.cost.observe(0.015, 1)  # as if lists had cost 15 ms: 1 x 15 ms ahead fits, 2 do not
    with ThreadPoolExecutor(2) as pool:
        admitted = [pool.submit(post, client, i) for i in range(2)]  # one scoring, one queued
        wait_until(lambda: node.admission.in_flight == 2 and node.batcher.queued == 1)
        r = post(client, 9)
        shed_detail(r, OVERLOADED)
        assert "serve_max_queue_wait_ms" in r.json()["detail"][0]["msg"]
        assert node.admission.in_flight == 2  # refused before it was counted
        gate.set()
        assert [f.result().status_code for f in admitted] == [200, 200]
    assert node.admission.peak == 2


def test_a_request_queued_past_its_deadline_is_503_and_not_logged(
    node_client: Any, gate: threading.Event
) -> None:
    node, client, producer = node_client(serve_request_deadline_ms=50)
    with ThreadPoolExecutor(1) as pool:
        scoring = pool.submit(post, client, 0)  # held in its batch: the next one must queue
        wait_until(lambda: node.batcher.batches == 1)
        started = time.monotonic()
        shed_detail(post(client, 1), DEADLINE_EXCEEDED)
        assert time.monotonic() - started < 2.0  # at its deadline, not when the scorer frees up
        gate.set()
        assert scoring.result().status_code == 200  # in a batch already: scored to the end
    text = client.get("/metrics").text
    assert metric_value(text, "paperec_serving_errors_total", f'kind="{DEADLINE_EXCEEDED}"') == 1
    wait_until(lambda: len(producer.sent) >= 1)
    time.sleep(0.1)
    assert len(producer.sent) == 1  # the shed request was never scored, so never logged


def test_bad_admission_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="serve_max_in_flight"):
        Node(Settings().replace(**DEV, serve_max_in_flight=0))
    with pytest.raises(ValueError, match="serve_request_deadline_ms"):
        Node(Settings().replace(**DEV, serve_request_deadline_ms=-1))
    with pytest.raises(ValueError, match="serve_max_queue_wait_ms"):
        Node(Settings().replace(**DEV, serve_max_queue_wait_ms=-1))
