"""Which model and which weights serve one request: the arms of a guarded rollout.

A :class:`Routing` is the node's whole serving state at one moment (immutable, swapped as one
reference by :class:`actor_service.model_slot.ModelSlot`): the incumbent snapshot, the canary's
candidate snapshot and its share, the holdout share and salt, and the holdout's fixed weights. A
request reads it once and calls :meth:`Routing.route` with its user id (one hash, two while a
canary runs: :func:`actor_service.arms.assign_arm`); the :class:`Route` it gets is prebuilt, so
routing allocates nothing per request.

- ``personalized``: the incumbent's ranker with its weight generator (and its exploration);
- ``holdout``: the incumbent's ranker with fixed objective weights, no exploration, so the lift
  of personalized over holdout isolates the weight generator;
- ``canary``: the candidate snapshot (ranker and weight generator).

A user whose arm is ``canary`` while the candidate's snapshot is not (yet) held by this node is
served as ``personalized`` (and the impression says so: an impression's arm is the treatment
actually served), flagged ``fallback`` so the node counts it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from actor_service.arms import CANARY, HOLDOUT, PERSONALIZED, assign_arm
from actor_service.served import Served

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """How one request is served."""

    served: Served
    arm: str  # arms.HOLDOUT, PERSONALIZED or CANARY: the treatment served (and logged)
    fixed_weights: torch.Tensor | None = None  # (K,) float32: the holdout's weights; None: the generator's
    fallback: bool = False  # assigned to the canary, served by the incumbent (candidate not held)


@dataclass(frozen=True)
class Routing:
    incumbent: Served  # personalized and holdout arms
    candidate: Served | None = None  # canary arm; None: no canary, or its snapshot not held here
    canary_share: float = 0.0  # share of the non-holdout users in the canary arm (0: no canary)
    holdout_share: float = 0.0
    salt: str = "paperec"
    holdout_weights: tuple[float, ...] = ()  # resolved (see resolve_holdout_weights); () = uniform
    log_arms: bool = False  # impressions name their arm (guarded mode, or a holdout); else None
    personalized: Route = field(init=False, repr=False, compare=False)
    holdout: Route = field(init=False, repr=False, compare=False)
    canary: Route = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        k = len(self.incumbent.objectives)
        weights = self.holdout_weights or (1.0 / k,) * k
        set_ = object.__setattr__  # frozen: the prebuilt routes are set once, here
        set_(self, "personalized", Route(self.incumbent, PERSONALIZED))
        set_(self, "holdout", Route(self.incumbent, HOLDOUT, torch.tensor(weights, dtype=torch.float32)))
        if self.candidate is not None:
            set_(self, "canary", Route(self.candidate, CANARY))
        else:
            set_(self, "canary", Route(self.incumbent, PERSONALIZED, fallback=True))

    def route(self, user_id: str) -> Route:
        arm = assign_arm(user_id, self.salt, self.holdout_share, self.canary_share)
        if arm == HOLDOUT:
            return self.holdout
        if arm == CANARY:
            return self.canary
        return self.personalized


def resolve_holdout_weights(incumbent: Served, setting: tuple[float, ...] | None) -> tuple[float, ...]:
    """The holdout's weights on ``incumbent``: the ``holdout_weights`` setting, else the header's
    ``global_weights`` (the learner's mean weights), else uniform (``()``). A vector whose length
    is not the incumbent's number of objectives is skipped (logged: a setting made for another
    model); the header's is normalized to sum 1."""
    k = len(incumbent.objectives)
    if setting is not None:
        if len(setting) == k:
            return setting
        log.error(
            "holdout_weights has %d values, snapshot %d has %d objectives %s: not used",
            len(setting),
            incumbent.version,
            k,
            list(incumbent.objectives),
        )
    learned = incumbent.global_weights
    if learned is not None and len(learned) == k and sum(learned) > 0 and min(learned) >= 0:
        total = sum(learned)
        return tuple(w / total for w in learned)
    return ()
