"""List-wise sessions: the simulator asks a policy to rank candidates, shows the top of the
ranking, and lets the user respond, list after list, until the user leaves.

The policy interface is the one the serving nodes offer (rank a request's candidates, say which
objective weights were used), so the same loop drives offline evaluation in process and the
live demo over HTTP. Each list becomes a :class:`schemas.Impression` plus clicks and dwells.

Each session draws from its own random stream (seed, stream id, session index): session i sees
the same user and the same luck whatever happened in other sessions, so two policies run with
the same seed are compared on common random numbers.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from schemas import Click, Dwell, Impression, Item
from simulator.behaviour import Response, respond
from simulator.config import OBJECTIVES, SimulatorConfig
from simulator.world import STREAM_BEHAVIOUR, STREAM_SCHEDULE, World, item_id, stream, user_id

log = logging.getLogger(__name__)

Event = Impression | Click | Dwell


@dataclass(frozen=True)
class Candidate:
    item_id: str
    features: tuple[float, ...]


@dataclass(frozen=True)
class ListRequest:
    """What a policy sees: the user's observable state and the candidates to rank."""

    request_id: str
    user_id: str
    ts_ms: int
    user_features: tuple[float, ...]
    history: tuple[str, ...]
    context: tuple[float, ...]
    candidates: tuple[Candidate, ...]

    def rank_request_body(self, top_k: int | None = None) -> dict[str, Any]:
        """The JSON body of the serving nodes' ``POST /rank`` for this request (the live demo)."""
        body: dict[str, Any] = {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "user_features": list(self.user_features),
            "history": list(self.history),
            "context": list(self.context),
            "items": [{"item_id": c.item_id, "features": list(c.features)} for c in self.candidates],
        }
        if top_k is not None:
            body["top_k"] = top_k
        return body


@dataclass(frozen=True)
class Ranking:
    """A policy's answer: candidate indices best first (the top ``list_len`` are shown) and the
    objective weights that produced the ranking, with the exploration noise applied to them and
    the log-propensity of those weights (None: served without noise); the impression logs all."""

    order: tuple[int, ...]
    weights: tuple[float, ...]
    noise: tuple[float, ...]
    objectives: tuple[str, ...] = OBJECTIVES
    snapshot_version: int = 0
    log_propensity: float | None = None


class Policy(Protocol):
    def rank(self, requests: Sequence[ListRequest]) -> Sequence[Ranking]:
        """One ranking per request, in request order (batched: models score many lists at once)."""
        ...


@dataclass(frozen=True)
class SessionSpec:
    index: int  # unique within one simulator stream; seeds the session's random stream
    user: int
    start_ms: int


@dataclass
class Session:
    spec: SessionSpec
    rng: np.random.Generator
    ts_ms: int
    depth: int = 0
    prev_clicks: int = 0
    prev_dwell_s: float = 0.0
    done: bool = False
    candidates: np.ndarray | None = None  # catalog indices of the open request's candidates


@dataclass(frozen=True)
class ListResult:
    """One shown list and the user's response to it."""

    impression: Impression
    response: Response
    session: int
    user: int
    shown: np.ndarray  # catalog indices in shown order
    done: bool  # the last list of its session

    def events(self) -> list[Event]:
        """The impression, then each click and its dwell, in timestamp order."""
        imp, r = self.impression, self.response
        out: list[Event] = [imp]
        for pos in np.flatnonzero(r.clicks):
            k = int(pos)
            item, ts = imp.items[k].item_id, imp.ts_ms + int(r.click_offset_ms[k])
            common = dict(request_id=imp.request_id, user_id=imp.user_id, item_id=item, position=k)
            out.append(Click(ts_ms=ts, **common))  # type: ignore[arg-type]
            out.append(Dwell(ts_ms=ts + int(r.dwell_ms[k]), dwell_ms=int(r.dwell_ms[k]), **common))  # type: ignore[arg-type]
        out.sort(key=lambda e: e.ts_ms)  # stable: the impression stays first
        return out


class Simulator:
    """Serves sessions of one world. ``stream_id`` separates e.g. training and evaluation luck."""

    def __init__(self, cfg: SimulatorConfig, world: World | None = None, stream_id: int = 0) -> None:
        self.cfg = cfg
        self.world = world if world is not None else World.build(cfg)
        if self.world.cfg != cfg:
            raise ValueError("world was built from a different config")
        self.stream_id = stream_id
        self.histories: dict[int, deque[str]] = {}

    # ------------------------------------------------------------------ sessions
    def session_rng(self, index: int) -> np.random.Generator:
        return stream(self.cfg.seed, STREAM_BEHAVIOUR, self.stream_id, index)

    def random_session(self, index: int, start_ms: int = 0) -> SessionSpec:
        """Session ``index`` of a user drawn uniformly from a stream of its own."""
        user = int(
            stream(self.cfg.seed, STREAM_BEHAVIOUR, self.stream_id, index, 0).integers(self.cfg.n_users)
        )
        return SessionSpec(index, user, start_ms + 1000 * index)

    def random_sessions(self, n: int, first_index: int = 0, start_ms: int = 0) -> list[SessionSpec]:
        return [self.random_session(i, start_ms) for i in range(first_index, first_index + n)]

    def endless_sessions(self, first_index: int = 0, start_ms: int = 0) -> Iterator[SessionSpec]:
        """Random sessions without end (online training draws as many as its budget needs)."""
        return (self.random_session(i, start_ms) for i in itertools.count(first_index))

    def user_sessions(
        self, users: Sequence[int], per_user: int, start_ms: int, spacing_ms: int = 3_600_000
    ) -> list[SessionSpec]:
        """``per_user`` sessions of every user, an hour apart (jittered), in start-time order."""
        rng = stream(self.cfg.seed, STREAM_SCHEDULE, self.stream_id)
        specs: list[SessionSpec] = []
        for j in range(per_user):
            for u in users:
                jitter = int(rng.integers(0, spacing_ms // 2))
                specs.append(SessionSpec(len(specs), int(u), start_ms + j * spacing_ms + jitter))
        specs.sort(key=lambda s: (s.start_ms, s.index))
        return specs

    def start(self, spec: SessionSpec) -> Session:
        return Session(spec=spec, rng=self.session_rng(spec.index), ts_ms=spec.start_ms)

    # ------------------------------------------------------------------ one list
    def request(self, session: Session) -> ListRequest:
        cfg, w = self.cfg, self.world
        u = session.spec.user
        # retrieval: Gumbel top-k = sampling without replacement with P(i) ~ exp(temp * interest)
        observed = w.users.features[u, : cfg.n_topics]
        logits = cfg.retrieval_temperature * observed[w.items.topic]
        keys = logits + session.rng.gumbel(size=cfg.n_items)
        picked = np.sort(np.argpartition(-keys, cfg.n_candidates - 1)[: cfg.n_candidates])
        history = self.histories.get(u, ())
        context = (
            session.depth / cfg.max_lists,
            session.prev_clicks / cfg.max_clicks,
            1.0 - float(np.exp(-session.prev_dwell_s / cfg.dwell_satisfied_s)),
        )
        feats = w.items.features[picked].tolist()
        session.candidates = picked
        return ListRequest(
            request_id=f"r{cfg.seed}-{self.stream_id}-{session.spec.index}-{session.depth}",
            user_id=user_id(u),
            ts_ms=session.ts_ms,
            user_features=tuple(w.users.features[u].tolist()),
            history=tuple(history),
            context=context,
            candidates=tuple(
                Candidate(item_id(int(i)), tuple(f)) for i, f in zip(picked, feats, strict=True)
            ),
        )

    def step(self, session: Session, request: ListRequest, ranking: Ranking) -> ListResult:
        """Show the top of ``ranking`` for ``request`` and let the user respond."""
        cfg = self.cfg
        n_shown = min(cfg.list_len, len(request.candidates))
        order = list(ranking.order)[:n_shown]
        if len(order) < n_shown or len(set(order)) != len(order):
            raise ValueError(
                f"ranking must order at least {n_shown} distinct candidates, got {ranking.order}"
            )
        if any(not 0 <= k < len(request.candidates) for k in order):
            raise ValueError(f"ranking refers to candidates outside 0..{len(request.candidates) - 1}")
        if session.candidates is None or len(session.candidates) != len(request.candidates):
            raise ValueError("step() needs the request this session made last")
        chosen = [request.candidates[k] for k in order]
        shown = session.candidates[order]
        session.candidates = None
        response = respond(self.world, session.spec.user, shown, session.rng)
        impression = Impression(
            request_id=request.request_id,
            user_id=request.user_id,
            ts_ms=request.ts_ms,
            snapshot_version=ranking.snapshot_version,
            objectives=ranking.objectives,
            weights=ranking.weights,
            noise=ranking.noise,
            user_features=request.user_features,
            history=request.history,
            context=request.context,
            items=tuple(
                Item(item_id=c.item_id, position=p, features=c.features) for p, c in enumerate(chosen)
            ),
            log_propensity=ranking.log_propensity,
        )
        history = self.histories.setdefault(session.spec.user, deque(maxlen=cfg.history_len))
        history.extend(impression.items[int(k)].item_id for k in np.flatnonzero(response.clicks))
        session.depth += 1
        session.ts_ms += response.duration_ms + cfg.gap_ms
        session.prev_clicks, session.prev_dwell_s = response.n_clicks, response.total_dwell_s
        session.done = response.leave or session.depth >= cfg.max_lists
        return ListResult(impression, response, session.spec.index, session.spec.user, shown, session.done)

    # ------------------------------------------------------------------ many sessions
    def run(self, policy: Policy, specs: Iterable[SessionSpec], parallel: int = 64) -> Iterator[ListResult]:
        """Run sessions, ``parallel`` at a time in lock step (one batched policy call per round)."""
        pending = iter(specs)
        active: list[Session] = []
        exhausted = False
        while True:
            while not exhausted and len(active) < parallel:
                spec = next(pending, None)
                if spec is None:
                    exhausted = True
                else:
                    active.append(self.start(spec))
            if not active:
                return
            requests = [self.request(s) for s in active]
            rankings = policy.rank(requests)
            if len(rankings) != len(requests):
                raise ValueError(f"policy returned {len(rankings)} rankings for {len(requests)} requests")
            for session, req, ranking in zip(active, requests, rankings, strict=True):
                yield self.step(session, req, ranking)
            active = [s for s in active if not s.done]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What is not a function of the config: the users' click histories."""
        return {
            "config": self.cfg.to_dict(),
            "stream_id": self.stream_id,
            "histories": {str(u): list(h) for u, h in self.histories.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != self.cfg.to_dict():
            raise ValueError("state was saved by a simulator with a different config")
        self.stream_id = int(state["stream_id"])
        self.histories = {
            int(u): deque(h, maxlen=self.cfg.history_len) for u, h in state["histories"].items()
        }
