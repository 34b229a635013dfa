"""The user simulator: a seeded population with latent interests and a hidden trade-off between
click appeal and long reads, a catalog whose clickbait and quality partly conflict, list-wise
sessions with position bias, limited clicks, dwell given a click and a leave model.

See docs/simulator.md for the equations. The core (config, world, behaviour, sessions, logs)
needs numpy only; ``simulator.model_policy`` and ``paperec.evaluation`` add torch.
"""

from simulator.behaviour import Response, respond
from simulator.config import OBJECTIVES, SimulatorConfig
from simulator.policies import HeuristicPolicy, RandomPolicy
from simulator.session import Candidate, ListRequest, ListResult, Policy, Ranking, SessionSpec, Simulator
from simulator.transitions import TransitionLinker, make_transition
from simulator.world import World

__all__ = [
    "OBJECTIVES",
    "Candidate",
    "HeuristicPolicy",
    "ListRequest",
    "ListResult",
    "Policy",
    "RandomPolicy",
    "Ranking",
    "Response",
    "SessionSpec",
    "Simulator",
    "SimulatorConfig",
    "TransitionLinker",
    "World",
    "make_transition",
    "respond",
]
