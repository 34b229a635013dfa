"""The continuous learner: transitions topic -> replay buffer -> PAPERec steps -> actor snapshots.

Threads:
- main: :meth:`LearnerService.run` resumes, then runs :class:`learner.training_loop.TrainingLoop`
  steps (sample, ``Trainer.step``, and between steps snapshots, checkpoints and metrics);
- ``learner-ingest``: prepared chunks -> buffer (:mod:`learner.ingest`); the Kafka consumer,
  decoding and featurizing run in the ingest worker process (:mod:`learner.ingest_process`;
  ``--no-ingest-process`` keeps them on this thread);
- ``learner-publish``: sends encoded snapshots and waits for the broker's ack
  (:mod:`learner.publisher`);
- ``metrics-writer``: batched ClickHouse inserts (:mod:`learner.learner_metrics`).

The guarded rollout's control topic is followed from the main thread, between steps
(:mod:`learner.rollout_follow`): rejected versions are recorded, training goes on.

Clients are injected (:class:`LearnerClients`, as serving's ``Node`` takes its Kafka clients):
:func:`kafka_clients` builds the real ones from Settings, tests pass in-memory ones.

Delivery: a checkpoint holds the trainer, the buffer (rows + seen ids) and the consumed offsets,
captured together; the offsets are committed to Kafka only after the checkpoint file is durable.
A restart (:meth:`LearnerService.resume`) loads the newest checkpoint and reads on from its
offsets (the committed ones when there is no checkpoint): nothing before the last commit is read
again, and everything after it is. Snapshot versions continue above both the checkpoint's and
the newest verified one on the topic. SIGTERM (:meth:`LearnerService.request_stop`): stop
ingesting, publish a last snapshot, write a last checkpoint, commit, exit 0.
Numeric safety: see :mod:`learner.training_loop`. Data parallel (``--nproc``, torchrun): every
rank runs this service on its share of the partitions; rank 0 publishes, checkpoints and follows
the rollout; a resume loads rank 0's trainer on every rank and reads on from the committed offsets
(docs/learner_service.md, "Data-parallel learner").
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from base.settings import TOPIC_DEAD_LETTER, TOPIC_ROLLOUT, TOPIC_SNAPSHOTS, TOPIC_TRANSITIONS, Settings
from learner import distributed
from learner.checkpoint import CheckpointStore
from learner.ingest import ChunkSource, Ingestor, IngestStats, PreparingSource
from learner.ingest_process import ProcessSource, SourceFactory
from learner.kafka_io import CommitAfterFlush, KafkaDeadLetters, KafkaSource
from learner.learner_metrics import LearnerMetrics, clickhouse_writer
from learner.publisher import GlobalWeights, PublishResult, SnapshotPublisher, VersionScan, latest_version
from learner.replay_buffer import ReplayBuffer
from learner.rollout_follow import KafkaDecisionSource, RolloutFollower
from learner.training import PAPERecConfig, Trainer
from learner.training_loop import TrainingLoop, observe_publish
from model.runtime import default_device, training_threads
from model.snapshot_keys import snapshot_keys

log = logging.getLogger(__name__)


@dataclass
class LearnerServiceConfig:
    batch_size: int = 256
    """transitions (lists) per training step"""
    buffer_capacity: int = 50_000
    """replay buffer capacity in transitions; when full the oldest is overwritten (FIFO)"""
    seen_ids: int = 0
    """dedup horizon: transition ids remembered (0 = 4 x buffer_capacity; never below capacity)"""
    min_buffer: int = 1_000
    """transitions in the buffer before training starts"""
    max_replay_ratio: float = 0.0
    """train on at most this many sampled transitions per ingested one (0 = train continuously)"""
    snapshot_every_steps: int = 500
    """publish an actor snapshot every this many training steps (0 = not by step count)"""
    snapshot_every_s: float = 10.0
    """also publish when this many seconds passed since the last one and it trained since (0 = off);
    short by default: serving freshness (click -> served snapshot) is bounded by it"""
    checkpoint_every_s: float = 120.0
    """seconds between checkpoints (offsets are committed after each one)"""
    checkpoint_keep: int = 2
    """checkpoint files kept (newest first)"""
    checkpoint_buffer: bool = True
    """checkpoints hold the buffer rows (else only its metadata: a restart starts with an empty buffer)"""
    ingest_chunk: int = 256
    """records decoded and featurized as one chunk (one transition_batch call, one ring write)"""
    ingest_max_rate: float = 0.0
    """cap on records ingested per second (0 = as fast as they come)"""
    ingest_process: bool = True
    """decode and featurize in a worker process (keeps the GIL free for training); off: on a thread"""
    ingest_nice: int = 10
    """niceness of the ingestion worker (Linux): under CPU contention training gets priority (0 = equal)"""
    torch_threads: int = 0
    """torch intra-op CPU threads of the training loop (0 = auto: CPU cores, less one for the
    ingest process when it trains on CPU)"""
    metrics_interval_s: float = 5.0
    """seconds between metric rows (means over the interval)"""
    metrics_clickhouse: bool = True
    """write metrics to ClickHouse's learner_metrics table"""
    metrics_source: str = ""
    """the ``source`` column of the metric rows (default: learner:<hostname>, /rank<r> appended in a
    data-parallel job)"""
    log_every_s: float = 10.0
    """seconds between progress log lines"""
    max_steps: int = 0
    """stop cleanly after this many training steps in total (0 = run until SIGTERM)"""
    nproc: int = 1
    """data-parallel ranks started on this machine (torch.distributed, gloo on CPU, NCCL on CUDA;
    batch_size lists per rank); 1 = one process, no process group; ignored under torchrun"""
    collective_timeout_s: float = 60.0
    """data parallel: a collective that waits longer than this for another rank fails (the job stops)"""


PublisherFactory = Callable[[int, Callable[[PublishResult], None]], SnapshotPublisher]
"""Opens the snapshot publisher: its first version, and what to call with each result."""


@dataclass
class LearnerClients:
    """Everything the service talks to outside its process, injected."""

    records: SourceFactory
    """the transitions, read from the given offsets (None: the group's committed ones); picklable,
    since the ingest worker process builds it"""
    dead_letters: Callable[[], KafkaDeadLetters]
    """opens the dead-letter producer"""
    snapshot_versions: Callable[[], VersionScan]
    """scans the snapshot topic for the newest verified version (versions continue above it)"""
    publisher: PublisherFactory
    metrics_writer: Callable[[], Any | None]
    """opens the metric rows' writer (None: metrics for the log lines only)"""
    checkpoints: CheckpointStore
    rollout: Callable[[], RolloutFollower | None] = lambda: None
    """opens the follower of the rollout's control topic (None: not followed)"""


def kafka_clients(settings: Settings, cfg: LearnerServiceConfig, train_cfg: PAPERecConfig) -> LearnerClients:
    """The real clients: Kafka topics of ``settings``, ClickHouse metrics, local checkpoints.

    Raises ValueError (naming the setting) for a missing or dev snapshot key outside dev mode:
    at construction, not later in ``run``.
    """
    s = settings
    keys = snapshot_keys(s)
    key_id, key = keys.signing()
    snapshot_topic = s.topic(TOPIC_SNAPSHOTS)

    def publisher(first_version: int, on_result: Callable[[PublishResult], None]) -> SnapshotPublisher:
        return SnapshotPublisher(
            s,
            snapshot_topic,
            key,
            s.max_message_bytes,
            first_version=first_version,
            on_result=on_result,
            key_id=key_id,
            exploration=train_cfg.exploration(),
        )

    rank, world = distributed.rank(), distributed.world_size()
    return LearnerClients(
        # data parallel: this rank's share of the partitions (p % world == rank)
        records=partial(
            KafkaSource, s, s.topic(TOPIC_TRANSITIONS), s.learner_group_id, rank=rank, world_size=world
        ),
        dead_letters=lambda: KafkaDeadLetters(s, s.topic(TOPIC_DEAD_LETTER)),
        snapshot_versions=lambda: latest_version(s, snapshot_topic, keys.accepted),
        publisher=publisher,
        metrics_writer=lambda: clickhouse_writer(s) if cfg.metrics_clickhouse else None,
        checkpoints=CheckpointStore(s.learner_checkpoint_path, cfg.checkpoint_keep),
        # rank 0 publishes and checkpoints: only it keeps the rollout ledger
        rollout=(lambda: RolloutFollower(KafkaDecisionSource(s, s.topic(TOPIC_ROLLOUT)), keys.accepted))
        if rank == 0
        else (lambda: None),
    )


def default_metrics_source() -> str:
    """``learner:<hostname>``, and ``/rank<r>`` in a data-parallel job (each rank writes its rows)."""
    rank = f"/rank{distributed.rank()}" if distributed.active() else ""
    return f"learner:{socket.gethostname()}{rank}"


@dataclass
class Resumed:
    """Where a run starts: the newest checkpoint's state, or a fresh start."""

    trainer: Trainer
    buffer: ReplayBuffer
    offsets: dict[int, int] | None  # the checkpoint's positions (None: the committed offsets)
    snapshot_version: int  # the last version the checkpoint handed out (0: none)
    watermark_ms: int
    ingest_stats: IngestStats
    checkpoint: Path | None = None
    rollout: dict[str, Any] | None = None  # global weights and rollout ledger (None: older checkpoint)


class LearnerService:
    def __init__(
        self,
        settings: Settings,
        cfg: LearnerServiceConfig,
        train_cfg: PAPERecConfig,
        clients: LearnerClients | None = None,
    ) -> None:
        self.settings, self.cfg, self.train_cfg = settings, cfg, train_cfg
        self.clients = clients or kafka_clients(settings, cfg, train_cfg)
        self.stop_event = threading.Event()
        self.topic = settings.topic(TOPIC_TRANSITIONS)
        self.dead_letters: KafkaDeadLetters  # opened by start()

    def request_stop(self) -> None:
        """SIGTERM: stop after the current step, cleanly."""
        self.stop_event.set()

    def run(self) -> int:
        cfg = self.cfg
        threads = training_threads(
            cfg.torch_threads, default_device(self.train_cfg.device), cfg.ingest_process
        )
        if cfg.torch_threads <= 0 and distributed.active():
            # auto: the ranks on this machine share its cores (torchrun's LOCAL_WORLD_SIZE, else all)
            local = int(os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size()))
            threads = max(1, threads // local)
        torch.set_num_threads(threads)
        store = self.clients.checkpoints
        lead = distributed.rank() == 0  # data parallel: rank 0 writes the checkpoints
        if lead:
            store.lock()  # one learner (job) per checkpoint directory
        try:
            loop = self.start(self.resume())
            clean = False
            try:
                # data parallel: a stop requested on one rank stops every rank at the same step
                while not distributed.any_rank(self.stop_event.is_set()):
                    outcome = loop.step()
                    if outcome.finished:
                        break
                    if outcome.wait_s > 0:
                        self.stop_event.wait(outcome.wait_s)
                clean = True
            finally:
                self.shutdown(loop, clean)
        finally:
            store.unlock()
        return 0

    # ------------------------------------------------------------------ resume
    def resume(self) -> Resumed:
        """The trainer and the buffer, from the newest checkpoint when there is one."""
        cfg, tcfg = self.cfg, self.train_cfg
        trainer = Trainer(tcfg)
        buffer = ReplayBuffer(
            tcfg.ranker,
            cfg.buffer_capacity,
            device=trainer.device,
            seed=tcfg.seed + distributed.rank(),  # data parallel: ranks sample independently
            seen_capacity=cfg.seen_ids,
        )
        log.info(
            "replay buffer: %d rows x list %d, %.1f MB on %s",
            buffer.capacity,
            buffer.list_len,
            buffer.nbytes / 1e6,
            buffer.device,
        )
        found = self.clients.checkpoints.load_latest()
        if found is None:
            return Resumed(trainer, buffer, None, 0, 0, IngestStats())
        path, state = found
        if state["offsets"]["topic"] != self.topic:
            raise RuntimeError(
                f"checkpoint {path} is for topic {state['offsets']['topic']}, this learner reads "
                f"{self.topic}: use another --learner-checkpoint-dir"
            )
        if distributed.active():
            # every rank loads the trainer of rank 0's checkpoint; rank 0's buffer and positions
            # are its share only: each rank starts empty at its partitions' committed offsets
            # (committed after that checkpoint was durable), whatever the world size that wrote it
            trainer.load_state_dict(state["trainer"])
            log.info(
                "resume (rank %d of %d): checkpoint %s step=%d, buffer empty, committed offsets",
                *(distributed.rank(), distributed.world_size(), path.name, trainer.num_steps),
            )
            return Resumed(
                trainer,
                buffer,
                None,
                int(state["snapshot_version"]),
                int(state["watermark_ms"]),
                IngestStats(),
                checkpoint=path,
                rollout=state.get("rollout"),
            )
        trainer.load_state_dict(state["trainer"])
        buffer.load_state_dict(state["buffer"])
        resumed = Resumed(
            trainer,
            buffer,
            offsets={int(p): int(o) for p, o in state["offsets"]["positions"].items()},
            snapshot_version=int(state["snapshot_version"]),
            watermark_ms=int(state["watermark_ms"]),
            ingest_stats=IngestStats(**state["ingest"]),
            checkpoint=path,
            rollout=state.get("rollout"),
        )
        log.info(
            "resume: checkpoint %s step=%d buffer=%d snapshot_version=%d offsets=%s",
            path.name,
            trainer.num_steps,
            len(buffer),
            resumed.snapshot_version,
            resumed.offsets,
        )
        return resumed

    # ------------------------------------------------------------------ start, shut down
    def start(self, resumed: Resumed) -> TrainingLoop:
        """Open the clients (the source at the resumed offsets), start ingesting: the loop."""
        cfg, tcfg, c = self.cfg, self.train_cfg, self.clients
        source = self._open_source(resumed)
        log.info("consuming %s from positions %s", self.topic, source.start_positions())
        metrics = LearnerMetrics(
            cfg.metrics_source or default_metrics_source(),
            c.metrics_writer(),
            cfg.metrics_interval_s,
        )
        dead_letters = self.dead_letters = c.dead_letters()
        ingestor = Ingestor(
            source,
            resumed.buffer,
            tcfg.ranker,
            dead_letters,
            chunk_size=cfg.ingest_chunk,
            max_rate=cfg.ingest_max_rate,
            nice=cfg.ingest_nice,
            stats=resumed.ingest_stats,
        )
        on_topic = c.snapshot_versions()
        if on_topic.unverified:
            metrics.gauge("snapshot_topic_unverified", float(on_topic.unverified))
        publisher = c.publisher(
            max(resumed.snapshot_version, on_topic.version) + 1, partial(observe_publish, metrics)
        )
        log.info(
            "snapshot versions continue at %d (checkpoint %d, topic %d; %d unverified records on the "
            "topic ignored); signing with key id %r",
            publisher.next_version,
            resumed.snapshot_version,
            on_topic.version,
            on_topic.unverified,
            publisher.key_id,
        )
        global_weights, rollout = GlobalWeights(), c.rollout()
        if resumed.rollout is not None:
            global_weights.load_state_dict(resumed.rollout["global_weights"])
            if rollout is not None:
                rollout.ledger.load_state_dict(resumed.rollout["ledger"])
                log.info("rollout: rejected versions so far %s", rollout.ledger.rejected or "none")
        loop = TrainingLoop(
            cfg,
            resumed.trainer,
            resumed.buffer,
            ingestor,
            publisher,
            metrics,
            c.checkpoints,
            CommitAfterFlush(dead_letters, ingestor.request_commit),
            self.topic,
            resumed.watermark_ms,
            global_weights=global_weights,
            rollout=rollout,
        )
        ingestor.start()
        return loop

    def _open_source(self, resumed: Resumed) -> ChunkSource:
        cfg, ranker = self.cfg, self.train_cfg.ranker
        if cfg.ingest_process:
            return ProcessSource(
                self.clients.records,
                ranker,
                resumed.offsets,
                chunk_size=cfg.ingest_chunk,
                nice=cfg.ingest_nice,
            )
        return PreparingSource(self.clients.records(resumed.offsets), ranker, resumed.buffer.unseen)

    def shutdown(self, loop: TrainingLoop, clean: bool) -> None:
        """Stop ingesting; after a clean stop a last snapshot and checkpoint; commit; close."""
        log.info("stopping (clean=%s) at step %d", clean, loop.trainer.num_steps)
        loop.ingestor.stop()
        if clean:
            loop.finish()
        loop.ingestor.close()  # commits what the last checkpoint holds
        loop.publisher.close()
        if loop.rollout is not None:
            loop.rollout.close()
        self.dead_letters.close()
        loop.observe_state()
        loop.metrics.close()
        log.info("stopped at step %d; last snapshot v%d", loop.trainer.num_steps, loop.publisher.last_version)
