"""One servable model: a verified snapshot (or the cold-start model) with what serving needs to
know about it (see :mod:`actor_service.model_slot`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from actor_service.snapshot_store import StoredSnapshot
from model.scoring import ActorModel
from schemas import Exploration

COLD_START_VERSION = 0
"""snapshot_version of lists ranked by the cold-start model (the impression schema's 'no snapshot')."""


@dataclass(frozen=True)
class Served:
    model: ActorModel
    version: int
    objectives: tuple[str, ...]
    exploration: Exploration  # what rank_batch explores with (see actor_service.model_slot)
    created_at_ms: int | None = None  # the learner's creation time; None for the cold-start model
    training_step: int = 0
    loaded_at: float = field(default_factory=time.time)
    # the header's mean weights of the weight generator (the holdout's default); None: none recorded
    global_weights: tuple[float, ...] | None = None
    # the record as received (guarded mode: stored when it becomes the incumbent)
    raw: StoredSnapshot | None = field(default=None, repr=False, compare=False)

    @property
    def cold_start(self) -> bool:
        return self.version == COLD_START_VERSION
