"""The learner's training loop: one :meth:`TrainingLoop.step` at a time, no Kafka in sight.

Each step does the due housekeeping (a checkpoint, a deferred offset commit, a progress line, a
metric flush), then either says how long to wait (too little data, or the replay ratio reached)
or trains once on a uniform sample and publishes a snapshot when one is due. It never sleeps
itself: the service waits on its stop event for the time a step asks (SIGTERM ends the wait),
and a test drives the steps with fakes and a fake clock.

Numeric safety (docs/hardening.md): ``Trainer.step`` refuses a batch with a non-finite input,
loss or gradient (no optimizer steps at all; counted as ``nonfinite_steps_total``) and the loop
quarantines the batch's non-finite rows (``quarantined_total``). Before every snapshot and
checkpoint the weights are checked (:class:`learner.numeric.FiniteGuard`): non-finite ones are
never published or saved; the trainer goes back to its last good state and training goes on
(``nonfinite_weights_refused_total``); snapshot versions keep rising.

Delivery: a checkpoint captures trainer, buffer and consumed offsets together; the offsets are
committed to Kafka only after the file is durable and the dead letters before them are
acknowledged (:class:`learner.kafka_io.CommitAfterFlush`).

Guarded rollout (docs/rollout.md): each trained batch's mean weights feed the moving average
that snapshot headers carry as ``global_weights`` (:class:`learner.publisher.GlobalWeights`), and
between steps the control topic is polled (:class:`learner.rollout_follow.RolloutFollower`): a
rejected version is recorded (log, metric, checkpoint) and training goes on. Both are in the
checkpoint (key ``rollout``).

Data parallel (docs/learner_service.md, "Data-parallel learner"): every rank runs this loop in
step; its decisions (wait, snapshot due, checkpoint due) are taken by all ranks together
(``distributed.any_rank``); rank 0 publishes and writes the checkpoint, then every rank commits
its own partitions' offsets.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from learner import distributed
from learner.checkpoint import CheckpointStore
from learner.ingest import Ingestor
from learner.kafka_io import CommitAfterFlush
from learner.learner_metrics import LearnerMetrics, weight_stats
from learner.numeric import FiniteGuard
from learner.publisher import GlobalWeights, PublishResult, SnapshotPublisher
from learner.replay_buffer import ReplayBuffer
from learner.rollout_follow import RolloutFollower, RolloutLedger
from learner.training import PAPERecStrategy, Trainer
from model.batch import ListBatch
from model.config import config_to_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepOutcome:
    """What one :meth:`TrainingLoop.step` did."""

    trained: bool = False
    wait_s: float = 0.0  # before the next step: too little data, or the replay ratio reached
    finished: bool = False  # max_steps reached: stop cleanly


class TrainingLoop:
    """The loop's state between steps: schedules, the watermark, the last trained batch."""

    def __init__(
        self,
        cfg: Any,  # LearnerServiceConfig (learner.service imports this module)
        trainer: Trainer,
        buffer: ReplayBuffer,
        ingestor: Ingestor,
        publisher: SnapshotPublisher,
        metrics: LearnerMetrics,
        checkpoints: CheckpointStore,
        commits: CommitAfterFlush,
        topic: str,
        watermark_ms: int = 0,
        clock: Callable[[], float] = time.monotonic,
        global_weights: GlobalWeights | None = None,
        rollout: RolloutFollower | None = None,
    ) -> None:
        self.cfg, self.trainer, self.buffer, self.ingestor = cfg, trainer, buffer, ingestor
        self.publisher, self.metrics, self.checkpoints, self.commits = (
            publisher,
            metrics,
            checkpoints,
            commits,
        )
        self.topic, self.watermark_ms, self.clock = topic, watermark_ms, clock
        self.global_weights = global_weights or GlobalWeights()
        self.rollout = rollout  # None: the control topic is not followed
        self.ledger = rollout.ledger if rollout is not None else RolloutLedger()
        # never checkpoint or publish non-finite weights: the guard restores the last good state
        self.guard = FiniteGuard(trainer)
        self.can_snapshot = isinstance(trainer.strategy, PAPERecStrategy)
        if not self.can_snapshot:
            log.warning(
                "strategy %s has no weight generator: no snapshots are published", trainer.cfg.strategy
            )
        now = clock()
        self.last_snapshot_t = self.last_checkpoint_t = self.last_log_t = now
        self.last_snapshot_step = self.last_log_step = trainer.num_steps
        self.last_log_records = ingestor.stats.records
        self.batch: ListBatch | None = None  # the last finite batch trained on (for weight_stats)
        self._waiting_logged = False

    # ------------------------------------------------------------------ one step
    def step(self) -> StepOutcome:
        cfg, trainer, buffer = self.cfg, self.trainer, self.buffer
        self.housekeeping()
        if cfg.max_steps and trainer.num_steps >= cfg.max_steps:
            log.info("max_steps %d reached", cfg.max_steps)
            return StepOutcome(finished=True)

        # wait for data: enough of it, and not trained on more often than allowed (data parallel:
        # every rank steps together, so one rank's wait is every rank's)
        if distributed.any_rank(len(buffer) < max(1, cfg.min_buffer)):
            if not self._waiting_logged:
                log.info("waiting for %d transitions in the buffer", cfg.min_buffer)
                self._waiting_logged = True
            return StepOutcome(wait_s=0.05)
        sampled = (trainer.num_steps + 1) * cfg.batch_size
        if distributed.any_rank(
            cfg.max_replay_ratio > 0 and sampled > cfg.max_replay_ratio * buffer.stats.added
        ):
            return StepOutcome(wait_s=0.01)

        self.train_once()
        steps_since = trainer.num_steps - self.last_snapshot_step
        by_steps = cfg.snapshot_every_steps > 0 and steps_since >= cfg.snapshot_every_steps
        by_time = cfg.snapshot_every_s > 0 and self.clock() - self.last_snapshot_t >= cfg.snapshot_every_s
        if self.can_snapshot and distributed.any_rank(by_steps or by_time):
            self.snapshot()
        return StepOutcome(trained=True)

    def train_once(self) -> None:
        """One PAPERec step on a uniform sample; a refused (non-finite) batch is quarantined."""
        t0 = time.perf_counter()
        sample = self.buffer.sample(self.cfg.batch_size)
        step_metrics = self.trainer.step(sample.batch)
        step_time = time.perf_counter() - t0
        if step_metrics.get("nonfinite_step"):
            # refused, nothing applied: keep the rows that caused it out of later samples
            if sample.slots is not None:
                self.buffer.quarantine_nonfinite(sample.slots)
            self.batch = None  # not for weight_stats either
        else:
            self.batch = sample.batch
            self.watermark_ms = max(self.watermark_ms, sample.max_ts_ms)
            names = [f"weight/{o}" for o in self.trainer.cfg.ranker.objectives]
            if all(n in step_metrics for n in names):  # a strategy with a weight generator
                self.global_weights.update([step_metrics[n] for n in names])
        self.metrics.observe(step_metrics)
        self.metrics.observe(
            {
                "nonfinite_steps_total": float(self.trainer.nonfinite_steps),
                "quarantined_total": float(self.buffer.stats.quarantined),
                "nonfinite_weights_refused_total": float(self.guard.refused),
            }
        )
        self.metrics.observe({"step_time_s": step_time})

    def housekeeping(self) -> None:
        """What is due between two steps: checkpoint, deferred commit, progress line, metrics."""
        now = self.clock()
        every = self.cfg.checkpoint_every_s
        if distributed.any_rank(every > 0 and now - self.last_checkpoint_t >= every):
            self.checkpoint()
            self.last_checkpoint_t = now
        self.commits.poll()
        if self.rollout is not None:
            self.rollout.poll()
        if now - self.last_log_t >= self.cfg.log_every_s:
            dt = now - self.last_log_t
            steps_per_s = (self.trainer.num_steps - self.last_log_step) / dt
            ingest_per_s = (self.ingestor.stats.records - self.last_log_records) / dt
            self._log_progress(steps_per_s, ingest_per_s)
            self.metrics.observe({"steps_per_s": steps_per_s, "ingest_per_s": ingest_per_s})
            self.last_log_t, self.last_log_step = now, self.trainer.num_steps
            self.last_log_records = self.ingestor.stats.records
        if self.metrics.due():
            self.observe_state()
            if self.batch is not None:
                self.metrics.observe(weight_stats(self.trainer, self.batch))
            self.metrics.flush()

    # ------------------------------------------------------------------ snapshot, checkpoint
    def snapshot(self) -> None:
        # every rank verifies (identical weights: identical outcome, restored alike); rank 0 publishes
        if self.guard.verify("snapshot") and distributed.rank() == 0:
            self.publisher.publish(
                self.trainer.actor_model,
                training_step=self.trainer.num_steps,
                watermark_ms=self.watermark_ms,
                global_weights=self.global_weights.value(),
            )
        self.last_snapshot_t, self.last_snapshot_step = self.clock(), self.trainer.num_steps

    def checkpoint(self) -> None:
        start = time.perf_counter()
        self.guard.verify("checkpoint")  # non-finite: the last good state is what gets saved
        lead = distributed.rank() == 0  # data parallel: rank 0 writes, every rank commits its share
        buffer_state, positions, stats = self.ingestor.checkpoint_state(self.cfg.checkpoint_buffer and lead)
        state: dict[str, Any] = {
            "trainer": self.trainer.state_dict(),
            "buffer": buffer_state,
            "offsets": {"topic": self.topic, "positions": positions},
            "ingest": dataclasses.asdict(stats),
            "snapshot_version": self.publisher.last_version,
            "watermark_ms": self.watermark_ms,
            "rollout": {
                "global_weights": self.global_weights.state_dict(),
                "ledger": self.ledger.state_dict(),
            },
            "service": config_to_dict(self.cfg),
            "created_at_ms": int(time.time() * 1000),
        }
        if lead:
            self.checkpoints.save(state, self.trainer.num_steps)
        distributed.barrier()  # the file is durable before any rank commits the offsets it covers
        # only now: the checkpoint holds these offsets; while the broker is away (dead letters
        # not acknowledged) the commit waits and is retried from the loop
        self.commits.offer(positions)
        self.metrics.gauge("checkpoint_s", time.perf_counter() - start)

    def finish(self) -> None:
        """After a clean stop: a last snapshot (if it trained since) and a last checkpoint."""
        if self.can_snapshot and self.trainer.num_steps > self.last_snapshot_step:
            self.snapshot()
        self.checkpoint()

    # ------------------------------------------------------------------ metrics
    def observe_publish(self, r: PublishResult) -> None:
        """The publisher's ``on_result`` (its thread)."""
        observe_publish(self.metrics, r)

    def observe_state(self) -> None:
        st, buffer, publisher = self.ingestor.stats, self.buffer, self.publisher
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
            "dead_letter_send_failures_total": float(getattr(self.ingestor.dead_letters, "failed", 0)),
        }
        if self.ingestor.last_lag is not None:
            values["consumer_lag"] = float(self.ingestor.last_lag)
        if self.rollout is not None:
            values.update(self.ledger.metrics())
        self.metrics.observe(values)

    def _log_progress(self, steps_per_s: float, ingest_per_s: float) -> None:
        last, st = self.metrics.last, self.ingestor.stats
        losses = " ".join(
            f"{label or 'total'}={v:.4f}" for (n, label), v in sorted(last.items()) if n == "loss"
        )
        log.info(
            "step %d (%.2f/s) | buffer %d | ingested %d (%.0f/s), lag %s, dup %d, dead %d | "
            "snapshot v%d | loss %s | reward %.4f",
            self.trainer.num_steps,
            steps_per_s,
            len(self.buffer),
            st.records,
            ingest_per_s,
            self.ingestor.last_lag,
            st.duplicates,
            st.dead_letters,
            self.publisher.last_version,
            losses or "-",
            last.get(("reward", ""), float("nan")),
        )


def observe_publish(metrics: LearnerMetrics, r: PublishResult) -> None:
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
