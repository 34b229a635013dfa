"""Hot-load logic without a broker: verification, rejection by reason, newest-first catch-up,
no roll-back, and the consumer loop on an in-memory topic."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from actor_service.devtools import (
    FakeRecord,
    FakeSnapshotConsumer,
    make_model,
    nan_model,
    snapshot_record,
    tampered,
    truncated,
)
from actor_service.instruments import Instruments
from actor_service.model_slot import ModelSlot
from actor_service.snapshots import SnapshotConsumer, SnapshotLoader, rejection_kind
from base.settings import Settings
from model.ranker import RankerConfig
from model.snapshot import SnapshotRecord
from schemas import SCHEMA_VERSION, Exploration

TINY = RankerConfig.tiny()
SETTINGS = Settings()
KEY = SETTINGS.snapshot_hmac_key.encode()


def rec(version: int, seed: int | None = None) -> SnapshotRecord:
    return snapshot_record(make_model(version if seed is None else seed, TINY), version, SETTINGS)


def loader() -> tuple[SnapshotLoader, ModelSlot, Instruments]:
    slot, m = ModelSlot(), Instruments()
    return SnapshotLoader(slot, KEY, m, default_exploration=Exploration(noise_std=0.1)), slot, m


def test_valid_snapshot_is_loaded_and_measured() -> None:
    ld, slot, m = loader()
    (out,) = ld.handle([FakeRecord.of(rec(1), 0)])
    assert out.status == "loaded" and slot.version() == 1
    assert m.value("paperec_serving_snapshots_loaded_total") == 1
    assert m.value("paperec_serving_snapshot_publish_to_served_seconds_count") == 1


@pytest.mark.parametrize(
    ("make_bad", "reason"),
    [
        (lambda: tampered(rec(2)), "checksum"),
        (lambda: truncated(rec(2)), "checksum"),
        (lambda: snapshot_record(nan_model(2, TINY), 2, SETTINGS), "non_finite"),
        (
            lambda: snapshot_record(make_model(2, TINY), 2, SETTINGS.replace(snapshot_hmac_key="other")),
            "signature",
        ),
        (lambda: SnapshotRecord(b"actor", rec(2).value, []), "header"),
        (lambda: SnapshotRecord(b"critic", rec(2).value, rec(2).headers), "key"),
    ],
)
def test_invalid_snapshot_is_rejected_and_the_old_one_keeps_serving(
    make_bad: Callable[[], SnapshotRecord], reason: str
) -> None:
    ld, slot, m = loader()
    ld.handle([FakeRecord.of(rec(1), 0)])
    served = slot.current
    (out,) = ld.handle([FakeRecord.of(make_bad(), 1)])
    assert (out.status, out.reason) == ("rejected", reason)
    assert slot.current is served
    assert m.value("paperec_serving_snapshots_rejected_total", reason=reason) == 1
    # A later valid snapshot still loads.
    (out,) = ld.handle([FakeRecord.of(rec(3), 2)])
    assert out.status == "loaded" and slot.version() == 3


def test_schema_version_mismatch_is_rejected() -> None:
    good = rec(2)
    current = f'"schema_version":{SCHEMA_VERSION}'.encode()
    assert current in dict(good.headers)["paperec-snapshot-header"]
    header = dict(good.headers)["paperec-snapshot-header"].replace(current, b'"schema_version":99')
    ld, slot, _m = loader()
    (out,) = ld.handle([FakeRecord(0, good.key, good.value, [("paperec-snapshot-header", header)])])
    assert out.status == "rejected" and slot.current is None
    assert rejection_kind("bad header: schema_version: unsupported schema_version 99") == "schema"


def test_catch_up_batch_loads_the_newest_valid_and_skips_older() -> None:
    ld, slot, m = loader()
    records = [FakeRecord.of(rec(v), v - 1) for v in (1, 2, 3)] + [FakeRecord.of(tampered(rec(4)), 3)]
    outcomes = ld.handle(records)
    assert [(o.offset, o.status) for o in outcomes] == [(3, "rejected"), (2, "loaded")]
    assert slot.version() == 3
    assert m.value("paperec_serving_snapshots_loaded_total") == 1  # 1 and 2 were never built


def test_replayed_or_older_versions_never_roll_back() -> None:
    ld, slot, m = loader()
    ld.handle([FakeRecord.of(rec(5), 0)])
    served = slot.current
    outcomes = ld.handle([FakeRecord.of(rec(5, seed=9), 1), FakeRecord.of(rec(4), 2)])
    assert {o.status for o in outcomes} == {"skipped"}
    assert slot.current is served and m.value("paperec_serving_snapshots_skipped_total") == 2


def test_tombstones_are_ignored() -> None:
    ld, slot, _ = loader()
    (out,) = ld.handle([FakeRecord(0, b"actor", None, [])])
    assert out.status == "tombstone" and slot.current is None


async def test_consumer_catches_up_then_follows_new_snapshots() -> None:
    ld, slot, _ = loader()
    topic = FakeSnapshotConsumer("snapshots")
    topic.append(rec(1))
    topic.append(rec(2))
    consumer = SnapshotConsumer(ld, lambda: topic, "snapshots")
    consumer.start()
    try:
        await asyncio.wait_for(consumer.caught_up.wait(), 10)
        assert slot.version() == 2
        topic.append(rec(3))
        for _ in range(500):
            if slot.version() == 3:
                break
            await asyncio.sleep(0.01)
        assert slot.version() == 3
    finally:
        await consumer.close()


async def test_consumer_retries_when_the_broker_is_down() -> None:
    ld, slot, _ = loader()
    attempts: list[int] = []

    def make() -> FakeSnapshotConsumer:
        attempts.append(1)
        return FakeSnapshotConsumer("snapshots", [FakeRecord.of(rec(1), 0)], fail_start=len(attempts) < 3)

    consumer = SnapshotConsumer(ld, make, "snapshots", max_backoff_s=0.05)
    consumer.start()
    try:
        await asyncio.wait_for(consumer.caught_up.wait(), 10)
        assert len(attempts) == 3 and slot.version() == 1
    finally:
        await consumer.close()
