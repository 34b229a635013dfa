"""Replay round trip on the real broker: simulate -> log -> replay -> consume gives the same
events, in log order per partition; corrupt lines are counted and skipped."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from base.settings import Settings
from base.topics import create_topics
from paperec.cli import main
from paperec.replay import TOPIC_OF
from paperec.simulate import simulate_log
from schemas import encode
from simulator import SimulatorConfig
from simulator.logfile import LogLine, read_log

pytestmark = pytest.mark.integration


def _consume_all(
    settings: Settings, expected: int, timeout_s: float = 20.0
) -> dict[str, list[tuple[int, bytes, bytes]]]:
    """(partition, key, value) per topic, in offset order per partition."""
    topics = [settings.topic(t) for t in TOPIC_OF.values()]
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, consumer_timeout_ms=1000
    )
    try:
        parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        out: dict[str, list[tuple[int, bytes, bytes]]] = defaultdict(list)
        deadline = time.monotonic() + timeout_s
        while sum(map(len, out.values())) < expected and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                out[tp.topic].extend((tp.partition, r.key, r.value) for r in records)
        return out
    finally:
        consumer.close()


def test_simulate_log_replay_consume_round_trip(
    tmp_path: Path, settings: Settings, unique_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings.replace(topic_prefix=unique_prefix)
    assert create_topics(settings) == []
    log_path = tmp_path / "sim.jsonl"
    simulate_log(SimulatorConfig(n_users=12, n_items=200, seed=11), 1, log_path)
    lines = log_path.read_bytes().splitlines(keepends=True)
    # corrupt the log: a truncated line, and a click whose position is not an integer
    lines.insert(3, b'{"type":"impression","schema_version":1,"request_id":"r-x"\n')
    click = next(x for x in lines if x.startswith(b'{"type":"click"'))
    lines.insert(7, click.replace(b'"position":', b'"position":"x","_":'))
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_bytes(b"".join(lines))

    argv = ["replay", str(corrupt), "--no-progress", "--topic-prefix", unique_prefix]
    assert main([*argv, "--kafka-bootstrap", settings.kafka_bootstrap]) == 0
    out = capsys.readouterr().out
    events = [i.event for i in read_log(log_path) if isinstance(i, LogLine)]
    assert f"published {len(events)} events" in out and "skipped 2 corrupt lines" in out

    consumed = _consume_all(settings, len(events))
    got = sorted(v for recs in consumed.values() for _, _, v in recs)
    assert got == sorted(encode(e) for e in events)  # same events, nothing lost or duplicated
    for event_type, suffix in TOPIC_OF.items():
        topic = settings.topic(suffix)
        of_type = [e for e in events if e.type == event_type]
        for partition in {p for p, _, _ in consumed[topic]}:
            seq = [(k, v) for p, k, v in consumed[topic] if p == partition]
            keys = {k for k, _ in seq}
            expected = [(e.request_id.encode(), encode(e)) for e in of_type if e.request_id.encode() in keys]
            assert seq == expected  # the log's order, per partition (keyed by request_id)
