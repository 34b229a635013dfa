"""Micro-batching of concurrent /rank requests onto the single scoring thread.

No added wait: while one batch is being scored, arriving requests queue up, and the next batch
takes all of them that were ranked by the same served model (up to ``max_lists`` lists and
``max_item_slots`` padded item slots). At low load every batch has one list, so latency is that
of scoring it alone; under load, per-op overheads (notably the ranker's GRU over list positions,
a sequential loop) are paid once per batch instead of once per list.

A request's model is the one it captured at its start: a batch never mixes two models, so a
snapshot swap between two requests cannot change which model ranks either of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass

import torch

from actor_service.api import RankRequest
from actor_service.model_slot import Served
from actor_service.ranking import Job, Ranked, rank_batch
from learner.featurize import FeatureError
from schemas import SchemaError

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    served: Served
    job: Job
    future: asyncio.Future[Ranked]

    @property
    def n_items(self) -> int:
        return len(self.job.req.items)


class MicroBatcher:
    def __init__(
        self,
        executor: Executor,
        noise_std: float,
        generator: torch.Generator,
        max_lists: int = 16,
        max_item_slots: int = 4096,
    ) -> None:
        self.executor = executor
        self.noise_std = noise_std
        self.generator = generator  # used only on the (single) scoring thread
        self.max_lists = max(1, max_lists)
        self.max_item_slots = max_item_slots
        self._pending: deque[_Pending] = deque()
        self._running = False
        self.batches = 0
        self.lists = 0

    async def rank(self, served: Served, req: RankRequest, request_id: str, ts_ms: int) -> Ranked:
        """Rank one request; raises FeatureError/SchemaError naming the field."""
        fut: asyncio.Future[Ranked] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(served, Job(req, request_id, ts_ms), fut))
        self._dispatch()
        return await fut

    def _take(self) -> list[_Pending]:
        """The oldest request and the queued ones that share its model and fit the budget."""
        first = self._pending.popleft()
        batch = [first]
        longest = first.n_items
        kept: deque[_Pending] = deque()
        while self._pending:
            p = self._pending.popleft()
            longest_if = max(longest, p.n_items)
            fits = len(batch) < self.max_lists and longest_if * (len(batch) + 1) <= self.max_item_slots
            if p.served is first.served and fits:
                batch.append(p)
                longest = longest_if
            else:
                kept.append(p)
        self._pending = kept
        return batch

    def _dispatch(self) -> None:
        if self._running or not self._pending:
            return
        batch = self._take()
        self._running = True
        self.batches += 1
        self.lists += len(batch)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(
            self.executor,
            rank_batch,
            batch[0].served,
            [p.job for p in batch],
            self.noise_std,
            self.generator,
        )
        fut.add_done_callback(lambda f: self._finished(batch, f))

    def _finished(
        self, batch: list[_Pending], fut: asyncio.Future[list[Ranked | FeatureError | SchemaError]]
    ) -> None:
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
                for p, result in zip(batch, fut.result(), strict=True):
                    if p.future.done():  # the client went away
                        continue
                    if isinstance(result, Ranked):
                        p.future.set_result(result)
                    else:
                        p.future.set_exception(result)
        finally:
            try:
                self._dispatch()
            except RuntimeError:  # executor shut down: the node is stopping
                for p in self._pending:
                    if not p.future.done():
                        p.future.cancel()
                self._pending.clear()
