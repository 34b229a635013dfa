"""Reading a topic back in integration tests: every record from the beginning to the end
offsets seen at the start of the read (what was written before the call, not what comes after)."""

from __future__ import annotations

import time
from typing import Any

from kafka import TopicPartition

from base import kafka as kafka_clients
from base.settings import Settings


def read_topic(settings: Settings, suffix: str, timeout_s: float = 30.0) -> list[Any]:
    """Every record of ``settings.topic(suffix)``, all partitions, up to its end offsets now."""
    topic = settings.topic(suffix)
    consumer = kafka_clients.consumer(
        settings,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=64 * 1024 * 1024,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(records)
        return out
    finally:
        consumer.close()
