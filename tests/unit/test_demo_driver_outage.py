"""The demo's progress line while the broker is away: the last known count, no exception (the
broker SIGKILLed during `paperec demo` used to end the demo and every service with it)."""

from __future__ import annotations

from typing import Any

from kafka.errors import KafkaTimeoutError

from base.settings import Settings
from paperec import demo_driver
from paperec.demo_driver import DemoDriver


class StandInOffsets:
    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1}

    def end_offsets(self, tps: list[Any], timeout_ms: int | None = None) -> dict[Any, int]:
        self.calls += 1
        if self.down:
            raise KafkaTimeoutError(f"Failed to get offsets by timestamps in {timeout_ms} ms")
        return {tp: 10 for tp in tps}


def test_transitions_fall_back_to_the_last_count_and_retry(monkeypatch: Any) -> None:
    now = [100.0]
    monkeypatch.setattr(demo_driver.time, "monotonic", lambda: now[0])
    driver = DemoDriver.__new__(DemoDriver)  # no Kafka, no HTTP: only the offsets path
    driver.settings = Settings()
    driver._offsets = StandInOffsets()
    driver._transitions, driver._offsets_failed_at = 0, -demo_driver.OFFSETS_RETRY_S
    assert driver.transitions() == 20
    driver._offsets.down = True
    assert driver.transitions() == 20  # not raised
    now[0] += 1.0
    assert driver.transitions() == 20 and driver._offsets.calls == 2  # not asked again yet
    driver._offsets.down = False
    now[0] += demo_driver.OFFSETS_RETRY_S
    assert driver.transitions() == 20 and driver._offsets.calls == 3
