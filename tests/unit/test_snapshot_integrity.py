"""Snapshot integrity without a broker: only verified records count for the learner's versions,
key ids (accept/reject, rotation, legacy headers), refusal of the dev key outside dev mode, and
the serving node's local snapshot store (round trip, corrupt file, no roll-back from the topic)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest

from actor_service.devtools import FakeProducer, FakeRecord, FakeSnapshotConsumer, make_model, snapshot_record
from actor_service.instruments import Instruments
from actor_service.model_slot import ModelSlot
from actor_service.node import Node
from actor_service.snapshot_store import FILE_NAME, MAGIC, SnapshotStore, StoredSnapshot, pack, unpack
from actor_service.snapshots import SnapshotLoader
from base.settings import DEV_HMAC_KEY, TOPIC_SNAPSHOTS, Settings
from learner.publisher import scan_versions
from model.ranker import RankerConfig
from model.snapshot import HEADER_NAME, SnapshotRecord, SnapshotRejected, decode_snapshot, header_of
from model.snapshot_keys import parse_keys, snapshot_keys
from schemas import Exploration, SchemaError, decode_snapshot_header, encode, make_header, verify_snapshot
from schemas.examples import EXAMPLE_HMAC_KEY, SNAPSHOT_HEADER

TINY = RankerConfig.tiny()
OLD = Settings(snapshot_hmac_key="old-secret", snapshot_hmac_key_id="old")
NEW = Settings(snapshot_hmac_keys="new:new-secret", snapshot_hmac_key_id="new")
BOTH = Settings(snapshot_hmac_keys="old:old-secret,new:new-secret", snapshot_hmac_key_id="old")
INT64_MAX = 2**63 - 1


def rec(version: int, settings: Settings = OLD, seed: int | None = None) -> SnapshotRecord:
    return snapshot_record(make_model(version if seed is None else seed, TINY), version, settings)


def forged(version: int) -> SnapshotRecord:
    """A well-formed header nobody signed with an accepted key (what any topic writer can send)."""
    payload = b"not a model"
    header = make_header(
        snapshot_version=version,
        created_at_ms=0,
        training_step=0,
        watermark_ms=0,
        model_config={},
        payload=payload,
        key=b"attacker",
    )
    return SnapshotRecord(b"actor", payload, [(HEADER_NAME, encode(header))])


def pairs(*records: SnapshotRecord | None) -> list[tuple[list[tuple[str, bytes]] | None, bytes | None]]:
    return [(None, None) if r is None else (list(r.headers), r.value) for r in records]


# ------------------------------------------------------------------------ learner versions
def test_only_verified_records_count_for_the_learners_version() -> None:
    keys = snapshot_keys(OLD).accepted
    no_header = SnapshotRecord(b"actor", b"x", [])
    scan = scan_versions(pairs(rec(3), forged(INT64_MAX), None, no_header, rec(9, NEW)), keys)
    assert (scan.version, scan.verified, scan.unverified) == (3, 1, 3)  # the tombstone is neither
    # without the fix the forged header's version was taken: the next one (2**63) cannot be encoded
    assert scan_versions(pairs(forged(INT64_MAX)), keys).version == 0


def test_latest_version_scan_accepts_every_key_of_the_set() -> None:
    scan = scan_versions(pairs(rec(3, OLD), rec(4, NEW)), snapshot_keys(BOTH).accepted)
    assert (scan.version, scan.unverified) == (4, 0)


# ------------------------------------------------------------------------ key ids
def test_header_records_the_signing_key_id_and_nodes_pick_the_key_by_id() -> None:
    r = rec(1, NEW)
    header = decode_snapshot_header(header_of(r.headers))
    assert header.key_id == "new"
    assert (
        decode_snapshot(header_of(r.headers), r.value, snapshot_keys(BOTH).accepted)[0].snapshot_version == 1
    )
    with pytest.raises(SnapshotRejected, match="unknown key id 'new'"):
        decode_snapshot(header_of(r.headers), r.value, snapshot_keys(OLD).accepted)


def test_key_id_is_signed() -> None:
    r = rec(1, BOTH)  # signed by "old"
    relabelled = header_of(r.headers).replace(b'"key_id":"old"', b'"key_id":"new"')
    with pytest.raises(SnapshotRejected, match="signature"):
        decode_snapshot(relabelled, r.value, {"old": b"old-secret", "new": b"old-secret-2"})


def test_old_headers_without_key_id_decode_and_verify_against_any_accepted_key() -> None:
    assert SNAPSHOT_HEADER.key_id is None and b"key_id" not in encode(SNAPSHOT_HEADER)
    payload = b"example safetensors payload"
    verify_snapshot(SNAPSHOT_HEADER, payload, {"new": b"other", "default": EXAMPLE_HMAC_KEY})
    with pytest.raises(SchemaError, match="signature"):
        verify_snapshot(SNAPSHOT_HEADER, payload, {"new": b"other"})


def test_key_settings_single_key_maps_to_its_id_and_the_set_replaces_it() -> None:
    assert dict(snapshot_keys(Settings(snapshot_hmac_key="s3cret")).accepted) == {"default": b"s3cret"}
    assert snapshot_keys(OLD).signing() == ("old", b"old-secret")
    both = snapshot_keys(BOTH.replace(snapshot_hmac_key="ignored"))
    assert dict(both.accepted) == {"old": b"old-secret", "new": b"new-secret"}
    assert parse_keys("a:x:y, b:z") == {"a": b"x:y", "b": b"z"}
    for bad, match in [("a:x,a:y", "twice"), ("a", "no secret"), ("a:", "no secret"), ("a b:x", "key id")]:
        with pytest.raises(ValueError, match=match):
            parse_keys(bad)
    with pytest.raises(ValueError, match="snapshot_hmac_key_id 'gone'"):
        snapshot_keys(BOTH.replace(snapshot_hmac_key_id="gone")).signing()


def test_dev_key_is_refused_outside_dev_mode_naming_the_settings() -> None:
    for settings in (Settings(), Settings(snapshot_hmac_keys=f"a:{DEV_HMAC_KEY},b:real")):
        with pytest.raises(ValueError, match=r"PAPEREC_SNAPSHOT_HMAC_KEY.*PAPEREC_DEV_MODE=1"):
            snapshot_keys(settings)
        assert snapshot_keys(settings.replace(dev_mode=True)).uses_dev_key()
    assert not snapshot_keys(OLD).uses_dev_key()


def test_node_and_learner_refuse_the_dev_key_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from learner.service import LearnerService, LearnerServiceConfig
    from learner.training import PAPERecConfig
    from paperec.cli import main

    with pytest.raises(ValueError, match="PAPEREC_DEV_MODE"):
        Node(Settings(serve_metrics_clickhouse=False))
    with pytest.raises(ValueError, match="PAPEREC_DEV_MODE"):
        LearnerService(Settings(), LearnerServiceConfig(), PAPERecConfig())
    # the CLIs: exit 2 with the message, before touching Kafka
    for name in ("PAPEREC_DEV_MODE", "PAPEREC_SNAPSHOT_HMAC_KEY", "PAPEREC_SNAPSHOT_HMAC_KEYS"):
        monkeypatch.delenv(name, raising=False)
    for argv in (
        ["serve", "--kafka-bootstrap", "127.0.0.1:1"],
        ["learner", "--kafka-bootstrap", "127.0.0.1:1"],
    ):
        assert main(argv) == 2
        out = capsys.readouterr()
        assert "built-in development key" in out.out + out.err


# ------------------------------------------------------------------------ local snapshot store
def loader(store: SnapshotStore, settings: Settings = OLD) -> tuple[SnapshotLoader, ModelSlot, Instruments]:
    slot, m = ModelSlot(), Instruments()
    keys = snapshot_keys(settings).accepted
    return SnapshotLoader(slot, keys, m, store=store, default_exploration=Exploration(noise_std=0.1)), slot, m


def test_store_round_trip_is_atomic(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "node")
    assert store.load() is None  # nothing stored yet
    snap = StoredSnapshot(b'{"h":1}', b"payload")
    store.save(snap)
    store.save(dataclasses.replace(snap, payload=b"newer"))
    assert store.load() == StoredSnapshot(b'{"h":1}', b"newer")
    assert os.listdir(tmp_path / "node") == [FILE_NAME]  # no temp file left behind
    assert unpack(pack(snap)) == snap


@pytest.mark.parametrize(
    "damage", [b"", b"garbage", MAGIC + b"\x00\x00", MAGIC + (99).to_bytes(8, "big") + b"{}"]
)
def test_corrupt_store_file_is_set_aside_never_fatal(tmp_path: Path, damage: bytes) -> None:
    store = SnapshotStore(tmp_path)
    store.path.write_bytes(damage)
    ld, slot, _ = loader(store)
    assert ld.load_stored() is None and slot.current is None
    assert not store.path.exists() and (tmp_path / (FILE_NAME + ".rejected")).read_bytes() == damage


def test_loaded_snapshot_is_stored_and_served_at_the_next_start(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    ld, slot, _ = loader(store)
    ld.handle([FakeRecord.of(rec(5), 0)])
    assert slot.version() == 5 and store.load() is not None

    # restart on a compacted topic whose newest record is a replay of v3, then a tombstone, then
    # a forged header: the node stays on v5 from its store
    ld2, slot2, m2 = loader(store)
    assert ld2.load_stored() == 5 and slot2.version() == 5
    outcomes = ld2.handle(
        [FakeRecord.of(rec(3), 7), FakeRecord(8, b"actor", None, []), FakeRecord.of(forged(INT64_MAX), 9)]
    )
    assert [o.status for o in outcomes] == ["rejected", "tombstone", "skipped"]
    assert slot2.version() == 5 and m2.value("paperec_serving_snapshots_skipped_total") == 1
    # only a strictly newer verified version replaces it, on the slot and on disk
    ld2.handle([FakeRecord.of(rec(6), 10)])
    assert slot2.version() == 6 and decode_snapshot_header(store.load().header).snapshot_version == 6  # type: ignore[union-attr]


def test_stored_snapshot_is_verified_again_with_the_current_keys(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    ld, _, _ = loader(store, OLD)
    ld.handle([FakeRecord.of(rec(5, OLD), 0)])
    # the old key was removed (rotation done): the stored copy no longer verifies
    ld2, slot2, m2 = loader(store, NEW)
    assert ld2.load_stored() is None and slot2.current is None
    assert m2.value("paperec_serving_snapshots_rejected_total", reason="stored") == 1
    assert (tmp_path / (FILE_NAME + ".rejected")).exists() and not store.path.exists()


def test_tampered_store_file_is_not_served(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    r = rec(5)
    store.save(StoredSnapshot(header_of(r.headers), r.value[:-1] + bytes([r.value[-1] ^ 1])))
    ld, slot, _ = loader(store)
    assert ld.load_stored() is None and slot.current is None


async def test_node_serves_its_stored_snapshot_before_reading_the_topic(tmp_path: Path) -> None:
    settings = OLD.replace(
        serve_snapshot_dir=str(tmp_path), serve_metrics_clickhouse=False, serve_node_id="u"
    )
    SnapshotStore(tmp_path).save(StoredSnapshot(header_of(rec(7).headers), rec(7).value))
    topic = FakeSnapshotConsumer(settings.topic(TOPIC_SNAPSHOTS))
    topic.append(rec(2))  # what compaction left: an older snapshot
    node = Node(settings, make_producer=FakeProducer, make_consumer=lambda: topic, seed=0)
    await node.start()
    try:
        await asyncio.wait_for(node.snapshots.caught_up.wait(), 10)
        await asyncio.sleep(0.05)
        assert node.slot.version() == 7 and node.ready()
    finally:
        await node.stop()
