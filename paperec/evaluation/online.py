"""Online training and evaluation of one contender on the simulator.

Training loop, the same for every contender (same budget, same seeds):
  the policy ranks with exploration noise -> the simulator responds -> consecutive lists of a
  session become transitions (done at the session's end) -> a FIFO replay buffer -> one learner
  step on a uniformly sampled batch per ``lists_per_step`` new lists.
Evaluation: sessions of a separate random stream (the same users and luck for every contender),
no exploration noise, the users' click histories as training left them. A personalized
contender is then evaluated a second time on the same sessions, from the same histories, with
its trained ranker served at global constant weights equal to its mean served weights (the
*matched mean weight* policy): the difference between the two isolates the personalization.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from paperec.evaluation.buffer import TensorReplay
from paperec.evaluation.contenders import Contender
from paperec.evaluation.reward_probe import probe
from schemas import Transition
from simulator.session import Policy, Simulator
from simulator.transitions import TransitionLinker
from simulator.world import World

log = logging.getLogger(__name__)

TRAIN_STREAM, EVAL_STREAM = 1, 2


@dataclass(frozen=True)
class Budget:
    train_steps: int = 2000
    """learner steps per contender"""
    lists_per_step: int = 16
    """new simulated lists per learner step"""
    warmup_lists: int = 512
    """lists simulated before the first step (fill the buffer)"""
    batch_size: int = 64
    buffer_size: int = 4096
    parallel: int = 32
    """concurrent sessions while training (one batched policy call per round)"""
    eval_sessions: int = 10000
    """evaluation sessions, the same for every contender (common random numbers)"""
    eval_parallel: int = 128
    """concurrent sessions while evaluating"""

    @property
    def train_lists(self) -> int:
        return self.warmup_lists + self.train_steps * self.lists_per_step


@dataclass
class EvalData:
    """Per evaluation session (session i of the evaluation stream for every contender): lists,
    shown items, clicks, dwell seconds, user; per list: its user and the served weights."""

    lists: np.ndarray
    impressions: np.ndarray
    clicks: np.ndarray
    dwell_s: np.ndarray
    user: np.ndarray
    list_user: np.ndarray
    list_weights: np.ndarray  # (n_lists, K)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    train_metrics: dict[str, float] = field(default_factory=dict)
    reward_probe: dict[str, Any] | None = None  # paperec: see paperec/evaluation/reward_probe.py
    matched: EvalData | None = None  # personalized: the same ranker at its mean served weights
    matched_weights: tuple[float, ...] | None = None  # those constant weights


def train(
    contender: Contender, world: World, budget: Budget, seed: int, progress: bool = True
) -> tuple[Simulator, dict[str, float], dict[str, Any] | None]:
    """Train ``contender`` online; returns the training simulator (user histories), the mean
    of the last 10% of step metrics and, for PAPERec, the reward probe of its final buffer."""
    sim = Simulator(world.cfg, world, stream_id=TRAIN_STREAM)
    # exploration: what the learner config records in its snapshot headers, so serving nodes
    # explore alike; logit-space noise on the serving weights, for everyone
    exploration = contender.trainer.cfg.exploration()
    policy = contender.policy(exploration, torch.Generator().manual_seed(seed))
    results = sim.run(policy, sim.endless_sessions(), parallel=budget.parallel)
    linker = TransitionLinker()
    buffer = TensorReplay(budget.buffer_size, contender.trainer.cfg.ranker, world.cfg.list_len)
    rng = np.random.default_rng(seed)

    def collect(n: int) -> None:
        fresh: list[Transition] = []
        for _ in range(n):
            fresh.extend(linker.add(next(results)))
        buffer.add(fresh)

    collect(budget.warmup_lists)
    tail: list[dict[str, float]] = []
    bar = tqdm(range(budget.train_steps), desc=f"train {contender.name}", disable=not progress, leave=False)
    for step in bar:
        collect(budget.lists_per_step)
        while len(buffer) < budget.batch_size:
            collect(budget.batch_size)  # happens only with tiny warm-ups (tests)
        metrics = contender.step(buffer.sample(budget.batch_size, rng))
        if step >= budget.train_steps * 0.9:
            tail.append(metrics)
    keys = set().union(*tail) if tail else set()
    summary = {k: float(np.mean([m[k] for m in tail if k in m])) for k in sorted(keys)}
    is_paperec = contender.trainer.cfg.strategy == "paperec"
    return sim, summary, probe(contender.trainer, buffer, world.users.alpha) if is_paperec else None


@torch.no_grad()
def evaluate(policy: Policy, world: World, budget: Budget, histories: Simulator | None) -> EvalData:
    """Run the evaluation sessions with ``policy`` and collect per-session outcomes; the users'
    click histories start as ``histories`` left them (copied: every call starts alike)."""
    sim = Simulator(world.cfg, world, stream_id=EVAL_STREAM)
    if histories is not None:
        sim.histories = {u: deque(h, maxlen=world.cfg.history_len) for u, h in histories.histories.items()}
    specs = sim.random_sessions(budget.eval_sessions)
    n = len(specs)
    lists, imps, clicks = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    dwell = np.zeros(n)
    users = np.array([s.user for s in specs])
    list_user: list[int] = []
    list_weights: list[tuple[float, ...]] = []
    for r in sim.run(policy, specs, parallel=budget.eval_parallel):
        i = r.session
        lists[i] += 1
        imps[i] += len(r.impression.items)
        clicks[i] += r.response.n_clicks
        dwell[i] += r.response.total_dwell_s
        list_user.append(r.user)
        list_weights.append(r.impression.weights)
    return EvalData(lists, imps, clicks, dwell, users, np.array(list_user), np.array(list_weights))


def run_contender(contender: Contender, world: World, budget: Budget, seed: int, progress: bool) -> EvalData:
    t0 = time.perf_counter()
    sim, metrics, reward_probe = train(contender, world, budget, seed, progress)
    t1 = time.perf_counter()
    data = evaluate(contender.policy(0.0, None), world, budget, sim)
    if contender.spec.is_personalized:
        w = data.list_weights.mean(axis=0)
        data.matched_weights = tuple(float(x) for x in w / w.sum())
        data.matched = evaluate(contender.constant_weight_policy(data.matched_weights), world, budget, sim)
    data.train_seconds, data.eval_seconds = t1 - t0, time.perf_counter() - t1
    data.train_metrics, data.reward_probe = metrics, reward_probe
    log.info(
        "%s: trained %d steps in %.1fs, evaluated %d sessions in %.1fs",
        contender.name,
        budget.train_steps,
        data.train_seconds,
        len(data.lists),
        data.eval_seconds,
    )
    return data
