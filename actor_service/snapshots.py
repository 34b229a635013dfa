"""Hot-load: read every actor snapshot, verify it, build the model off the request path, swap it in.

Every node reads the whole compacted ``actor-snapshots`` topic itself: no consumer group, the
single partition assigned manually, read from the beginning on start (compaction keeps the
latest snapshot, so the node finds it there), then followed. A record is verified (checksum,
HMAC signature, schema version, finite weights, shapes: ``model.snapshot.decode_snapshot``)
and the model built on a dedicated loader thread; only then is the one model reference
swapped (:class:`ModelSlot`). An invalid snapshot is logged, counted by reason and ignored:
the previous model keeps serving.

Each loaded snapshot is also written to the node's local store (:mod:`actor_service.snapshot_store`)
and loaded from there at the next start, before the topic is read: a compacted topic whose newest
record is an older snapshot or a tombstone cannot roll a restarted node back.

In guarded rollout mode (:mod:`actor_service.model_slot`) a verified snapshot is *held*, not
served, until a rollout decision names it; the loader builds the newest version and any version
the latest decision names (the others of a catch-up batch are skipped unverified), and the store
keeps the node's incumbent (written when a decision makes a snapshot the incumbent), so a
restarted node finds the incumbent even once compaction has dropped its record. A decision naming
a version this node read past without building it makes the consumer read the topic again from
its start (:meth:`SnapshotConsumer.rescan`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from actor_service.follower import TopicFollower
from actor_service.instruments import Instruments
from actor_service.model_slot import ModelSlot, Served, check_servable, served_snapshot
from actor_service.snapshot_store import SnapshotStore, StoredSnapshot
from model.scoring import ActorModel
from model.snapshot import SNAPSHOT_KEY, SnapshotRejected, decode_snapshot, header_of
from schemas import Exploration, SchemaError, SnapshotHeader, decode_snapshot_header

log = logging.getLogger(__name__)

# Room on top of the largest snapshot message for the record batch framing and header.
FETCH_HEADROOM_BYTES = 1024 * 1024


class RecordLike(Protocol):
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # ms; the producer's CreateTime: "publication" of the snapshot
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Outcome:
    offset: int
    status: str  # "loaded", "rejected", "skipped", "tombstone"
    version: int | None = None
    reason: str = ""


def rejection_kind(message: str) -> str:
    """A small, fixed set of metric labels from a SnapshotRejected reason."""
    for needle, kind in (
        ("key_id", "unknown_key"),
        ("payload_sha256", "checksum"),
        ("payload_size", "checksum"),
        ("signature", "signature"),
        ("schema_version", "schema"),
        ("non-finite", "non_finite"),
        ("does not fit", "shape"),
        ("safetensors", "payload"),
        ("payload_format", "payload"),
        ("header", "header"),
    ):
        if needle in message:
            return kind
    return "other"


class SnapshotLoader:
    """Verifies snapshot records and offers the valid, newer ones to the slot (thread-safe use:
    one loader thread)."""

    def __init__(
        self,
        slot: ModelSlot,
        hmac_keys: bytes | Mapping[str, bytes],
        instruments: Instruments,
        clock: Callable[[], float] = time.time,
        store: SnapshotStore | None = None,
        *,
        default_exploration: Exploration,
    ) -> None:
        self.slot = slot
        # the node's serve_noise_std: for headers from before they recorded the learner's exploration
        self.default_exploration = default_exploration
        self.keys = hmac_keys  # one key, or the accepted keys by id
        self.m = instruments
        self.clock = clock
        self.store = store
        self.max_seen_version = 0  # the newest version read on the topic (built or not)

    def load_stored(self) -> int | None:
        """At start, before the topic: serve the snapshot this node stored last, verified again
        with the current keys (one that no longer verifies is set aside). Its version, or None."""
        if self.store is None:
            return None
        stored = self.store.load()
        if stored is None:
            return None
        try:
            header, model = decode_snapshot(stored.header, stored.payload, self.keys)
            check_servable(model)
        except (SnapshotRejected, ValueError) as exc:
            self.m.snapshots_rejected.labels("stored").inc()
            self.store.set_aside(f"does not verify with the current keys: {exc}")
            return None
        if not self.slot.offer(self._served(header, model)):
            return None
        self.m.snapshots_loaded.inc()
        log.info(
            "serving snapshot %d from the local store %s (training step %d); the topic replaces it "
            "only with a newer verified version",
            header.snapshot_version,
            self.store.path,
            header.training_step,
        )
        return header.snapshot_version

    def _served(self, header: SnapshotHeader, model: ActorModel, raw: StoredSnapshot | None = None) -> Served:
        return served_snapshot(header, model, self.default_exploration, raw)

    def _store(self, header_bytes: bytes, payload: bytes, version: int) -> None:
        if self.store is None:
            return
        try:
            self.store.save(StoredSnapshot(header_bytes, payload))
        except OSError as exc:  # a full or read-only disk must not stop serving
            log.error("could not store snapshot %d in %s: %s", version, self.store.directory, exc)

    def store_served(self, served: Served) -> None:
        """Guarded mode: store a new incumbent (on the loader thread: never delays serving)."""
        if served.raw is not None:
            self._store(served.raw.header, served.raw.payload, served.version)

    def handle(self, records: Sequence[RecordLike]) -> list[Outcome]:
        """Newest first: the first valid record newer than the served model is loaded and the
        older ones of the batch are not worth verifying (a catch-up batch may hold many). In
        guarded mode the older ones are read on: one the latest decision names is built too."""
        out: list[Outcome] = []
        for rec in sorted(records, key=lambda r: r.offset, reverse=True):
            outcome = self.handle_one(rec)
            out.append(outcome)
            if outcome.status == "loaded" and not self.slot.guarded:
                break
        return out

    def handle_one(self, rec: RecordLike) -> Outcome:
        if rec.value is None:
            return Outcome(rec.offset, "tombstone")
        if rec.key != SNAPSHOT_KEY:
            return self._reject(rec, None, f"record key {rec.key!r} is not {SNAPSHOT_KEY!r}", "key")
        try:
            header_bytes = header_of(list(rec.headers or ()))
            version = decode_snapshot_header(header_bytes).snapshot_version
        except (SnapshotRejected, SchemaError) as exc:
            return self._reject(rec, None, f"bad header: {exc}", "header")
        self.max_seen_version = max(self.max_seen_version, version)
        if not self.slot.wants(version):
            # Replay of the topic on start, or a duplicate: never roll back (guarded: held already,
            # rejected, or neither the newest nor named by a decision). The version is read before
            # verification; a forged one can only make this node skip, not load, a record.
            self.m.snapshots_skipped.inc()
            return Outcome(rec.offset, "skipped", version)
        started = time.perf_counter()
        try:
            header, model = decode_snapshot(header_bytes, rec.value, self.keys)
            check_servable(model)
        except SnapshotRejected as exc:
            return self._reject(rec, version, str(exc), rejection_kind(str(exc)))
        except ValueError as exc:
            return self._reject(rec, version, str(exc), "model")
        guarded = self.slot.guarded
        served = self._served(header, model, StoredSnapshot(header_bytes, rec.value) if guarded else None)
        if not self.slot.hold(served):
            self.m.snapshots_skipped.inc()
            return Outcome(rec.offset, "skipped", version)
        load_s = time.perf_counter() - started
        publish_to_served = max(0.0, self.clock() - rec.timestamp / 1000.0)
        self.m.snapshots_loaded.inc()
        self.m.snapshot_load_seconds.set(load_s)
        self.m.publish_to_served.observe(publish_to_served)
        log.info(
            "%s snapshot %d (offset %d, training step %d, exploration noise std %g, wide %g on "
            "%.0f%% of lists, uniform on %.0f%%%s): verified and built in %.0f ms, %.0f ms after publication",
            "holding (serves once a rollout decision names it)" if guarded else "serving",
            served.version,
            rec.offset,
            served.training_step,
            served.exploration.noise_std,
            served.exploration.wide_std,
            100 * served.exploration.wide_share,
            100 * served.exploration.uniform_share,
            "" if header.exploration is not None else " from serve_noise_std: the header records none",
            load_s * 1e3,
            publish_to_served * 1e3,
        )
        if not guarded:  # guarded: the incumbent is stored when a decision makes it one
            self._store(header_bytes, rec.value, served.version)  # after the swap: never delays serving
        return Outcome(rec.offset, "loaded", served.version)

    def _reject(self, rec: RecordLike, version: int | None, reason: str, kind: str) -> Outcome:
        self.m.snapshots_rejected.labels(kind).inc()
        log.error(
            "rejected snapshot at offset %d (version %s): %s; still serving version %s",
            rec.offset,
            version,
            reason,
            self.slot.version(),
        )
        return Outcome(rec.offset, "rejected", version, kind)


class SnapshotConsumer(TopicFollower):
    """The background task that follows the topic and feeds the loader (on its own thread)."""

    def __init__(
        self,
        loader: SnapshotLoader,
        make_consumer: Callable[[], Any],
        topic: str,
        max_backoff_s: float = 5.0,
        start_after: asyncio.Event | None = None,
        start_after_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(
            "snapshot consumer",
            make_consumer,
            topic,
            self._load,
            max_backoff_s,
            start_after,
            start_after_timeout_s,
        )
        self.loader = loader
        # Its own thread: verifying and building a model never waits behind, or holds up, scoring.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="snapshot-loader")

    async def _load(self, records: Sequence[RecordLike]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.loader.handle, records)

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn`` on the loader thread (after what it is doing): the store's writes."""
        with contextlib.suppress(RuntimeError):  # shut down: the node is stopping
            self._pool.submit(fn, *args)

    async def close(self) -> None:
        await super().close()
        self._pool.shutdown(wait=False, cancel_futures=True)
