"""Kafka clients built from :class:`base.settings.Settings`, in one place.

Every producer, consumer and admin client of the project (kafka-python in the learner, the
topic tools and the replay; aiokafka in the serving nodes; Faust's broker settings in the
streams worker) gets its connection options here: the bootstrap servers today, and SASL/TLS
when they are added (one change here, not one per client). Callers pass only what is theirs
(client id, acks, fetch sizes ...); a caller's option wins over the connection defaults.

The client libraries are imported inside the factories: ``import base.kafka`` stays cheap, and
a process that only serves never loads kafka-python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from base.settings import Settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient


def connection_options(settings: Settings) -> dict[str, Any]:
    """The options every kafka-python and aiokafka client shares: where the brokers are (and,
    later, how to authenticate). The two libraries use the same names for these."""
    return {"bootstrap_servers": settings.kafka_bootstrap}


def producer_options(settings: Settings, **options: Any) -> dict[str, Any]:
    """kafka-python ``KafkaProducer`` keyword arguments: connection, then ``options``."""
    return {**connection_options(settings), **options}


def producer(settings: Settings, **options: Any) -> KafkaProducer:
    from kafka import KafkaProducer

    return KafkaProducer(**producer_options(settings, **options))


def consumer(settings: Settings, *topics: str, **options: Any) -> KafkaConsumer:
    """A kafka-python ``KafkaConsumer`` (subscribed to ``topics`` when given)."""
    from kafka import KafkaConsumer

    return KafkaConsumer(*topics, **{**connection_options(settings), **options})


def admin(settings: Settings, **options: Any) -> KafkaAdminClient:
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(**{**connection_options(settings), **options})


def aio_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """An aiokafka producer (create it inside the event loop that will use it)."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(**{**connection_options(settings), **options})


def aio_consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """An aiokafka consumer (create it inside the event loop that will use it)."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(*topics, **{**connection_options(settings), **options})


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """The broker options of a ``faust.App`` (Faust takes ``kafka://host:port`` URLs; SASL/TLS
    would go in ``broker_credentials`` here)."""
    return {"broker": [f"kafka://{hp}" for hp in settings.kafka_bootstrap.split(",")]}
