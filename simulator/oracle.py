"""Oracle policies that rank with the simulator's latent truth: what a perfect model could do.

They answer a question the evaluation needs answered independently of any learning: in this
world, can per-user objective weights beat global ones at all? ``python -m simulator.oracle``
prints the oracle's fixed-weight front and the oracle with per-user weights (1 - alpha_u, alpha_u).

Score of candidate i for user u with click weight w: w p_ui / max_j p_uj + (1 - w) e_ui / max_j e_uj,
where p = P(click | examined) and e = p * expected dwell given a click (noise-free), i.e. the
serving score with perfect predictions (same per-list normalization as model.scoring).

:class:`OracleSessions` runs the same oracle vectorized over many sessions: a session's random
draws do not depend on what it is shown (every list consumes the same draws, and retrieval does
not look at the policy), so they are drawn once per session, exactly as :class:`Simulator` draws
them, and replayed for every click-weight map in lock step over all sessions. It gives the same
sessions as ``Simulator.run(OraclePolicy(...))`` at a small fraction of the cost, which is what
lets the evaluation search a grid of global weights and per-user maps on every run.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from simulator.behaviour import click_probability, examination, read_fraction, sigmoid
from simulator.config import SimulatorConfig
from simulator.session import ListRequest, Ranking, SessionSpec, Simulator
from simulator.world import World


class OraclePolicy:
    def __init__(self, world: World, click_weight: Callable[[int], float]) -> None:
        self.world, self.click_weight = world, click_weight
        self._index = {f"item-{i}": i for i in range(len(world.items))}

    def rank(self, requests: Sequence[ListRequest]) -> list[Ranking]:
        out = []
        for r in requests:
            user = int(r.user_id.split("-", 1)[1])
            items = np.array([self._index[c.item_id] for c in r.candidates])
            p = click_probability(self.world, user, items)
            e = (
                p
                * read_fraction(self.world, user, items, np.zeros(len(items)))
                * self.world.items.length_s[items]
            )
            w = float(self.click_weight(user))
            score = w * p / p.max() + (1.0 - w) * e / e.max()
            out.append(
                Ranking(tuple(int(k) for k in np.argsort(-score, kind="stable")), (w, 1.0 - w), (0.0, 0.0))
            )
        return out


@dataclass(frozen=True)
class SessionTotals:
    """Per session: lists shown, items shown, clicks and dwell seconds (all (S,))."""

    lists: np.ndarray
    impressions: np.ndarray
    clicks: np.ndarray
    dwell_s: np.ndarray


class OracleSessions:
    """Sessions ``specs`` of ``sim``'s stream, drawn once, replayed for any per-user click weight.

    Per session and list j < max_lists: the candidates (retrieval uses only the user's observed
    interests and the session's draws) and the response draws by shown position. The draws are
    taken in :class:`Simulator`'s order (per list: retrieval Gumbel keys, then examination,
    click, read-noise and leave draws), so :meth:`run` reproduces ``Simulator.run`` with
    :class:`OraclePolicy` session by session (tests/unit/test_simulator.py checks it).
    Memory: about 0.3 kB per session and list (6 MB per 1000 sessions at 20 lists of 10).
    """

    def __init__(self, sim: Simulator, specs: Sequence[SessionSpec]) -> None:
        cfg, world = sim.cfg, sim.world
        self.world = world
        s, j, c, n = len(specs), cfg.max_lists, cfg.n_candidates, min(cfg.list_len, cfg.n_candidates)
        self.users = np.array([spec.user for spec in specs], dtype=np.int64)  # (S,)
        self.candidates = np.empty((s, j, c), dtype=np.int32)  # catalog indices, sorted
        self.u_exam, self.u_click = np.empty((s, j, n)), np.empty((s, j, n))
        self.read_noise, self.u_leave = np.empty((s, j, n)), np.empty((s, j))
        # retrieval keys: logit_ui + Gumbel_i, the top n_candidates picked. rng.gumbel(size) is
        # -log(-log(1 - U)) of one rng.random() each (numpy redraws a U of exactly 0, probability
        # 2^-53, which this does not), so the draws are taken as uniforms, and only the uniforms
        # below a per-user threshold (about 3 n_candidates of them) are turned into keys
        logit = cfg.retrieval_temperature * world.users.features[:, : cfg.n_topics]  # (U, T)
        threshold = _uniform_threshold(logit, np.bincount(world.items.topic, minlength=cfg.n_topics), 3 * c)
        for i, spec in enumerate(specs):
            rng = sim.session_rng(spec.index)
            item_logit = logit[spec.user][world.items.topic]  # (I,)
            item_threshold = threshold[spec.user][world.items.topic]  # (I,)
            for k in range(j):  # the order of Simulator.request, then behaviour.respond
                u = rng.random(cfg.n_items)
                pool = np.flatnonzero(u < item_threshold)
                if len(pool) < c:  # rare: fewer draws above the threshold than candidates
                    pool = np.arange(cfg.n_items)
                keys = item_logit[pool] - np.log(-np.log(1.0 - u[pool]))
                self.candidates[i, k] = np.sort(pool[np.argpartition(-keys, c - 1)[:c]])
                self.u_exam[i, k], self.u_click[i, k] = rng.random(n), rng.random(n)
                self.read_noise[i, k] = rng.standard_normal(n)
                self.u_leave[i, k] = rng.random()

    def __len__(self) -> int:
        return len(self.users)

    def run(self, click_weight: np.ndarray) -> SessionTotals:
        """Serve every session with the oracle at per-user click weights ``click_weight`` (U,)."""
        world, cfg = self.world, self.world.cfg
        s, n_lists, _ = self.candidates.shape
        n = self.u_exam.shape[2]
        lists, clicks = np.zeros(s, np.int64), np.zeros(s, np.int64)
        dwell_ms = np.zeros(s, np.int64)
        active = np.arange(s)
        exam = examination(cfg, n)  # (n,)
        for k in range(n_lists):
            users = self.users[active][:, None]  # (A, 1): broadcasts against (A, items)
            cand = self.candidates[active, k].astype(np.int64)  # (A, C)
            # OraclePolicy.rank, per row
            p = click_probability(world, users, cand)  # type: ignore[arg-type]
            length = world.items.length_s
            e = p * read_fraction(world, users, cand, np.zeros(cand.shape)) * length[cand]  # type: ignore[arg-type]
            w = click_weight[self.users[active]][:, None]
            score = w * p / p.max(axis=1, keepdims=True) + (1.0 - w) * e / e.max(axis=1, keepdims=True)
            shown = np.take_along_axis(cand, np.argsort(-score, axis=1, kind="stable")[:, :n], axis=1)
            # behaviour.respond, per row: at most max_clicks clicks, the first ones top-down
            looks = self.u_exam[active, k] < exam
            wants = self.u_click[active, k] < click_probability(world, users, shown)  # type: ignore[arg-type]
            noise = self.read_noise[active, k]
            read = read_fraction(world, users, shown, noise)  # type: ignore[arg-type]
            dwell = np.maximum(cfg.min_dwell_s, read * length[shown])
            hit = looks & wants
            clicked = hit & (np.cumsum(hit, axis=1) <= cfg.max_clicks)
            list_ms = np.where(clicked, np.rint(1000.0 * dwell), 0).astype(np.int64).sum(axis=1)
            list_clicks = clicked.sum(axis=1)
            alpha = world.users.alpha[self.users[active]]
            u_click = np.minimum(list_clicks, cfg.max_clicks) / cfg.max_clicks
            u_read = 1.0 - np.exp(-(list_ms / 1000.0) / cfg.dwell_satisfied_s)
            satisfied = (1.0 - alpha) * u_click + alpha * u_read
            leave = self.u_leave[active, k] < sigmoid(cfg.leave_bias - cfg.leave_satisfaction * satisfied)
            lists[active] += 1
            clicks[active] += list_clicks
            dwell_ms[active] += list_ms
            active = active[~leave]
            if len(active) == 0:
                break
        return SessionTotals(lists, lists * n, clicks, dwell_ms / 1000.0)


def _uniform_threshold(logit: np.ndarray, per_topic: np.ndarray, expected: int) -> np.ndarray:
    """Per user and topic (U, T), the uniform u_t such that U < u_t <=> key > t_u, with t_u set
    so that about ``expected`` of the catalog's keys lie above it (bisection on the expected
    count sum_t n_t P(logit_t + Gumbel > t))."""
    lo, hi = logit.min(axis=1) - 10.0, logit.max(axis=1) + 40.0  # (U,): count ~ all, ~ 0

    def above(t: np.ndarray) -> np.ndarray:  # P(logit + Gumbel > t), (U, T)
        return -np.expm1(-np.exp(-(t[:, None] - logit)))

    for _ in range(60):
        mid = (lo + hi) / 2.0
        many = (above(mid) * per_topic).sum(axis=1) > expected
        lo, hi = np.where(many, mid, lo), np.where(many, hi, mid)
    # key > t <=> -log(-log(1 - U)) > t - logit <=> U < 1 - exp(-exp(-(t - logit)))
    return above(lo)


def oracle_point(
    world: World, click_weight: Callable[[int], float], sessions: int, stream_id: int = 9
) -> dict[str, float]:
    sim = Simulator(world.cfg, world, stream_id=stream_id)
    res = list(sim.run(OraclePolicy(world, click_weight), sim.random_sessions(sessions), parallel=128))
    shown = sum(len(r.impression.items) for r in res)
    return {
        "ctr": sum(r.response.n_clicks for r in res) / shown,
        "dwell_per_impression_s": sum(r.response.total_dwell_s for r in res) / shown,
        "session_length": len(res) / sessions,
    }


def _constant(w: float, user: int) -> float:
    return w


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control", action="store_true")
    parser.add_argument("--sessions", type=int, default=3000)
    args = parser.parse_args()
    cfg = SimulatorConfig(seed=args.seed)
    world = World.build(cfg.control() if args.control else cfg)
    alpha = world.users.alpha
    rows = [
        (
            f"global w_click={w:.1f}",
            oracle_point(world, functools.partial(_constant, float(w)), args.sessions),
        )
        for w in np.linspace(1, 0, 6)
    ]
    rows.append(
        ("per-user w_click=1-alpha", oracle_point(world, lambda u: 1.0 - float(alpha[u]), args.sessions))
    )
    print("| oracle policy | CTR | dwell s / impression | session length |\n|---|---|---|---|")
    for name, p in rows:
        print(f"| {name} | {p['ctr']:.4f} | {p['dwell_per_impression_s']:.3f} | {p['session_length']:.2f} |")


if __name__ == "__main__":
    main()
