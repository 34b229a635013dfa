"""Kafka clients built from :class:`base.settings.Settings`, in one place.

Every producer, consumer and admin client of the project (kafka-python in the learner, the
topic tools and the replay; aiokafka in the serving nodes; Faust's broker settings in the
streams worker) gets its connection options here: the bootstrap servers, and the security
options (SASL/SCRAM-SHA-512 and TLS, docs/security.md), so the three libraries authenticate
alike and a new option is one change here, not one per client. Callers pass only what is theirs
(client id, acks, fetch sizes ...); a caller's option wins over the connection defaults.

The client libraries are imported inside the factories: ``import base.kafka`` stays cheap, and
a process that only serves never loads kafka-python.
"""

from __future__ import annotations

import ssl
import time
from typing import TYPE_CHECKING, Any

from base.settings import ENV_PREFIX, Settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient

PLAINTEXT = "PLAINTEXT"  # no authentication, no encryption: local development only
SASL_PLAINTEXT = "SASL_PLAINTEXT"
SASL_SSL = "SASL_SSL"
SSL = "SSL"
SECURITY_PROTOCOLS = (PLAINTEXT, SASL_PLAINTEXT, SASL_SSL, SSL)
# The one mechanism supported: salted, iterated and never sent in the clear (PLAIN would send the
# password itself over SASL_PLAINTEXT); the users live in the broker's metadata (KRaft).
SASL_MECHANISMS = ("SCRAM-SHA-512",)


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


def check_security(settings: Settings) -> None:
    """Raise ValueError, naming the settings, for an unknown protocol or mechanism, SASL without
    credentials, or TLS files that are half given: before any client tries to connect."""
    s = settings
    if s.kafka_security_protocol not in SECURITY_PROTOCOLS:
        raise ValueError(
            f"{_env('kafka_security_protocol')}={s.kafka_security_protocol!r}: "
            f"one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    if uses_sasl(s):
        if s.kafka_sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(
                f"{_env('kafka_sasl_mechanism')}={s.kafka_sasl_mechanism!r}: "
                f"one of {', '.join(SASL_MECHANISMS)}"
            )
        if not s.kafka_username or not (s.kafka_password or s.kafka_password_file):
            raise ValueError(
                f"{_env('kafka_security_protocol')}={s.kafka_security_protocol} needs this service's "
                f"credentials: set {_env('kafka_username')} and {_env('kafka_password')} "
                f"(or {_env('kafka_password_file')})"
            )
        s.kafka_sasl_password()  # both given, or an unreadable or empty file: refused here
    if bool(s.kafka_ssl_certfile) != bool(s.kafka_ssl_keyfile):
        raise ValueError(f"set both {_env('kafka_ssl_certfile')} and {_env('kafka_ssl_keyfile')}, or neither")
    if not uses_tls(s) and (s.kafka_ssl_cafile or s.kafka_ssl_certfile):
        raise ValueError(
            f"TLS files given but {_env('kafka_security_protocol')}={s.kafka_security_protocol}: "
            f"use {SSL} or {SASL_SSL}"
        )


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol in (SASL_PLAINTEXT, SASL_SSL)


def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in (SSL, SASL_SSL)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL (None otherwise): the brokers' certificates and host
    names verified against ``kafka_ssl_cafile`` (the system's CAs when empty), and the client
    certificate when given. One context for all three libraries: they verify alike."""
    if not uses_tls(settings):
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    return context


def security_options(settings: Settings) -> dict[str, Any]:
    """The security keyword arguments of kafka-python and aiokafka clients (the two libraries
    use the same names): nothing but the protocol for PLAINTEXT."""
    check_security(settings)
    s = settings
    options: dict[str, Any] = {"security_protocol": s.kafka_security_protocol}
    if uses_sasl(s):
        options.update(
            sasl_mechanism=s.kafka_sasl_mechanism,
            sasl_plain_username=s.kafka_username,
            sasl_plain_password=s.kafka_sasl_password(),
        )
    context = ssl_context(s)
    if context is not None:
        options["ssl_context"] = context
    return options


def connection_options(settings: Settings) -> dict[str, Any]:
    """The options every kafka-python and aiokafka client shares: where the brokers are and how
    to authenticate. The two libraries use the same names for these."""
    return {"bootstrap_servers": settings.kafka_bootstrap, **security_options(settings)}


# Every producer waits for all in-sync replicas and is idempotent: with a replicated cluster
# (min.insync.replicas=2) an acknowledged record survives the loss of its leader, and the
# retries that follow a leader change do not write it twice. kafka-python and aiokafka use the
# same names; -1 is how the brokers (and kafka-python internally) spell "all".
DURABLE_PRODUCER_OPTIONS: dict[str, Any] = {"acks": "all", "enable_idempotence": True}


def durable(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with :data:`DURABLE_PRODUCER_OPTIONS`; a caller asking for weaker acks or for
    no idempotence is refused (ValueError) rather than silently overridden."""
    if options.get("acks", "all") not in ("all", -1):
        raise ValueError(f"producer acks={options['acks']!r}: paperec producers use acks='all'")
    if options.get("enable_idempotence", True) is not True:
        raise ValueError("producer enable_idempotence=False: paperec producers are idempotent")
    return {**options, **DURABLE_PRODUCER_OPTIONS}


def producer_options(settings: Settings, **options: Any) -> dict[str, Any]:
    """kafka-python ``KafkaProducer`` keyword arguments: connection, then ``options``, then
    acks=all and idempotence (:func:`durable`)."""
    return durable({**connection_options(settings), **options})


def consumer_options(settings: Settings, **options: Any) -> dict[str, Any]:
    """kafka-python ``KafkaConsumer`` keyword arguments: connection, then ``options``."""
    return {**connection_options(settings), **options}


def producer(settings: Settings, **options: Any) -> KafkaProducer:
    from kafka import KafkaProducer

    return KafkaProducer(**producer_options(settings, **options))


def consumer(settings: Settings, *topics: str, **options: Any) -> KafkaConsumer:
    """A kafka-python ``KafkaConsumer`` (subscribed to ``topics`` when given)."""
    from kafka import KafkaConsumer

    return KafkaConsumer(*topics, **consumer_options(settings, **options))


def admin(settings: Settings, **options: Any) -> KafkaAdminClient:
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(**{**connection_options(settings), **options})


def aio_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """An aiokafka producer (create it inside the event loop that will use it)."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(**durable({**connection_options(settings), **options}))


def aio_consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """An aiokafka consumer (create it inside the event loop that will use it)."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(*topics, **{**connection_options(settings), **options})


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """The broker options of a ``faust.App``: ``kafka://host:port`` URLs, and for a secured
    cluster ``broker_credentials`` (Faust hands them to its aiokafka consumer, producer and
    topic creation alike).

    Producer durability is the app's own ``producer_acks=-1`` (acks=all, streams/worker.py).
    faust-streaming 0.15 makes its producer idempotent only under ``exactly_once`` (it builds the
    aiokafka producer itself, with no option for it); the worker is at-least-once, and the stream
    join downstream tolerates a re-sent record, so a duplicate on retry is harmless there."""
    options: dict[str, Any] = {"broker": [f"kafka://{hp}" for hp in settings.kafka_bootstrap.split(",")]}
    check_security(settings)
    if settings.kafka_security_protocol == PLAINTEXT:
        return options
    import faust

    context = ssl_context(settings)
    if uses_sasl(settings):
        options["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_username,
            password=settings.kafka_sasl_password(),
            ssl_context=context,  # given: SASL_SSL, else SASL_PLAINTEXT
            mechanism=settings.kafka_sasl_mechanism,
        )
    else:
        options["broker_credentials"] = faust.SSLCredentials(context)
    return options


def read_topic(settings: Settings, suffix: str, timeout_s: float = 30.0) -> list[Any]:
    """Every record of ``settings.topic(suffix)``, all partitions, from the beginning to the end
    offsets seen at the start of the read (what was written before the call, not what comes after);
    what was read by ``timeout_s`` if the end is not reached by then. For tests, benchmarks and
    tools that check what a topic holds."""
    from kafka import TopicPartition

    topic = settings.topic(suffix)
    reader = consumer(
        settings,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=64 * 1024 * 1024,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        ends = reader.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(reader.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for records in reader.poll(timeout_ms=500).values():
                out.extend(records)
        return out
    finally:
        reader.close()


def member_assignments(group: dict[str, Any]) -> list[dict[str, list[int]]]:
    """Each member's assignment, ``{topic: sorted partitions}``, from a group's entry in
    kafka-python's ``KafkaAdminClient.describe_groups`` (a member whose assignment is not decoded
    owns nothing). For tests and benchmarks that check how a consumer group split its topics."""
    out = []
    for member in group.get("members", []):
        assignment = member.get("member_assignment")
        owned: dict[str, list[int]] = {}
        if isinstance(assignment, dict):
            for a in assignment.get("assigned_partitions", []):
                owned[a["topic"]] = sorted([*owned.get(a["topic"], []), *a["partitions"]])
        out.append(owned)
    return out
