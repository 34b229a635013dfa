"""The served model: one immutable :class:`Served` behind one reference, swapped atomically.

A request reads ``slot.current`` once at its start and uses that object to the end, so it never
sees half of a swap; the snapshot consumer builds the next model completely (off the request
path) before replacing the reference, which is a single atomic store in CPython. Only a newer
snapshot version replaces the served one, so replaying the compacted topic (or a duplicate
publication) never rolls a node back.

A :class:`Served` carries the exploration it is ranked with, fixed when it is built: a snapshot's
is the one its header records (the learner's setting); the cold-start model's, and that of a
snapshot whose header predates the field, is the node's ``serve_noise_std``
(:func:`model.snapshot.exploration_of`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from model.config import config_to_dict
from model.policy import ActorConfig
from model.ranker import RankerConfig
from model.runtime import seeded
from model.scoring import ActorModel
from model.snapshot import exploration_of
from schemas import Exploration, SnapshotHeader

log = logging.getLogger(__name__)

COLD_START_VERSION = 0
"""snapshot_version of lists ranked by the cold-start model (the impression schema's 'no snapshot')."""


@dataclass(frozen=True)
class Served:
    model: ActorModel
    version: int
    objectives: tuple[str, ...]
    exploration: Exploration  # what rank_batch explores with (see the module docstring)
    created_at_ms: int | None = None  # the learner's creation time; None for the cold-start model
    training_step: int = 0
    loaded_at: float = field(default_factory=time.time)

    @property
    def cold_start(self) -> bool:
        return self.version == COLD_START_VERSION


class ModelSlot:
    def __init__(self) -> None:
        self.current: Served | None = None
        self._write_lock = threading.Lock()  # writers compare-and-swap; readers take no lock

    def offer(self, served: Served) -> bool:
        """Swap ``served`` in if it is newer than the current model; True if it was."""
        with self._write_lock:
            cur = self.current
            if cur is not None and served.version <= cur.version:
                return False
            self.current = served
        return True

    def version(self) -> int | None:
        cur = self.current
        return None if cur is None else cur.version

    def created_at_ms(self) -> int | None:
        cur = self.current
        return None if cur is None else cur.created_at_ms


def check_servable(model: ActorModel) -> None:
    """Serving contract beyond the snapshot format: the weight generator must output objective
    weights on the simplex (the logged action), one per ranker objective."""
    if model.actor.cfg.head != "simplex":
        raise ValueError(f"actor head is {model.actor.cfg.head!r}; serving needs 'simplex' objective weights")
    if model.actor.cfg.action_dim != len(model.ranker.cfg.objectives):
        raise ValueError("actor action_dim differs from the number of ranker objectives")


def default_model_config() -> dict[str, Any]:
    ranker = RankerConfig()
    actor = ActorConfig(obs_dim=ranker.d_model, action_dim=len(ranker.objectives))
    return {"ranker": config_to_dict(ranker), "actor": config_to_dict(actor)}


def cold_start_config(raw_json: str) -> dict[str, Any]:
    """The cold-start model config: library defaults, with the ranker and actor fields of
    ``raw_json`` (a JSON object like a snapshot header's ``model_config``) overriding them. The
    actor's ``obs_dim``/``action_dim`` follow the ranker unless given."""
    cfg = default_model_config()
    if raw_json.strip():
        given = json.loads(raw_json)
        if not isinstance(given, Mapping) or set(given) - {"ranker", "actor"}:
            raise ValueError('cold-start config must be a JSON object with keys "ranker" and/or "actor"')
        cfg["ranker"].update(given.get("ranker", {}))
        cfg["actor"]["obs_dim"] = cfg["ranker"]["d_model"]
        cfg["actor"]["action_dim"] = len(cfg["ranker"]["objectives"])
        cfg["actor"].update(given.get("actor", {}))
    return cfg


def cold_start_model(seed: int, exploration: Exploration, raw_json: str = "") -> Served:
    """The deterministic initial model: same seed and config give the same weights on every node,
    so all nodes rank alike before the first snapshot. Served with snapshot_version 0 and
    ``exploration`` (the node's setting: no learner has recorded one yet)."""
    cfg = cold_start_config(raw_json)
    with seeded(seed):
        model = ActorModel.from_config(cfg)
    check_servable(model)
    return Served(
        model=model,
        version=COLD_START_VERSION,
        objectives=tuple(model.ranker.cfg.objectives),
        exploration=exploration,
    )


def served_snapshot(header: SnapshotHeader, model: ActorModel, fallback: Exploration) -> Served:
    """A verified snapshot, served with its header's exploration (``fallback``, the node's
    setting, for a header from before the field existed)."""
    return Served(
        model=model,
        version=header.snapshot_version,
        objectives=tuple(model.ranker.cfg.objectives),
        exploration=exploration_of(header, fallback),
        created_at_ms=header.created_at_ms,
        training_step=header.training_step,
    )
