"""The learner's dead-letter producer and offset commits while the broker is away (no Kafka:
the producer is a stand-in that times out like kafka-python's does)."""

from __future__ import annotations

from typing import Any

from kafka.errors import KafkaTimeoutError

from base.settings import Settings
from learner.kafka_io import CommitAfterFlush, KafkaDeadLetters


class StandInProducer:
    def __init__(self) -> None:
        self.down = False
        self.sent: list[bytes] = []

    def send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        if self.down:
            raise KafkaTimeoutError("Failed to update metadata after 5.0 secs.")
        self.sent.append(value)
        return self

    def add_errback(self, fn: Any) -> Any:
        return self

    def flush(self, timeout: float | None = None) -> None:
        if self.down:
            raise KafkaTimeoutError(f"Timeout after waiting for {timeout} secs.")

    def close(self, timeout: float | None = None) -> None:
        if self.down:
            raise KafkaTimeoutError("close timed out")


def test_dead_letters_never_raise_while_the_broker_is_down() -> None:
    producer = StandInProducer()
    letters = KafkaDeadLetters(Settings(), "dl", producer=producer)
    letters.send(b"a", None)
    letters.flush()
    assert letters.flushed and producer.sent == [b"a"]

    producer.down = True
    letters.send(b"b", None)  # no metadata within max_block: counted, not raised
    letters.flush()  # times out: not raised
    assert not letters.flushed
    assert letters.failed == 1 and letters.flush_failures == 1
    letters.close()  # not raised either

    producer.down = False
    letters.flush()
    assert letters.flushed


def test_commit_waits_for_the_dead_letters_and_is_retried() -> None:
    producer = StandInProducer()
    letters = KafkaDeadLetters(Settings(), "dl", producer=producer)
    committed: list[dict[int, int]] = []
    now = [0.0]
    commits = CommitAfterFlush(letters, committed.append, retry_s=10.0, clock=lambda: now[0])

    commits.offer({0: 5})
    assert committed == [{0: 5}] and commits.pending is None

    producer.down = True
    letters.send(b"x", None)
    letters.flush()  # what checkpoint_state does before the checkpoint is written
    commits.offer({0: 9})
    assert committed == [{0: 5}] and commits.pending == {0: 9} and commits.deferred == 1
    now[0] = 5.0
    commits.poll()  # not due yet
    now[0] = 11.0
    commits.poll()  # due, still down
    assert committed == [{0: 5}] and commits.deferred == 2
    commits.offer({0: 12})  # a newer checkpoint replaces the pending offsets

    producer.down = False
    now[0] = 22.0
    commits.poll()
    assert committed == [{0: 5}, {0: 12}] and commits.pending is None
    now[0] = 40.0
    commits.poll()  # nothing pending: nothing committed again
    assert len(committed) == 2
