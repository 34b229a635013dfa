"""Every schema round-trips through the real broker: produced with kafka-python, consumed with
aiokafka (the two clients the services use), decoded and compared; a malformed record consumed
from Kafka is rejected with the offending field named."""

from __future__ import annotations

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient

from schemas import SchemaError, decode, encode
from schemas.examples import EXAMPLES

pytestmark = pytest.mark.integration


def _create_topic(bootstrap: str, name: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics({name: {"num_partitions": 1, "replication_factor": 1}}, wait_for_metadata=True)
    finally:
        admin.close()


async def _consume(bootstrap: str, topic: str, n: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        out: list[bytes] = []
        while len(out) < n:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"timed out after {len(out)} of {n} records"
            for records in batch.values():
                out.extend(r.value for r in records)
        return out
    finally:
        await consumer.stop()


async def test_every_schema_round_trips_through_kafka(kafka_bootstrap: str, unique_prefix: str) -> None:
    topic = f"{unique_prefix}schemas"
    _create_topic(kafka_bootstrap, topic)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    records = list(EXAMPLES.values())
    for record in records:
        producer.send(topic, key=type(record).__name__.encode(), value=encode(record))
    producer.flush()
    producer.close()

    received = await _consume(kafka_bootstrap, topic, len(records))
    assert [decode(raw) for raw in received] == records


async def test_malformed_record_from_kafka_names_the_field(kafka_bootstrap: str, unique_prefix: str) -> None:
    topic = f"{unique_prefix}malformed"
    _create_topic(kafka_bootstrap, topic)
    click = orjson.loads(encode(EXAMPLES["click"]))
    click["position"] = "third"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(topic, value=orjson.dumps(click))
    producer.send(topic, value=b"{not json")
    producer.flush()
    producer.close()

    wrong_type, not_json = await _consume(kafka_bootstrap, topic, 2)
    with pytest.raises(SchemaError) as err:
        decode(wrong_type)
    assert err.value.field == "position"
    with pytest.raises(SchemaError):
        decode(not_json)
