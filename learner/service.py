"""The continuous learner: transitions topic -> replay buffer -> PAPERec steps -> actor snapshots.

Threads:
- main (this loop): samples a batch from the replay buffer, runs ``Trainer.step``, and between
  steps encodes snapshots, writes checkpoints and aggregates metrics;
- ``learner-ingest``: prepared chunks -> buffer (:mod:`learner.ingest`); the Kafka consumer,
  decoding and featurizing run in the ``paperec-learner-ingest`` worker process
  (:mod:`learner.ingest_process`; ``--no-ingest-process`` keeps them on this thread);
- ``learner-publish``: sends encoded snapshots and waits for the broker's ack
  (:mod:`learner.publisher`);
- ``metrics-writer``: batched ClickHouse inserts (:mod:`learner.learner_metrics`).

Delivery: a checkpoint holds the trainer, the buffer (rows + seen ids) and the consumed offsets,
captured together; the offsets are committed to Kafka only after the checkpoint file is durable.
A restart loads the newest checkpoint and seeks to its offsets (the committed ones when there is
no checkpoint): nothing before the last commit is read again, and everything after it is.
SIGTERM: stop ingesting, publish a last snapshot, write a last checkpoint, commit, exit 0.

Numeric safety (docs/hardening.md): ``Trainer.step`` refuses a batch with a non-finite input,
loss or gradient (no optimizer steps at all; counted as ``nonfinite_steps_total``), and the loop
then quarantines the batch's non-finite rows in the buffer (``quarantined_total``). Before every
snapshot and checkpoint the weights are checked (:class:`learner.numeric.FiniteGuard`): non-finite
ones are never published or saved; the trainer goes back to its last good state and training
goes on (``nonfinite_weights_refused_total``); snapshot versions keep rising.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from base.settings import TOPIC_DEAD_LETTER, TOPIC_SNAPSHOTS, TOPIC_TRANSITIONS, Settings
from learner.checkpoint import CheckpointStore
from learner.ingest import Ingestor, IngestStats, RecordSource
from learner.ingest_process import ProcessSource
from learner.kafka_io import CommitAfterFlush, KafkaDeadLetters, KafkaSource
from learner.learner_metrics import LearnerMetrics, clickhouse_writer, weight_stats
from learner.numeric import FiniteGuard
from learner.publisher import PublishResult, SnapshotPublisher, latest_version
from learner.replay_buffer import ReplayBuffer
from learner.training import PAPERecConfig, PAPERecStrategy, Trainer
from model.config import config_to_dict
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
    """the ``source`` column of the metric rows (default: learner:<hostname>)"""
    log_every_s: float = 10.0
    """seconds between progress log lines"""
    max_steps: int = 0
    """stop cleanly after this many training steps in total (0 = run until SIGTERM)"""


class LearnerService:
    def __init__(
        self,
        settings: Settings,
        cfg: LearnerServiceConfig,
        train_cfg: PAPERecConfig,
    ) -> None:
        self.settings, self.cfg, self.train_cfg = settings, cfg, train_cfg
        # Here, not in run(): a missing or dev key fails at start (ValueError naming the setting).
        self.keys = snapshot_keys(settings)
        self.signing_key_id, self.signing_key = self.keys.signing()
        self.stop_event = threading.Event()
        self.topic = settings.topic(TOPIC_TRANSITIONS)

    def request_stop(self) -> None:
        self.stop_event.set()

    def run(self) -> int:
        s, cfg, tcfg = self.settings, self.cfg, self.train_cfg
        threads = training_threads(cfg.torch_threads, default_device(tcfg.device), cfg.ingest_process)
        torch.set_num_threads(threads)

        # 1. models and buffer, then the newest checkpoint if any
        trainer = Trainer(tcfg)
        buffer = ReplayBuffer(
            tcfg.ranker,
            cfg.buffer_capacity,
            device=trainer.device,
            seed=tcfg.seed,
            seen_capacity=cfg.seen_ids,
        )
        log.info(
            "replay buffer: %d rows x list %d, %.1f MB on %s",
            buffer.capacity,
            buffer.list_len,
            buffer.nbytes / 1e6,
            buffer.device,
        )
        store = CheckpointStore(s.learner_checkpoint_path, cfg.checkpoint_keep)
        store.lock()  # one learner per checkpoint directory
        start_offsets: dict[int, int] | None = None
        ckpt_version, watermark_ms, ingest_stats = 0, 0, IngestStats()
        resumed = store.load_latest()
        if resumed is not None:
            path, state = resumed
            if state["offsets"]["topic"] != self.topic:
                raise RuntimeError(
                    f"checkpoint {path} is for topic {state['offsets']['topic']}, this learner reads "
                    f"{self.topic}: use another --learner-checkpoint-dir"
                )
            trainer.load_state_dict(state["trainer"])
            buffer.load_state_dict(state["buffer"])
            start_offsets = {int(p): int(o) for p, o in state["offsets"]["positions"].items()}
            ckpt_version, watermark_ms = int(state["snapshot_version"]), int(state["watermark_ms"])
            ingest_stats = IngestStats(**state["ingest"])
            log.info(
                "resume: checkpoint %s step=%d buffer=%d snapshot_version=%d offsets=%s",
                path.name,
                trainer.num_steps,
                len(buffer),
                ckpt_version,
                start_offsets,
            )

        # 2. Kafka: consumer at the checkpoint's (else the committed) offsets, dead letters, snapshots
        source: RecordSource
        if cfg.ingest_process:
            source = ProcessSource(
                partial(KafkaSource, s.kafka_bootstrap, self.topic, s.learner_group_id),
                tcfg.ranker,
                start_offsets,
                chunk_size=cfg.ingest_chunk,
                nice=cfg.ingest_nice,
            )
        else:
            source = KafkaSource(s.kafka_bootstrap, self.topic, s.learner_group_id, start_offsets)
        log.info("consuming %s from positions %s", self.topic, source.start_positions())
        metrics = LearnerMetrics(
            cfg.metrics_source or f"learner:{socket.gethostname()}",
            clickhouse_writer(s) if cfg.metrics_clickhouse else None,
            cfg.metrics_interval_s,
        )
        dead_letters = KafkaDeadLetters(s.kafka_bootstrap, s.topic(TOPIC_DEAD_LETTER))
        ingestor = Ingestor(
            source,
            buffer,
            tcfg.ranker,
            dead_letters,
            chunk_size=cfg.ingest_chunk,
            max_rate=cfg.ingest_max_rate,
            nice=cfg.ingest_nice,
            stats=ingest_stats,
        )
        snapshot_topic = s.topic(TOPIC_SNAPSHOTS)
        on_topic = latest_version(s.kafka_bootstrap, snapshot_topic, self.keys.accepted)
        if on_topic.unverified:
            metrics.gauge("snapshot_topic_unverified", float(on_topic.unverified))
        publisher = SnapshotPublisher(
            s.kafka_bootstrap,
            snapshot_topic,
            self.signing_key,
            s.max_message_bytes,
            first_version=max(ckpt_version, on_topic.version) + 1,
            on_result=lambda r: _observe_publish(metrics, r),
            key_id=self.signing_key_id,
        )
        log.info(
            "snapshot versions continue at %d (checkpoint %d, topic %d; %d unverified records on the "
            "topic ignored); signing with key id %r",
            publisher.next_version,
            ckpt_version,
            on_topic.version,
            on_topic.unverified,
            self.signing_key_id,
        )
        can_snapshot = isinstance(trainer.strategy, PAPERecStrategy)
        if not can_snapshot:
            log.warning("strategy %s has no weight generator: no snapshots are published", tcfg.strategy)

        # never checkpoint or publish non-finite weights: the guard restores the last good state
        guard = FiniteGuard(trainer)

        def checkpoint() -> None:
            start = time.perf_counter()
            guard.verify("checkpoint")  # non-finite: the last good state is what gets saved
            buffer_state, positions, stats = ingestor.checkpoint_state(cfg.checkpoint_buffer)
            state: dict[str, Any] = {
                "trainer": trainer.state_dict(),
                "buffer": buffer_state,
                "offsets": {"topic": self.topic, "positions": positions},
                "ingest": dataclasses.asdict(stats),
                "snapshot_version": publisher.last_version,
                "watermark_ms": watermark_ms,
                "service": config_to_dict(cfg),
                "created_at_ms": int(time.time() * 1000),
            }
            store.save(state, trainer.num_steps)
            # only now: the checkpoint holds these offsets; while the broker is away (dead
            # letters not acknowledged) the commit waits and is retried from the loop
            commits.offer(positions)
            metrics.gauge("checkpoint_s", time.perf_counter() - start)

        commits = CommitAfterFlush(dead_letters, ingestor.request_commit)

        def snapshot() -> None:
            if guard.verify("snapshot"):  # else restored: the last good weights are served already
                publisher.publish(
                    trainer.actor_model, training_step=trainer.num_steps, watermark_ms=watermark_ms
                )

        # 3. the loop
        ingestor.start()
        clean = False
        now = time.monotonic()
        last_snapshot_t = last_ckpt_t = last_log_t = now
        last_snapshot_step = trainer.num_steps
        last_log_step, last_log_records = trainer.num_steps, ingestor.stats.records
        waiting_logged = False
        batch = None
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if cfg.checkpoint_every_s > 0 and now - last_ckpt_t >= cfg.checkpoint_every_s:
                    checkpoint()
                    last_ckpt_t = now
                commits.poll()
                if now - last_log_t >= cfg.log_every_s:
                    dt = now - last_log_t
                    sps = (trainer.num_steps - last_log_step) / dt
                    ips = (ingestor.stats.records - last_log_records) / dt
                    _log_progress(trainer.num_steps, sps, ips, buffer, ingestor, publisher, metrics)
                    metrics.observe({"steps_per_s": sps, "ingest_per_s": ips})
                    last_log_t, last_log_step, last_log_records = (
                        now,
                        trainer.num_steps,
                        ingestor.stats.records,
                    )
                if metrics.due():
                    _observe_state(metrics, buffer, ingestor, publisher)
                    if batch is not None:
                        metrics.observe(weight_stats(trainer, batch))
                    metrics.flush()
                if cfg.max_steps and trainer.num_steps >= cfg.max_steps:
                    log.info("max_steps %d reached", cfg.max_steps)
                    break

                # wait for data: enough of it, and not trained on more often than allowed
                if len(buffer) < max(1, cfg.min_buffer):
                    if not waiting_logged:
                        log.info("waiting for %d transitions in the buffer", cfg.min_buffer)
                        waiting_logged = True
                    self.stop_event.wait(0.05)
                    continue
                sampled = (trainer.num_steps + 1) * cfg.batch_size
                if cfg.max_replay_ratio > 0 and sampled > cfg.max_replay_ratio * buffer.stats.added:
                    self.stop_event.wait(0.01)
                    continue

                # one PAPERec step on a uniform sample
                t0 = time.perf_counter()
                sample = buffer.sample(cfg.batch_size)
                batch = sample.batch
                step_metrics = trainer.step(batch)
                step_time = time.perf_counter() - t0
                if step_metrics.get("nonfinite_step"):
                    # refused, nothing applied: keep the rows that caused it out of later samples
                    if sample.slots is not None:
                        buffer.quarantine_nonfinite(sample.slots)
                    batch = None  # not for weight_stats either
                else:
                    watermark_ms = max(watermark_ms, sample.max_ts_ms)
                metrics.observe(step_metrics)
                metrics.observe(
                    {
                        "nonfinite_steps_total": float(trainer.nonfinite_steps),
                        "quarantined_total": float(buffer.stats.quarantined),
                        "nonfinite_weights_refused_total": float(guard.refused),
                    }
                )
                metrics.observe({"step_time_s": step_time})

                steps_since = trainer.num_steps - last_snapshot_step
                by_steps = cfg.snapshot_every_steps > 0 and steps_since >= cfg.snapshot_every_steps
                by_time = (
                    cfg.snapshot_every_s > 0 and time.monotonic() - last_snapshot_t >= cfg.snapshot_every_s
                )
                if can_snapshot and (by_steps or by_time):
                    snapshot()
                    last_snapshot_t, last_snapshot_step = time.monotonic(), trainer.num_steps
            clean = True
        finally:
            log.info("stopping (clean=%s) at step %d", clean, trainer.num_steps)
            ingestor.stop()
            if clean:
                if can_snapshot and trainer.num_steps > last_snapshot_step:
                    snapshot()
                checkpoint()
            ingestor.close()  # commits what the last checkpoint holds
            publisher.close()
            dead_letters.close()
            _observe_state(metrics, buffer, ingestor, publisher)
            metrics.close()
            store.unlock()
        log.info("stopped at step %d; last snapshot v%d", trainer.num_steps, publisher.last_version)
        return 0


def _observe_publish(metrics: LearnerMetrics, r: PublishResult) -> None:
    if r.ok:
        metrics.observe(
            {
                "snapshot_encode_s": r.encode_s,
                "snapshot_send_s": r.send_s,
                "snapshot_publish_s": r.encode_s + r.send_s,
                "snapshot_bytes": float(r.payload_bytes),
                "snapshot_version": float(r.version),
            }
        )
    else:
        metrics.gauge("snapshot_failures", 1.0)


def _observe_state(
    metrics: LearnerMetrics, buffer: ReplayBuffer, ingestor: Ingestor, publisher: SnapshotPublisher
) -> None:
    st = ingestor.stats
    values = {
        "buffer_size": float(len(buffer)),
        "records_total": float(st.records),
        "transitions_total": float(st.transitions),
        "duplicates_total": float(st.duplicates),
        "dead_letters_total": float(st.dead_letters),
        "truncated_total": float(st.truncated),
        "ingest_errors_total": float(st.errors),
        "evicted_total": float(buffer.stats.evicted),
        "snapshots_published_total": float(publisher.published),
        "snapshot_failures_total": float(publisher.failed),
        "dead_letter_send_failures_total": float(getattr(ingestor.dead_letters, "failed", 0)),
    }
    if ingestor.last_lag is not None:
        values["consumer_lag"] = float(ingestor.last_lag)
    metrics.observe(values)


def _log_progress(
    step: int,
    sps: float,
    ips: float,
    buffer: ReplayBuffer,
    ingestor: Ingestor,
    publisher: SnapshotPublisher,
    metrics: LearnerMetrics,
) -> None:
    last = metrics.last
    losses = " ".join(f"{label or 'total'}={v:.4f}" for (n, label), v in sorted(last.items()) if n == "loss")
    log.info(
        "step %d (%.2f/s) | buffer %d | ingested %d (%.0f/s), lag %s, dup %d, dead %d | "
        "snapshot v%d | loss %s | reward %.4f",
        step,
        sps,
        len(buffer),
        ingestor.stats.records,
        ips,
        ingestor.last_lag,
        ingestor.stats.duplicates,
        ingestor.stats.dead_letters,
        publisher.last_version,
        losses or "-",
        last.get(("reward", ""), float("nan")),
    )
