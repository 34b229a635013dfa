"""Micro-batching of concurrent /rank requests onto the single scoring thread.

No added wait: while one batch is being scored, arriving requests queue up, and the next batch
takes all of them that were ranked by the same served model (up to ``max_lists`` lists and
``max_item_slots`` padded item slots). At low load every batch has one list, so latency is that
of scoring it alone; under load, per-op overheads (notably the ranker's GRU over list positions,
a sequential loop) are paid once per batch instead of once per list. That saving stops at a few
hundred item slots (measured on the 2-core VM, CPU per list: 20 items 2.5 ms alone, 0.9 ms in
batches of 8-16; 100 items 6.1 ms alone, 4.4 ms in 4s, 5.5 ms in 8s; 200 items ~10 ms at any
batch size), so batches stop at 512 slots: a bigger one costs no less per list and only makes
every list in it wait for the others.

A request's model is the one it captured at its start: a batch never mixes two models, so a
snapshot swap between two requests cannot change which model ranks either of them. The holdout
and personalized arms of one model share batches (a holdout list only swaps in fixed weights:
:func:`actor_service.ranking.rank_batch`); a canary's lists, of another model, batch apart.

Overload. The queue is bounded (``max_queue``: a request beyond it is refused at once) and each
request has a deadline, ``deadline_s`` after its arrival: one still queued at its deadline leaves
the queue unscored and fails with :class:`actor_service.overload.Shed` right then (a timer, not
the next batch, answers it), so the scoring thread spends its time only on requests that can
still be answered in time. A request already in a batch is always scored to the end.

Scoring cost: every batch is timed on the scoring thread (``clock``, injectable) and fed to a
:class:`actor_service.overload.ScoringCost`, which admission uses to bound the expected wait of
a new request (see :mod:`actor_service.overload`).

Adaptive LIFO: first come, first served while the queue keeps its promise; once the oldest
queued request has waited longer than ``lifo_after_s`` (the node's wait budget), batches take the
NEWEST requests first. In a queue that stays full, first-come-first-served makes every accepted
request wait about the whole deadline; newest-first answers the accepted ones in about two batch
times and lets the oldest, which would have been late anyway, run into their deadline. The
switch is on the age of the oldest request, not on "a batch did not drain the queue": that rule
also fired at plain saturation (8-16 closed-loop clients, waits far under the budget) and let a
few old requests starve into their 2 s deadline while newer ones went first (measured with
benchmarks/overload.py). Without ``lifo_after_s`` the order stays FIFO.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch

from actor_service.api import RankRequest
from actor_service.model_slot import Served
from actor_service.overload import DEADLINE_EXCEEDED, OVERLOADED, ScoringCost, Shed
from actor_service.ranking import Job, Ranked, rank_batch
from model.featurize import FeatureError
from schemas import SchemaError

log = logging.getLogger(__name__)

Results = list[Ranked | FeatureError | SchemaError]


@dataclass(eq=False)  # identity: the queue removes exactly this entry
class _Pending:
    served: Served
    job: Job
    future: asyncio.Future[Ranked]
    arrived: float  # time.monotonic() when the request reached the node
    queued_at: float = field(default_factory=time.monotonic)
    # Fires at the deadline while queued. The handle holds this entry (its callback's argument),
    # so it is dropped once fired or cancelled. Reference cycles here (entry -> handle -> entry;
    # exception -> traceback -> rank()'s frame -> future -> exception) keep the whole parsed
    # request alive until a full GC: under overload that garbage made full collections take
    # 300+ ms with every thread stopped (measured), hence no cycles.
    expiry: asyncio.TimerHandle | None = None

    @property
    def n_items(self) -> int:
        return len(self.job.req.items)


class MicroBatcher:
    def __init__(
        self,
        executor: Executor,
        generator: torch.Generator,
        max_lists: int = 16,
        max_item_slots: int = 512,
        max_queue: int = 1024,
        deadline_s: float | None = None,
        lifo_after_s: float | None = None,
        cost: ScoringCost | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.executor = executor
        self.generator = generator  # used only on the (single) scoring thread
        self.max_lists = max(1, max_lists)
        self.max_item_slots = max_item_slots
        self.max_queue = max(1, max_queue)
        self.deadline_s = deadline_s
        self.lifo_after_s = lifo_after_s
        self.cost = cost if cost is not None else ScoringCost()  # shared with admission
        self.clock = clock  # times batches on the scoring thread
        self._pending: deque[_Pending] = deque()
        self._running = False
        self.batches = 0
        self.lists = 0
        self.expired = 0  # requests dropped from the queue at their deadline

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def rank(
        self,
        served: Served,
        req: RankRequest,
        request_id: str,
        ts_ms: int,
        arrived: float | None = None,
        arm: str | None = None,
        fixed_weights: torch.Tensor | None = None,
    ) -> Ranked:
        """Rank one request; raises FeatureError/SchemaError naming the field, or Shed when the
        queue is full or the deadline (``deadline_s`` after ``arrived``, a ``time.monotonic()``
        reading, default now) passes before it is scored. ``arm`` and ``fixed_weights``: see
        :class:`actor_service.ranking.Job`."""
        if len(self._pending) >= self.max_queue:
            raise Shed(OVERLOADED, f"scoring queue full ({self.max_queue} requests)")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Ranked] = loop.create_future()
        p = _Pending(
            served,
            Job(req, request_id, ts_ms, arm, fixed_weights),
            fut,
            time.monotonic() if arrived is None else arrived,
        )
        self._pending.append(p)
        self._dispatch()
        if self.deadline_s is not None and p in self._pending:  # not taken into a batch at once
            left = p.arrived + self.deadline_s - time.monotonic()
            if left <= 0:
                self._expire(p)
            else:
                p.expiry = loop.call_later(left, self._expire, p)
        try:
            return await fut
        finally:
            del p, fut  # a raised exception's traceback holds this frame: no cycle through fut

    def _expire(self, p: _Pending, reason: str = "request deadline passed while queued for scoring") -> None:
        """The deadline passed (or will have, see :meth:`_shed_late`) while ``p`` was queued: drop
        it unscored."""
        if p.expiry is not None:
            p.expiry.cancel()  # harmless when it is the handle firing now
        p.expiry = None  # the fired handle holds ``p``: no reference cycle (see rank)
        try:
            self._pending.remove(p)
        except ValueError:  # already taken into a batch
            return
        self.expired += 1
        if not p.future.done():
            p.future.set_exception(Shed(DEADLINE_EXCEEDED, reason))

    def _shed_late(self) -> None:
        """Before the scorer takes the next batch: a queued request with less time left before its
        deadline than one list's scoring cost would be answered late even if taken now, so it
        leaves unscored and the scorer's time goes to requests that can still make it. The
        deadline timer alone bounds only the time spent queued: a request taken just before it
        finished a whole scoring later (measured: accepted p99 = deadline + one batch in
        benchmarks/overload.py). Only requests that queued behind a batch are judged: one that
        finds the scorer idle is always scored, as admission always admits into an empty node."""
        if self.deadline_s is None or self.cost.per_list_s <= 0:
            return
        now = time.monotonic()
        late = [p for p in self._pending if p.arrived + self.deadline_s - now < self.cost.per_list_s]
        for p in late:
            self._expire(p, "request would finish after its deadline: shed before scoring")

    def behind(self) -> bool:
        """The oldest queued request has waited longer than ``lifo_after_s``."""
        if self.lifo_after_s is None or not self._pending:
            return False
        return time.monotonic() - self._pending[0].queued_at > self.lifo_after_s

    def _take(self) -> list[_Pending]:
        """The oldest request (the newest when behind) and the queued ones that share its model
        and fit the budget, in that order."""
        order = list(reversed(self._pending)) if self.behind() else list(self._pending)
        first = order[0]
        batch = [first]
        longest = first.n_items
        for p in order[1:]:
            longest_if = max(longest, p.n_items)
            fits = len(batch) < self.max_lists and longest_if * (len(batch) + 1) <= self.max_item_slots
            if p.served is first.served and fits:
                batch.append(p)
                longest = longest_if
        taken = set(batch)
        self._pending = deque(p for p in self._pending if p not in taken)
        for p in batch:
            if p.expiry is not None:
                p.expiry.cancel()
                p.expiry = None
        return batch

    def _dispatch(self) -> None:
        if self._running or not self._pending:
            return
        batch = self._take()
        self._running = True
        self.batches += 1
        self.lists += len(batch)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.executor, self._score, batch[0].served, [p.job for p in batch])
        fut.add_done_callback(lambda f: self._finished(batch, f))

    def _score(self, served: Served, jobs: list[Job]) -> tuple[Results, float]:
        """On the scoring thread: the results and how long scoring took (the scorer's own cost,
        without the executor hand-off or the event loop's delay in seeing the batch done)."""
        started = self.clock()
        results = rank_batch(served, jobs, self.generator)
        return results, self.clock() - started

    def _finished(self, batch: list[_Pending], fut: asyncio.Future[tuple[Results, float]]) -> None:
        self._running = False
        try:
            if fut.cancelled():
                for p in batch:
                    if not p.future.done():
                        p.future.cancel()
            elif (exc := fut.exception()) is not None:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
            else:
                results, seconds = fut.result()
                self.cost.observe(seconds, len(batch))
                for p, result in zip(batch, results, strict=True):
                    if p.future.done():  # the client went away
                        continue
                    if isinstance(result, Ranked):
                        p.future.set_result(result)
                    else:
                        p.future.set_exception(result)
        finally:
            try:
                self._shed_late()
                self._dispatch()
            except RuntimeError:  # executor shut down: the node is stopping
                for p in self._pending:
                    if p.expiry is not None:
                        p.expiry.cancel()
                    if not p.future.done():
                        p.future.cancel()
                self._pending.clear()
