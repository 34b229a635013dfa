"""`paperec topics create` against the real broker: topics exist with the planned partitions
and configs, creation is idempotent, and broken co-partitioning is detected, not assumed."""

from __future__ import annotations

import time

import pytest
from kafka.admin import KafkaAdminClient

from base.settings import Settings
from base.topics import (
    create_topics,
    delete_prefixed_topics,
    partition_counts,
    topic_configs,
    topic_plan,
    verify_topics,
)

pytestmark = pytest.mark.integration


def test_create_provisions_every_topic_as_planned(settings: Settings, unique_prefix: str) -> None:
    s = settings.replace(topic_prefix=unique_prefix, event_partitions=3, transition_partitions=2)
    assert create_topics(s) == []
    assert create_topics(s) == []  # idempotent
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    try:
        plan = topic_plan(s)
        counts = partition_counts(admin, [p.name for p in plan])
        assert counts == {p.name: p.partitions for p in plan}
        assert counts[f"{unique_prefix}impressions"] == 3
        configs = topic_configs(admin, [f"{unique_prefix}actor-snapshots"])
        snap = configs[f"{unique_prefix}actor-snapshots"]
        assert snap["cleanup.policy"] == "compact"
        assert int(snap["max.message.bytes"]) == s.max_message_bytes
    finally:
        admin.close()
    assert sorted(delete_prefixed_topics(s)) == sorted(p.name for p in plan)


def test_verify_detects_broken_copartitioning(settings: Settings, unique_prefix: str) -> None:
    s = settings.replace(topic_prefix=unique_prefix, event_partitions=2)
    assert create_topics(s) == []
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    try:
        admin.create_partitions({f"{unique_prefix}dwells": 3})
        # partition metadata propagates asynchronously: poll until the broker reports it
        deadline = time.monotonic() + 15
        while partition_counts(admin, [f"{unique_prefix}dwells"]).get(f"{unique_prefix}dwells") != 3:
            assert time.monotonic() < deadline, "broker never reported the new partition"
            time.sleep(0.2)
        problems = verify_topics(admin, s)
    finally:
        admin.close()
    assert any("not co-partitioned" in p for p in problems), problems
