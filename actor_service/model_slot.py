"""The served models: one immutable :class:`Routing` behind one reference, swapped atomically.

A request reads ``slot.routing`` once at its start and uses the model it routes to until the end,
so it never sees half of a swap; the snapshot consumer builds each model completely (off the
request path) before offering it, and the reference is replaced in a single atomic store in
CPython. Writers (the snapshot loader thread, the decision follower on the event loop) take one
lock; readers take none.

Two modes (the node setting ``rollout``):

- ``direct``: only a newer snapshot version replaces the served one (the incumbent), so
  replaying the compacted topic (or a duplicate publication) never rolls a node back.
- ``guarded``: a verified snapshot is *held* (at most ``capacity``, the oldest held dropped first) and
  serves only once a rollout decision names it: its ``incumbent`` serves the personalized and
  holdout arms, its ``candidate`` the canary arm at the decision's ``canary_share``. Before any
  decision the node serves its base model: the snapshot it stored (the last incumbent it served)
  or else the cold-start model. A decision naming a version the node does not hold keeps the
  previous incumbent serving (and the canary arm on the incumbent) until that snapshot arrives;
  a version a ``rollback`` or ``reject_ope`` decision names, or a decision's ``rejected`` list,
  is dropped and never served again by this node.

A :class:`Served` carries the exploration it is ranked with, fixed when it is built: a snapshot's
is the one its header records (the learner's setting); the cold-start model's, and that of a
snapshot whose header predates the field, is the node's ``serve_noise_std``
(:func:`model.snapshot.exploration_of`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from actor_service.routing import Routing, resolve_holdout_weights
from actor_service.served import COLD_START_VERSION, Served
from actor_service.snapshot_store import StoredSnapshot
from model.config import config_to_dict
from model.policy import ActorConfig
from model.ranker import RankerConfig
from model.runtime import seeded
from model.scoring import ActorModel
from model.snapshot import exploration_of
from schemas import Exploration, SnapshotHeader

log = logging.getLogger(__name__)

REJECTING_DECISIONS = ("rollback", "reject_ope")
"""decisions whose ``version`` this node never serves again"""


class DecisionLike(Protocol):
    """What the slot reads of a verified ``schemas.RolloutDecision``."""

    @property
    def decision_id(self) -> str: ...
    @property
    def decided_at_ms(self) -> int: ...
    @property
    def decision(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def incumbent(self) -> int | None: ...
    @property
    def candidate(self) -> int | None: ...
    @property
    def canary_share(self) -> float: ...
    @property
    def rejected(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class Applied:
    """What applying one decision did."""

    # "applied"; ignored: "duplicate" (same decision_id), "stale" (decided before the applied one)
    status: str
    unheld: dict[str, int] = field(default_factory=dict)  # role ("incumbent"/"candidate") -> version not held


@dataclass(frozen=True)
class ArmSettings:
    """The node's holdout settings (the canary share comes with each decision)."""

    holdout_share: float = 0.0
    salt: str = "paperec"
    holdout_weights: tuple[float, ...] | None = None  # None: the incumbent header's, else uniform


class ModelSlot:
    def __init__(
        self,
        *,
        guarded: bool = False,
        arms: ArmSettings | None = None,
        capacity: int = 8,
        on_incumbent: Callable[[Served], None] | None = None,
    ) -> None:
        self.routing: Routing | None = None
        self.guarded = guarded
        self.arms = arms or ArmSettings()
        self.capacity = max(2, capacity)
        # called (outside the lock) with each new incumbent in guarded mode: the node stores it
        self.on_incumbent = on_incumbent
        self.decision: DecisionLike | None = None  # the latest applied
        self.rejected: set[int] = set()  # versions never served again (guarded)
        self._held: OrderedDict[int, Served] = OrderedDict()  # guarded: verified snapshots, oldest held first
        self._base: Served | None = None  # direct: the incumbent; guarded: what serves before a decision
        self._cold: Served | None = None  # the cold-start model (never rejected): last resort
        self._newest = COLD_START_VERSION  # the newest version ever held or offered
        self._write_lock = threading.Lock()  # writers; readers take no lock

    # ------------------------------------------------------------------ readers
    @property
    def current(self) -> Served | None:
        """The incumbent: what the personalized and holdout arms are served by."""
        routing = self.routing
        return None if routing is None else routing.incumbent

    def version(self) -> int | None:
        cur = self.current
        return None if cur is None else cur.version

    def created_at_ms(self) -> int | None:
        cur = self.current
        return None if cur is None else cur.created_at_ms

    def candidate_version(self) -> int | None:
        """The version the canary arm is served by now (None: no canary, or not held)."""
        routing = self.routing
        return None if routing is None or routing.candidate is None else routing.candidate.version

    def held_versions(self) -> list[int]:
        return list(self._held)

    def wants(self, version: int) -> bool:
        """Whether the loader should verify and build a snapshot of ``version``: in direct mode a
        version newer than the served one; in guarded mode one not held and not rejected that is
        the newest yet or named by the latest decision."""
        if not self.guarded:
            current = self.version()
            return current is None or version > current
        if version in self.rejected or version in self._held:
            return False
        d = self.decision
        return version > self._newest or (d is not None and version in (d.incumbent, d.candidate))

    # ------------------------------------------------------------------ writers
    def offer(self, served: Served) -> bool:
        """The cold-start model or the stored snapshot at start, and in direct mode every verified
        snapshot: becomes the base model if it is newer than the current one; True if it did."""
        with self._write_lock:
            if served.cold_start and self._cold is None:
                self._cold = served
            base = self._base
            if (base is not None and served.version <= base.version) or served.version in self.rejected:
                return False
            self._base = served
            self._newest = max(self._newest, served.version)
            if self.guarded and not served.cold_start:
                self._hold(served)
            changed = self._reroute()
        self._tell(changed)
        return True

    def hold(self, served: Served) -> bool:
        """Guarded: keep a verified snapshot from the topic; it serves once a decision names it
        (at once if the latest one does). Direct: :meth:`offer`. True if it was taken."""
        if not self.guarded:
            return self.offer(served)
        with self._write_lock:
            if served.version in self.rejected or served.version in self._held:
                return False
            self._hold(served)
            changed = self._reroute()
        self._tell(changed)
        return True

    def apply(self, decision: DecisionLike) -> Applied:
        """Apply a verified rollout decision (guarded mode): the latest one is the serving state."""
        with self._write_lock:
            cur = self.decision
            if cur is not None and decision.decision_id == cur.decision_id:
                return Applied("duplicate")
            if cur is not None and decision.decided_at_ms < cur.decided_at_ms:
                return Applied("stale")  # a replayed older record must not undo a newer decision
            self.decision = decision
            self.rejected.update(decision.rejected)
            if decision.decision in REJECTING_DECISIONS:
                self.rejected.add(decision.version)
            for version in [v for v in self._held if v in self.rejected]:
                del self._held[version]
            changed = self._reroute()
            unheld = {
                role: v
                for role, v in (("incumbent", decision.incumbent), ("candidate", decision.candidate))
                if v is not None and v not in self.rejected and self._find(v) is None
            }
        self._tell(changed)
        return Applied("applied", unheld)

    # ------------------------------------------------------------------ under the lock
    def _find(self, version: int) -> Served | None:
        held = self._held.get(version)
        if held is not None:
            return held
        base = self._base
        return base if base is not None and base.version == version else None

    def _hold(self, served: Served) -> None:
        self._held[served.version] = served
        self._held.move_to_end(served.version)
        self._newest = max(self._newest, served.version)
        pinned = self._pinned()
        while len(self._held) > self.capacity:
            victim = next((v for v in self._held if v not in pinned), None)
            if victim is None:
                break
            del self._held[victim]

    def _pinned(self) -> set[int | None]:
        d, r = self.decision, self.routing
        pinned: set[int | None] = set()
        if d is not None:
            pinned |= {d.incumbent, d.candidate}
        if r is not None:
            pinned |= {r.incumbent.version, None if r.candidate is None else r.candidate.version}
        return pinned

    def _reroute(self) -> Served | None:
        """Rebuild the routing from the latest decision and the held snapshots; the new incumbent
        if it changed (else None)."""
        d, prev = self.decision, self.routing
        incumbent = self._base
        if self.guarded and d is not None and d.incumbent is not None:
            # the named incumbent; while it is not held, the one serving now keeps serving
            incumbent = self._find(d.incumbent) or (prev.incumbent if prev is not None else self._base)
        if incumbent is not None and incumbent.version in self.rejected:
            incumbent = self._cold
        if incumbent is None:
            self.routing = None
            return None
        candidate, share = None, 0.0
        if self.guarded and d is not None and d.candidate is not None and d.canary_share > 0.0:
            share = d.canary_share
            found = self._find(d.candidate)
            if found is not None and found.version not in self.rejected and found is not incumbent:
                candidate = found
        if (
            prev is not None
            and prev.incumbent is incumbent
            and prev.candidate is candidate
            and prev.canary_share == share
        ):
            return None
        self.routing = Routing(
            incumbent,
            candidate,
            share,
            self.arms.holdout_share,
            self.arms.salt,
            resolve_holdout_weights(incumbent, self.arms.holdout_weights),
            log_arms=self.guarded or self.arms.holdout_share > 0.0,
        )
        return None if prev is not None and prev.incumbent is incumbent else incumbent

    def _tell(self, incumbent: Served | None) -> None:
        if incumbent is not None and self.guarded and self.on_incumbent is not None:
            self.on_incumbent(incumbent)


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


def served_snapshot(
    header: SnapshotHeader, model: ActorModel, fallback: Exploration, raw: StoredSnapshot | None = None
) -> Served:
    """A verified snapshot, served with its header's exploration (``fallback``, the node's
    setting, for a header from before the field existed); ``raw``: the record, kept to store it."""
    return Served(
        model=model,
        version=header.snapshot_version,
        objectives=tuple(model.ranker.cfg.objectives),
        exploration=exploration_of(header, fallback),
        created_at_ms=header.created_at_ms,
        training_step=header.training_step,
        global_weights=header.global_weights,
        raw=raw,
    )
