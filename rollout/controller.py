"""The rollout controller's state machine: pure, its clock and its off-policy gate injected.

    no incumbent --(a verified snapshot)--> bootstrap: the newest one becomes the incumbent
    idle --(a newer verified snapshot, not rejected)--> OPE gate --(worse)--> reject_ope
                                                               \\--(ok)--> canary(v)
    canary(v) --(every objective's lower bound > -max_drop, min_lists)--> promote: v is the incumbent
              --(some objective's upper bound < -max_drop; or max_lists)--> rollback: v is rejected

Inputs are calls: :meth:`Controller.snapshot_verified` (a snapshot on the topic verified with the
accepted keys), :meth:`Controller.list_outcome` (a joined list, with the impression's arm and
snapshot version), :meth:`Controller.recover` (the control topic's latest decision, at start).
:meth:`Controller.step` returns the next decision (or None) and moves the serving state at once;
the service writes it. Every input is a plain record, so the same records give the same
decisions (tests/unit/test_rollout_controller.py).

The canary compares lists of the same period: canary lists (arm ``canary``, the candidate's
version) against personalized lists (arm ``personalized``, the incumbent's version), both served
at or after ``canary_started_at_ms``. Lists a node served to canary users with the incumbent (it
did not hold the candidate yet) and holdout lists count in neither arm. A list outcome seen twice
(the streams worker re-emits after a restart) counts once: request ids are remembered per canary.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from rollout.sequential import PROMOTE, ROLLBACK, ArmSums, SequentialConfig, reason, verdict
from schemas import ListOutcome, RolloutDecision
from schemas.rollout import MAX_REJECTED

log = logging.getLogger(__name__)

OBJECTIVES = ("click", "dwell")
"""guarded objectives, per impression: clicks, dwell seconds (the list outcome's feedback)"""


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class ControllerConfig:
    """The controller's knobs (from base.settings: ``canary_share``, ``rollout_*``)."""

    canary_share: float = 0.2
    """share of non-holdout users a candidate serves during its canary"""
    test: SequentialConfig = field(default_factory=SequentialConfig)
    """the sequential test (alpha, max_drop, min_lists, max_lists)"""
    ope_lists: int = 2_000
    """recent personalized lists the off-policy gate judges a candidate on (0 = no gate)"""
    ope_min_lists: int = 500
    """a candidate waits for this many of the incumbent's logged lists before it is judged (and so
    before its canary): a gate without logs would wave every candidate through"""

    def __post_init__(self) -> None:
        if not 0.0 < self.canary_share <= 1.0:
            raise ValueError(f"canary_share must be in (0, 1], got {self.canary_share}")
        if self.ope_lists < 0:
            raise ValueError(f"rollout_ope_lists must be >= 0, got {self.ope_lists}")
        if self.ope_min_lists < 0:
            raise ValueError(f"ope_min_lists must be >= 0, got {self.ope_min_lists}")

    @classmethod
    def from_settings(cls, settings: Any) -> ControllerConfig:
        s = settings
        test = SequentialConfig(
            alpha=s.rollout_alpha,
            max_drop=s.rollout_max_drop,
            min_lists=s.rollout_min_lists,
            max_lists=s.rollout_max_lists,
            burn_in_lists=min(SequentialConfig.burn_in_lists, s.rollout_min_lists),
        )
        return cls(
            canary_share=s.canary_share,
            test=test,
            ope_lists=s.rollout_ope_lists,
            ope_min_lists=min(cls.ope_min_lists, s.rollout_ope_lists),
        )


@dataclass(frozen=True)
class GateVerdict:
    """What the off-policy gate said about a candidate (``rollout.ope.GateResult`` fits)."""

    ok: bool
    evidence: dict[str, float]
    reason: str


class OpeGate(Protocol):
    def __call__(self, version: int, logged: Sequence[ListOutcome]) -> GateVerdict: ...


@dataclass(frozen=True)
class Decision:
    """A decision before it is signed: the fields of ``schemas.make_decision`` but the key."""

    decision_id: str
    decided_at_ms: int
    decision: str
    version: int
    incumbent: int | None
    candidate: int | None
    canary_share: float
    canary_started_at_ms: int | None
    reason: str
    evidence: dict[str, float]
    rejected: tuple[int, ...]

    def fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class ServingState:
    """What the latest decision says is served (the whole state the control topic holds)."""

    incumbent: int | None = None
    candidate: int | None = None
    canary_share: float = 0.0
    canary_started_at_ms: int | None = None
    rejected: tuple[int, ...] = ()
    decision_id: str | None = None


@dataclass(frozen=True)
class Counted:
    """Why a list outcome did or did not count (for metrics)."""

    arm: str  # "canary", "personalized", or why not: "idle", "early", "other", "duplicate"


class Controller:
    """See the module docstring. Single-threaded: the service calls it from one loop."""

    def __init__(
        self,
        cfg: ControllerConfig,
        *,
        clock: Callable[[], int] = wall_ms,
        ope_gate: OpeGate | None = None,
        objectives: Sequence[str] = OBJECTIVES,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.ope_gate = ope_gate if cfg.ope_lists > 0 else None
        self.objectives = tuple(objectives)
        self.serving = ServingState()
        self.verified: set[int] = set()  # snapshot versions seen and verified
        self.canary = ArmSums(len(self.objectives))
        self.personalized = ArmSums(len(self.objectives))
        self._counted: set[str] = set()  # request ids counted in this canary
        # the incumbent's recent personalized lists with their propensities: the gate's logs
        self.logged: deque[ListOutcome] = deque(maxlen=max(1, cfg.ope_lists))
        self.last_verdict: dict[str, float] = {}

    # ------------------------------------------------------------------ inputs
    def recover(self, latest: RolloutDecision | None) -> None:
        """Start from the control topic's latest verified decision (None: nothing decided yet).
        An open canary starts counting afresh: the service re-reads its lists from
        :attr:`replay_from_ms`."""
        if latest is None:
            return
        self.serving = ServingState(
            incumbent=latest.incumbent,
            candidate=latest.candidate,
            canary_share=latest.canary_share,
            canary_started_at_ms=latest.canary_started_at_ms,
            rejected=tuple(latest.rejected),
            decision_id=latest.decision_id,
        )
        for v in (latest.incumbent, latest.candidate):
            if v is not None:
                self.verified.add(v)
        self._reset_canary()
        log.info(
            "recovered from decision %s: incumbent %s, candidate %s (canary since %s), rejected %s",
            latest.decision_id,
            latest.incumbent,
            latest.candidate,
            latest.canary_started_at_ms,
            list(latest.rejected),
        )

    @property
    def replay_from_ms(self) -> int | None:
        """Where list outcomes must be read from: the open canary's start (None: no canary)."""
        return self.serving.canary_started_at_ms if self.serving.candidate is not None else None

    def snapshot_verified(self, version: int) -> None:
        self.verified.add(version)

    def list_outcome(self, outcome: ListOutcome) -> Counted:
        """Count one joined list in its arm (see the module docstring)."""
        imp = outcome.impression
        s = self.serving
        if imp.arm == "personalized" and imp.snapshot_version == s.incumbent and self.cfg.ope_lists:
            self.logged.append(outcome)
        if s.candidate is None or s.canary_started_at_ms is None:
            return Counted("idle")
        if outcome.ts_ms < s.canary_started_at_ms:
            return Counted("early")
        if imp.arm == "canary" and imp.snapshot_version == s.candidate:
            arm = self.canary
        elif imp.arm == "personalized" and imp.snapshot_version == s.incumbent:
            arm = self.personalized
        else:
            return Counted("other")
        if outcome.request_id in self._counted:
            return Counted("duplicate")
        self._counted.add(outcome.request_id)
        arm.add(len(imp.items), list_values(outcome), unit=outcome.user_id)
        return Counted(imp.arm or "")

    # ------------------------------------------------------------------ decisions
    def step(self) -> Decision | None:
        """The next decision, if one is due; the serving state moves to it at once."""
        s = self.serving
        if s.incumbent is None:
            newest = self._newest_candidate(above=0)
            if newest is None:
                return None
            return self._decide(
                "bootstrap",
                newest,
                replace(s, incumbent=newest),
                f"no incumbent yet: snapshot {newest}, the newest verified one, serves everyone",
                {},
            )
        if s.candidate is None:
            newest = self._newest_candidate(above=s.incumbent)
            if newest is None or not self.gate_ready():
                return None
            return self._start_canary(newest)
        v = verdict(self.objectives, self.canary, self.personalized, self.cfg.test)
        self.last_verdict = v.evidence()
        if v.decision == PROMOTE:
            after = replace(s, incumbent=s.candidate, candidate=None, canary_started_at_ms=None)
            return self._decide("promote", s.candidate, after, reason(v, self.cfg.test), v.evidence())
        if v.decision == ROLLBACK:
            after = replace(
                s, candidate=None, canary_started_at_ms=None, rejected=_rejected(s.rejected, s.candidate)
            )
            return self._decide("rollback", s.candidate, after, reason(v, self.cfg.test), v.evidence())
        return None

    def gate_ready(self) -> bool:
        """The off-policy gate (if any) has the incumbent's logged lists it needs to judge."""
        return self.ope_gate is None or len(self.logged) >= self.cfg.ope_min_lists

    def _start_canary(self, version: int) -> Decision:
        s = self.serving
        evidence: dict[str, float] = {}
        gate_reason = ""
        if self.ope_gate is not None:
            result = self.ope_gate(version, list(self.logged))
            evidence, gate_reason = dict(result.evidence), result.reason
            if not result.ok:
                after = replace(s, rejected=_rejected(s.rejected, version))
                return self._decide("reject_ope", version, after, gate_reason, evidence)
        now = self.clock()
        after = replace(s, candidate=version, canary_share=self.cfg.canary_share, canary_started_at_ms=now)
        text = (
            f"snapshot {version} serves {self.cfg.canary_share:.0%} of non-holdout users beside "
            f"incumbent {s.incumbent}"
        )
        why = f"{text}; {gate_reason}" if gate_reason else text
        return self._decide("canary", version, after, why, evidence, now)

    def _decide(
        self,
        kind: str,
        version: int,
        after: ServingState,
        why: str,
        evidence: dict[str, float],
        now: int | None = None,
    ) -> Decision:
        now = self.clock() if now is None else now
        decision_id = f"{version}-{kind}-{now}"
        self.serving = replace(after, decision_id=decision_id)
        if kind in ("promote", "bootstrap"):
            self.logged.clear()  # the gate judges against the new incumbent's own lists
        self._reset_canary()
        a = self.serving
        log.info("decision %s: %s", decision_id, why)
        return Decision(
            decision_id=decision_id,
            decided_at_ms=now,
            decision=kind,
            version=version,
            incumbent=a.incumbent,
            candidate=a.candidate,
            canary_share=a.canary_share,
            canary_started_at_ms=a.canary_started_at_ms,
            reason=why,
            evidence={k: float(x) for k, x in evidence.items()},
            rejected=a.rejected,
        )

    def _newest_candidate(self, above: int) -> int | None:
        rejected = set(self.serving.rejected)
        eligible = [v for v in self.verified if v > above and v not in rejected]
        return max(eligible) if eligible else None

    def _reset_canary(self) -> None:
        self.canary = ArmSums(len(self.objectives))
        self.personalized = ArmSums(len(self.objectives))
        self._counted = set()
        self.last_verdict = {}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        s = self.serving
        return {
            "serving": {
                "incumbent": s.incumbent,
                "candidate": s.candidate,
                "canary_share": s.canary_share,
                "canary_started_at_ms": s.canary_started_at_ms,
                "rejected": list(s.rejected),
                "decision_id": s.decision_id,
            },
            "verified": sorted(self.verified),
            "canary": self.canary.state_dict(),
            "personalized": self.personalized.state_dict(),
            "counted": sorted(self._counted),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sv = state["serving"]
        self.serving = ServingState(
            incumbent=sv["incumbent"],
            candidate=sv["candidate"],
            canary_share=float(sv["canary_share"]),
            canary_started_at_ms=sv["canary_started_at_ms"],
            rejected=tuple(sv["rejected"]),
            decision_id=sv["decision_id"],
        )
        self.verified = set(state["verified"])
        self.canary.load_state_dict(state["canary"])
        self.personalized.load_state_dict(state["personalized"])
        self._counted = set(state["counted"])


def list_values(outcome: ListOutcome) -> tuple[float, float]:
    """A list's totals per objective: its clicks and its dwell seconds."""
    return float(sum(outcome.clicks)), sum(outcome.dwell_ms) / 1000.0


def _rejected(previous: tuple[int, ...], version: int) -> tuple[int, ...]:
    """``previous`` plus ``version``, the most recent MAX_REJECTED kept."""
    kept = [v for v in previous if v != version]
    return (*kept, version)[-MAX_REJECTED:]


__all__ = [
    "OBJECTIVES",
    "Controller",
    "ControllerConfig",
    "Decision",
    "GateVerdict",
    "OpeGate",
    "ServingState",
    "list_values",
    "wall_ms",
]
