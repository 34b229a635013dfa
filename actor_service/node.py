"""One serving node: the served model slot, the scoring worker, the impression logger, the
snapshot consumer, the rollout decision consumer (guarded mode) and the metrics exporter, with
their start/stop order.

Scoring runs torch on a single worker thread, never on the event loop, so ``/healthz`` and
``/metrics`` answer while a list is being scored; torch gets ``serve_torch_threads`` intra-op
threads (1 by default: the event loop needs the other core of a small machine).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from actor_service.arms import check_share, parse_weights
from actor_service.auth import bearer_auth
from actor_service.batcher import MicroBatcher
from actor_service.decisions import DecisionApplier, DecisionConsumer
from actor_service.impressions import ImpressionLogger, Producer
from actor_service.instruments import ClickHouseExporter, Instruments, NodeState
from actor_service.model_slot import ArmSettings, ModelSlot, Served, cold_start_model
from actor_service.overload import Admission, ScoringCost
from actor_service.snapshot_store import SnapshotStore
from actor_service.snapshots import FETCH_HEADROOM_BYTES, SnapshotConsumer, SnapshotLoader
from base import kafka as kafka_clients
from base.settings import TOPIC_IMPRESSIONS, TOPIC_ROLLOUT, TOPIC_SNAPSHOTS, Settings
from base.topics import EVENT_MAX_MESSAGE_BYTES
from model.snapshot_keys import snapshot_keys
from schemas import MAX_ITEMS, Exploration

log = logging.getLogger(__name__)

COLD_START_POLICIES = ("random", "refuse")
ROLLOUT_MODES = ("direct", "guarded")
HELD_SNAPSHOTS = 8
"""guarded mode: most verified snapshots a node holds (the incumbent and candidate always among them)"""


def check_settings(s: Settings) -> None:
    """Reject serving settings that cannot work, naming the setting."""
    if s.serve_cold_start not in COLD_START_POLICIES:
        raise ValueError(f"serve_cold_start must be one of {COLD_START_POLICIES}, got {s.serve_cold_start!r}")
    if not 1 <= s.serve_max_items <= MAX_ITEMS:
        raise ValueError(f"serve_max_items must be in 1..{MAX_ITEMS} (the impression schema's limit)")
    if s.serve_max_body_bytes < 1024:
        raise ValueError("serve_max_body_bytes must be at least 1024")
    if s.serve_noise_std < 0:
        raise ValueError("serve_noise_std must be >= 0")
    if s.serve_torch_threads < 1 or s.serve_max_batch < 1:
        raise ValueError("serve_torch_threads and serve_max_batch must be >= 1")
    if s.serve_impression_buffer < 1 or s.serve_impression_buffer_bytes < 1:
        raise ValueError("serve_impression_buffer and serve_impression_buffer_bytes must be >= 1")
    if s.serve_max_in_flight < 1 or s.serve_request_deadline_ms < 0 or s.serve_max_queue_wait_ms < 0:
        raise ValueError(
            "serve_max_in_flight must be >= 1, serve_request_deadline_ms and serve_max_queue_wait_ms >= 0"
        )
    arm_settings(s)


def arm_settings(s: Settings) -> ArmSettings:
    """The node's rollout arm settings, checked (ValueError naming the setting)."""
    if s.rollout not in ROLLOUT_MODES:
        raise ValueError(f"rollout must be one of {ROLLOUT_MODES}, got {s.rollout!r}")
    check_share("holdout_share", s.holdout_share)
    if s.holdout_share >= 1.0:
        raise ValueError("holdout_share must be < 1 (a holdout of everyone leaves nothing to personalize)")
    return ArmSettings(s.holdout_share, s.holdout_salt, parse_weights("holdout_weights", s.holdout_weights))


def node_id(s: Settings) -> str:
    return s.serve_node_id or f"{socket.gethostname()}:{s.serve_port}"


class Node:
    def __init__(
        self,
        settings: Settings,
        *,
        make_producer: Callable[[], Producer] | None = None,
        make_consumer: Callable[[], Any] | None = None,
        make_decision_consumer: Callable[[], Any] | None = None,
        seed: int | None = None,
    ) -> None:
        check_settings(settings)
        self.settings = settings
        # None when no token is set; raises ValueError (naming the setting) on a bad token or file.
        self.auth = bearer_auth(settings)
        self.node_id = node_id(settings)
        self.guarded = settings.rollout == "guarded"
        self.slot = ModelSlot(
            guarded=self.guarded,
            arms=arm_settings(settings),
            capacity=HELD_SNAPSHOTS,
            on_incumbent=self._store_incumbent,
        )
        self.m = Instruments(
            NodeState(
                snapshot_version=self.slot.version,
                snapshot_created_at_ms=self.slot.created_at_ms,
                ready=self.ready,
                cold_start=lambda: None if self.slot.current is None else self.slot.current.cold_start,
                candidate_version=self.slot.candidate_version,
                canary_share=self._canary_share,
                snapshots_held=lambda: len(self.slot.held_versions()) if self.guarded else None,
            )
        )
        self.scorer = ThreadPoolExecutor(1, thread_name_prefix="scorer")
        # Exploration noise: drawn only on the scorer thread, from a per-node stream.
        self.generator = torch.Generator().manual_seed(
            int.from_bytes(os.urandom(8), "little") if seed is None else seed
        )
        cost = ScoringCost()  # measured by the batcher, read by admission
        # Snapshots explore as their header says; this is for the cold-start model and old headers.
        self.default_exploration = Exploration(noise_std=settings.serve_noise_std)
        self.batcher = MicroBatcher(
            self.scorer,
            self.generator,
            max_lists=settings.serve_max_batch,
            max_queue=settings.serve_max_in_flight,  # admission already bounds it; bounded here too
            deadline_s=settings.serve_request_deadline_ms / 1000 or None,  # 0: no deadline
            lifo_after_s=settings.serve_max_queue_wait_ms / 1000,  # newest first past the budget
            cost=cost,
        )
        self.admission = Admission(
            settings.serve_max_in_flight, settings.serve_max_queue_wait_ms / 1000, cost
        )
        self.impressions = ImpressionLogger(
            make_producer or self._producer,
            settings.topic(TOPIC_IMPRESSIONS),
            self.m,
            max_records=settings.serve_impression_buffer,
            max_bytes=settings.serve_impression_buffer_bytes,
            max_message_bytes=EVENT_MAX_MESSAGE_BYTES,
        )
        # snapshot_keys raises ValueError (naming the setting) on the dev key outside dev mode.
        self.loader = SnapshotLoader(
            self.slot,
            snapshot_keys(settings).accepted,
            self.m,
            store=SnapshotStore(settings.serve_snapshot_path(self.node_id)),
            default_exploration=self.default_exploration,
        )
        # Guarded: the control topic is read first, so the snapshot catch-up knows which older
        # versions the latest decision names (the others it skips unverified).
        self.decisions: DecisionConsumer | None = None
        if self.guarded:
            applier = DecisionApplier(
                self.slot, snapshot_keys(settings).accepted, self.m, on_unheld=self._unheld
            )
            self.decisions = DecisionConsumer(
                applier,
                make_decision_consumer or make_consumer or self._consumer,
                settings.topic(TOPIC_ROLLOUT),
            )
        self._rescanned: set[int] = set()
        self.snapshots = SnapshotConsumer(
            self.loader,
            make_consumer or self._consumer,
            settings.topic(TOPIC_SNAPSHOTS),
            start_after=None if self.decisions is None else self.decisions.caught_up,
            start_after_timeout_s=settings.serve_startup_timeout_s,
        )
        self.exporter: ClickHouseExporter | None = None
        self._export_task: asyncio.Task[None] | None = None
        self._ready_deadline = float("inf")

    # ------------------------------------------------------------------ Kafka clients
    def _producer(self) -> Producer:
        return kafka_clients.aio_producer(
            self.settings,
            client_id=f"paperec-serve-{self.node_id}",
            acks="all",
            linger_ms=5,
            max_batch_size=256 * 1024,
            max_request_size=EVENT_MAX_MESSAGE_BYTES,
            request_timeout_ms=15_000,
        )

    def _consumer(self) -> Any:
        fetch = self.settings.max_message_bytes + FETCH_HEADROOM_BYTES
        return kafka_clients.aio_consumer(
            self.settings,
            client_id=f"paperec-serve-{self.node_id}",
            group_id=None,  # every node reads every snapshot
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=fetch,
            max_partition_fetch_bytes=fetch,
            fetch_max_wait_ms=200,
            request_timeout_ms=15_000,
        )

    # ------------------------------------------------------------------ rollout
    def _canary_share(self) -> float | None:
        routing = self.slot.routing
        return None if routing is None or not self.guarded else routing.canary_share

    def _store_incumbent(self, served: Served) -> None:
        """Guarded: a decision made ``served`` the incumbent; keep it for the next start."""
        self.snapshots.submit(self.loader.store_served, served)

    def _unheld(self, unheld: dict[str, int]) -> None:
        """A decision names versions this node does not hold: read the snapshot topic again if it
        has already read past one of them (once per version; a newer one is still to come)."""
        missed = {v for v in unheld.values() if v <= self.loader.max_seen_version} - self._rescanned
        if missed:
            self._rescanned |= missed
            log.warning(
                "decision names snapshot(s) %s read past unbuilt: reading the topic again", sorted(missed)
            )
            self.snapshots.rescan()

    # ------------------------------------------------------------------ lifecycle
    def ready(self) -> bool:
        """Serving when a model is in the slot and the snapshot topic was read to its end (so a
        restarted node does not briefly serve an old model), and in guarded mode the control
        topic too (so it applies the latest decision first), or the startup timeout passed."""
        if self.slot.current is None:
            return False
        if time.monotonic() >= self._ready_deadline:
            return True
        decided = self.decisions is None or self.decisions.caught_up.is_set()
        return decided and self.snapshots.caught_up.is_set()

    async def start(self) -> None:
        s = self.settings
        torch.set_num_threads(s.serve_torch_threads)
        loop = asyncio.get_running_loop()
        if s.serve_cold_start == "random":
            served = await loop.run_in_executor(
                self.scorer,
                cold_start_model,
                s.serve_cold_start_seed,
                self.default_exploration,
                s.serve_cold_start_config,
            )
            self.slot.offer(served)
        # The last snapshot this node verified, before the topic: the topic's newest record may be
        # an older snapshot or a tombstone once compacted, and must not roll the node back.
        await loop.run_in_executor(self.scorer, self.loader.load_stored)
        self._ready_deadline = time.monotonic() + s.serve_startup_timeout_s
        if self.decisions is not None:
            self.decisions.start()
        self.snapshots.start()
        self.impressions.start()
        if s.serve_metrics_clickhouse:
            from base.metrics_store import client

            self.exporter = ClickHouseExporter(
                self.m,
                lambda: client(s, s.clickhouse_database),
                "serving_metrics",
                f"actor:{self.node_id}",
                s.serve_metrics_interval_s,
            )
            self._export_task = asyncio.create_task(self.exporter.run(), name="metrics-export")
        log.info(
            "node %s: cold start %s, exploration noise std: the snapshot header's (%g for the cold-start "
            "model and headers without one), max %d items, topics %s / %s; rollout %s%s, holdout share %g",
            self.node_id,
            s.serve_cold_start,
            s.serve_noise_std,
            s.serve_max_items,
            s.topic(TOPIC_SNAPSHOTS),
            s.topic(TOPIC_IMPRESSIONS),
            s.rollout,
            f" (decisions on {s.topic(TOPIC_ROLLOUT)})" if self.guarded else "",
            s.holdout_share,
        )

    async def stop(self) -> None:
        if self.decisions is not None:
            await self.decisions.close()
        await self.snapshots.close()
        await self.impressions.close(timeout_s=5.0)
        if self._export_task is not None:
            self._export_task.cancel()
        if self.exporter is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.exporter.close, 2.0)
        self.scorer.shutdown(wait=True, cancel_futures=True)
