"""A serving node (``paperec serve`` subprocess, real broker) flooded far beyond its in-flight
limit: every /rank answer is 200 or 503 with Retry-After, /healthz answers during the flood, and
the impressions on Kafka are exactly the 200 responses (shed requests are not scored, so not
logged)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from actor_service.devtools import example_request, metric_value, start_node, wait_ready
from actor_service.overload import DEADLINE_EXCEEDED, OVERLOADED
from base.settings import TOPIC_IMPRESSIONS, Settings
from base.topics import create_topics
from schemas import decode_impression

pytestmark = pytest.mark.integration

FLOOD = 150  # requests, all sent at once: 30x the node's in-flight limit


async def impression_ids(
    s: Settings, expected: int, settle_s: float = 2.0, timeout_s: float = 20.0
) -> set[str]:
    """Request ids of every impression on the topic: read until ``expected`` are in, then for
    ``settle_s`` more (so that an extra one would be seen)."""
    consumer = AIOKafkaConsumer(
        s.topic(TOPIC_IMPRESSIONS),
        bootstrap_servers=s.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    ids: list[str] = []
    try:
        deadline = time.monotonic() + timeout_s
        settled_at: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            ids += [decode_impression(r.value).request_id for recs in batch.values() for r in recs]
            if len(ids) >= expected and settled_at is None:
                settled_at = time.monotonic() + settle_s
            if settled_at is not None and time.monotonic() > settled_at:
                break
    finally:
        await consumer.stop()
    assert len(ids) == len(set(ids))
    return set(ids)


async def test_a_flood_is_answered_200_or_503_healthz_stays_up_and_only_200s_are_logged(
    settings: Settings, tmp_path: Path, unique_prefix: str
) -> None:
    s = settings.replace(topic_prefix=unique_prefix, dev_mode=True)
    assert create_topics(s) == []
    args = [
        "--serve-cold-start", "random",
        "--serve-max-in-flight", "5",
        "--serve-request-deadline-ms", "100",
        "--serve-metrics-clickhouse", "false",
    ]  # fmt: skip
    node = start_node(s, tmp_path, name="flooded", extra_args=args)
    try:
        wait_ready([node], timeout_s=90)
        statuses: dict[str, int] = {}
        shed_kinds: list[str] = []
        no_retry_after: list[str] = []
        healthz: list[int] = []
        flooding = True
        limits = httpx.Limits(max_connections=FLOOD + 1)
        async with httpx.AsyncClient(base_url=node.url, timeout=30, limits=limits) as client:

            async def rank(i: int) -> None:
                rid = f"flood-{i}"
                r = await client.post("/rank", json=example_request(200, seed=i, request_id=rid))
                statuses[rid] = r.status_code
                if r.status_code == 503:
                    shed_kinds.append(r.json()["detail"][0]["type"])
                    if "retry-after" not in r.headers:
                        no_retry_after.append(rid)

            async def probe() -> None:
                async with httpx.AsyncClient(base_url=node.url, timeout=5) as own:
                    while flooding:
                        healthz.append((await own.get("/healthz")).status_code)
                        await asyncio.sleep(0.02)

            prober = asyncio.create_task(probe())
            await asyncio.gather(*(rank(i) for i in range(FLOOD)))
            flooding = False
            await prober
            metrics = (await client.get("/metrics")).text

        assert len(statuses) == FLOOD
        assert set(statuses.values()) <= {200, 503}, statuses
        accepted = {rid for rid, status in statuses.items() if status == 200}
        assert accepted and len(accepted) < FLOOD  # some served, some shed
        assert no_retry_after == []
        assert set(shed_kinds) <= {OVERLOADED, DEADLINE_EXCEEDED}
        assert healthz and set(healthz) == {200}  # answered while the flood was in progress
        for kind in (OVERLOADED, DEADLINE_EXCEEDED):
            counted = metric_value(metrics, "paperec_serving_errors_total", f'kind="{kind}"')
            assert counted == shed_kinds.count(kind)
        assert await impression_ids(s, len(accepted)) == accepted
    finally:
        node.stop()
