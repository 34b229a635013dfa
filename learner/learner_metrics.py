"""Learner metrics: aggregated on the training thread, written to ClickHouse off it.

Per training step the loop only adds floats into a dict (``observe``). Every
``interval_s`` the means since the last flush become rows of ``learner_metrics(ts, source, name,
label, value)`` handed to :class:`base.metrics_writer.MetricsWriter`, whose own thread batches
the inserts, retries while ClickHouse is down and drops the oldest rows when its bounded buffer is
full: the training loop never waits for ClickHouse.

Names (label in brackets):
- ``loss`` [objective]: per-objective ranker loss; ``loss`` []: the weighted ranker loss;
- ``reward`` []: the weight generator's reward of the logged weights (``PAPERecConfig.reward``;
  pareto: -||sum_k w_k g_k||, ``reward_best``: of the min-norm weights; engagement, hybrid: the
  list's scaled clicks + dwell); ``qf_spread``, ``regret_spread``, ``regret``, ``actor_penalty``
  (see learner/training.py); ``qf_loss``/``critic_loss``, ``actor_loss``, ``qf_value``, ``grad_norm``;
- ``weight_mean`` / ``weight_std`` [objective]: the weight generator's weights over the users of
  a sampled batch (mean, and spread across users);
- ``buffer_size``, ``consumer_lag``, ``step_time_s``, ``steps_per_s``, ``ingest_per_s``,
  ``snapshot_encode_s``, ``snapshot_send_s``, ``snapshot_version``, ``checkpoint_s``, counters
  (``dead_letters``, ``duplicates``, ``publish_failures`` ...).
Every key the trainer returns is forwarded: ``"a/b"`` becomes name ``a``, label ``b``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import torch

from model.batch import ListBatch
from model.scoring import policy_obs

log = logging.getLogger(__name__)

# the trainer's names -> the names the dashboards use
RENAMES = {"qf_loss": "critic_loss"}


def split_name(key: str) -> tuple[str, str]:
    name, _, label = key.partition("/")
    return RENAMES.get(name, name), label


class LearnerMetrics:
    def __init__(
        self,
        source: str,
        writer: Any | None = None,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.writer = writer  # a MetricsWriter (or None: aggregate for the log lines only)
        self.interval_s = interval_s
        self._clock = clock
        self._sums: dict[tuple[str, str], float] = defaultdict(float)
        self._counts: dict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()  # publisher callbacks add from their thread
        self._last_flush = clock()
        self.last: dict[tuple[str, str], float] = {}  # the latest flushed means, for log lines

    def observe(self, values: Mapping[str, float], prefix: str = "") -> None:
        """Add one sample of each value (averaged until the next flush)."""
        with self._lock:
            for key, value in values.items():
                k = split_name(prefix + key)
                self._sums[k] += float(value)
                self._counts[k] += 1

    def gauge(self, name: str, value: float, label: str = "") -> None:
        self.observe({f"{name}/{label}" if label else name: value})

    def due(self) -> bool:
        return self._clock() - self._last_flush >= self.interval_s

    def flush(self) -> int:
        """Means since the last flush -> the writer. Returns the number of rows."""
        from base.metrics_store import MetricRow
        from base.metrics_writer import now_utc

        with self._lock:
            means = {k: self._sums[k] / self._counts[k] for k in self._sums if self._counts[k]}
            self._sums.clear()
            self._counts.clear()
        self._last_flush = self._clock()
        self.last.update(means)
        if self.writer is not None and means:
            ts = now_utc()
            for (name, label), value in means.items():
                self.writer.add(MetricRow(ts, self.source, name, label, value))
        return len(means)

    def close(self, timeout_s: float = 5.0) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close(timeout_s)


def clickhouse_writer(settings: Any) -> Any:
    """A MetricsWriter for the learner_metrics table of ``settings``' ClickHouse database."""
    from base.metrics_store import sample_writer

    return sample_writer(settings, "learner_metrics", flush_interval_s=2.0)


@torch.no_grad()
def weight_stats(trainer: Any, batch: ListBatch) -> dict[str, float]:
    """Mean and spread (std across users) of the weight generator's weights on ``batch``.

    Empty for strategies without a weight generator. Runs outside the training step, once per
    metrics interval, and draws no random numbers.
    """
    ddpg = getattr(trainer.strategy, "ddpg", None)
    if ddpg is None:
        return {}
    batch = batch.to(trainer.device)
    obs = policy_obs(trainer.ranker, trainer.cfg.policy_state, batch.user_feats, batch.history, batch.context)
    w = ddpg.actor(obs)  # (B, K)
    out = {}
    for k, objective in enumerate(trainer.cfg.ranker.objectives):
        out[f"weight_mean/{objective}"] = float(w[:, k].mean())
        out[f"weight_std/{objective}"] = float(w[:, k].std(unbiased=False))
    return out
