"""Impression logging never blocks serving: bounded buffer, drop-oldest accounting, retries,
and a producer that cannot start."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from actor_service.devtools import FakeProducer
from actor_service.impressions import ImpressionLogger
from actor_service.instruments import Instruments


def make_logger(producer: FakeProducer, **limits: int) -> tuple[ImpressionLogger, Instruments]:
    m = Instruments()
    kwargs = {"max_records": 100, "max_bytes": 1 << 20, "max_message_bytes": 1 << 16, **limits}
    return ImpressionLogger(lambda: producer, "impressions", m, max_backoff_s=0.05, **kwargs), m


async def wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_impressions_are_sent_keyed_by_request_id_in_order() -> None:
    producer = FakeProducer()
    log, m = make_logger(producer)
    log.start()
    for i in range(10):
        log.submit(f"req-{i}".encode(), b"{}")
    await wait_for(lambda: len(producer.sent) == 10)
    assert [k for _, k, _ in producer.sent] == [f"req-{i}".encode() for i in range(10)]
    assert {t for t, _, _ in producer.sent} == {"impressions"}
    await log.close(1)
    assert m.value("paperec_serving_impressions_total", outcome="sent") == 10


async def test_kafka_down_keeps_a_bounded_buffer_and_counts_drops() -> None:
    producer = FakeProducer(down=True)
    log, m = make_logger(producer, max_records=5)
    log.start()
    for i in range(12):
        log.submit(f"req-{i}".encode(), b"x" * 10)  # returns at once: nothing waits for Kafka
    assert log.pending == 5
    assert m.value("paperec_serving_impressions_total", outcome="dropped_buffer_full") == 7
    assert m.value("paperec_serving_impressions_buffered") == 5
    await asyncio.sleep(0.2)  # the producer keeps failing to start; nothing else happens
    assert m.value("paperec_serving_impression_producer_connected") == 0
    # Kafka comes back: the buffered (newest) five are delivered.
    producer.down = False
    await wait_for(lambda: len(producer.sent) == 5)
    assert [k for _, k, _ in producer.sent] == [f"req-{i}".encode() for i in range(7, 12)]
    await log.close(1)


async def test_byte_bound_and_oversized_records() -> None:
    log, m = make_logger(FakeProducer(down=True), max_bytes=25, max_message_bytes=20)
    log.submit(b"big", b"x" * 21)
    assert m.value("paperec_serving_impressions_total", outcome="dropped_too_large") == 1 and log.pending == 0
    for i in range(3):
        log.submit(str(i).encode(), b"x" * 10)
    assert log.pending == 2 and m.value("paperec_serving_impressions_buffered_bytes") == 20
    await log.close(0.1)


async def test_failed_deliveries_are_retried() -> None:
    producer = FakeProducer()
    log, m = make_logger(producer)
    await log._connect()  # connected, then the broker goes away
    log._producer = producer
    producer.down = True
    log.start()
    log.submit(b"req-1", b"{}")
    await wait_for(lambda: m.value("paperec_serving_impressions_total", outcome="retried") >= 2)
    producer.down = False
    await wait_for(lambda: len(producer.sent) == 1)
    await log.close(1)
    assert m.value("paperec_serving_impressions_total", outcome="sent") == 1
    assert m.value("paperec_serving_impressions_total", outcome="dropped_failed") == 0


async def test_connected_gauge_follows_the_broker_mid_outage() -> None:
    """Issue 15: the gauge stayed 1 for the whole outage once the producer had started."""
    producer = FakeProducer()
    m = Instruments()
    log = ImpressionLogger(
        lambda: producer,
        "impressions",
        m,
        max_records=100,
        max_bytes=1 << 20,
        max_message_bytes=1 << 16,
        max_backoff_s=0.05,
        probe_interval_s=0.02,
    )
    log.start()
    await wait_for(lambda: m.value("paperec_serving_impression_producer_connected") == 1)
    producer.down = True  # no traffic: only the probe can tell
    await wait_for(lambda: m.value("paperec_serving_impression_producer_connected") == 0)
    log.submit(b"req-1", b"{}")  # buffered, retried
    await wait_for(lambda: m.value("paperec_serving_impressions_total", outcome="retried") >= 1)
    assert m.value("paperec_serving_impression_producer_connected") == 0
    producer.down = False
    await wait_for(lambda: len(producer.sent) == 1)
    await wait_for(lambda: m.value("paperec_serving_impression_producer_connected") == 1)
    await log.close(1)
    assert m.value("paperec_serving_impressions_total", outcome="sent") == 1
