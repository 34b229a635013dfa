"""Kafka implementations of the ingestion's source and dead-letter sink."""

from __future__ import annotations

import logging
import time

from learner.ingest import RawRecord

log = logging.getLogger(__name__)


class KafkaSource:
    """kafka-python consumer assigned to every partition of one topic (one learner per group).

    Start position per partition: the checkpoint's offset when given, else the group's committed
    offset, else the beginning of the topic.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group_id: str,
        start_offsets: dict[int, int] | None = None,
        wait_s: float = 30.0,
    ) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topic = topic
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=f"paperec-learner-{group_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        deadline = time.monotonic() + wait_s
        partitions = self.consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.5)
            partitions = self.consumer.partitions_for_topic(topic)
        if not partitions:
            self.consumer.close()
            raise RuntimeError(f"topic {topic} not found on {bootstrap} (run `paperec topics create`)")
        self.tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(self.tps)
        start_offsets = start_offsets or {}
        for tp in self.tps:
            if tp.partition in start_offsets:
                self.consumer.seek(tp, start_offsets[tp.partition])
            else:
                committed = self.consumer.committed(tp)
                if committed is not None:
                    self.consumer.seek(tp, committed)
                else:
                    self.consumer.seek_to_beginning(tp)
        # position() resolves seeks (and resets an offset that retention deleted to the earliest)
        self._start = {tp.partition: int(self.consumer.position(tp)) for tp in self.tps}
        self._last_lag_check = 0.0
        self._lag: int | None = None

    def start_positions(self) -> dict[int, int]:
        return dict(self._start)

    def poll(self, timeout_s: float, max_records: int) -> list[RawRecord]:
        polled = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out = [
            RawRecord(m.topic, m.partition, m.offset, m.key, m.value)
            for msgs in polled.values()
            for m in msgs
        ]
        return out

    def lag(self) -> int | None:
        # end offsets are a broker round trip: refresh every few seconds, not every poll
        now = time.monotonic()
        if now - self._last_lag_check >= 2.0:
            self._last_lag_check = now
            try:
                ends = self.consumer.end_offsets(self.tps)
                self._lag = sum(max(0, ends[tp] - self.consumer.position(tp)) for tp in self.tps)
            except Exception as exc:
                log.debug("lag unavailable: %s", exc)
        return self._lag

    def seek(self, offsets: dict[int, int]) -> None:
        for tp in self.tps:
            if tp.partition in offsets:
                self.consumer.seek(tp, offsets[tp.partition])

    def commit(self, offsets: dict[int, int]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        self.consumer.commit(
            {TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
        )

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class KafkaDeadLetters:
    """Dead letters to the dead-letter topic (acks=all; ``flush`` before offsets are checkpointed)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.failed = 0
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50)

    def send(self, value: bytes, key: bytes | None) -> None:
        self.producer.send(self.topic, key=key, value=value).add_errback(self._failed)

    def _failed(self, exc: BaseException) -> None:
        self.failed += 1
        log.error("dead letter not delivered to %s: %s", self.topic, exc)

    def flush(self) -> None:
        self.producer.flush(timeout=10)

    def close(self) -> None:
        self.producer.close(timeout=10)
