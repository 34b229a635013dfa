"""Broker outages on a PRIVATE Kafka broker (own loopback ports and state dir; the shared dev
stack is never touched): the learner's dead-letter producer neither raises nor blocks while the
broker is stopped (SIGSTOP) or killed, and delivers again once it is back.

The broker is the ``private_kafka`` fixture (tests/integration/private_stack.py).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from private_stack import PrivateKafka

from base.settings import TOPIC_DEAD_LETTER
from base.topics import create_topics
from learner.kafka_io import KafkaDeadLetters

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _flush_s(letters: KafkaDeadLetters) -> float:
    t0 = time.monotonic()
    letters.flush()  # must not raise
    return time.monotonic() - t0


def test_dead_letter_flush_never_raises_during_broker_stop_and_restart(private_kafka: PrivateKafka) -> None:
    s = private_kafka.settings.replace(topic_prefix="paperec.outage.")
    assert create_topics(s) == []
    letters = KafkaDeadLetters(s, s.topic(TOPIC_DEAD_LETTER), flush_timeout_s=2.0, max_block_s=2.0)
    letters.send(b"before", None)
    letters.flush()
    assert letters.flushed

    os.kill(private_kafka.pid, signal.SIGSTOP)  # the broker hangs: requests time out
    try:
        letters.send(b"during stop", None)
        assert _flush_s(letters) < 5.0 and not letters.flushed
    finally:
        os.kill(private_kafka.pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while not letters.flushed and time.monotonic() < deadline:
        letters.flush()
    assert letters.flushed, "dead letters not delivered after the broker resumed"

    private_kafka.kill9()  # the broker dies: connections refused
    letters.send(b"during kill", None)
    assert _flush_s(letters) < 5.0 and not letters.flushed
    private_kafka.start()
    deadline = time.monotonic() + 60
    while not letters.flushed and time.monotonic() < deadline:
        letters.flush()
    assert letters.flushed, "dead letters not delivered after the broker restarted"
    assert letters.failed == 0  # nothing lost: kafka-python retried them
    letters.close()
