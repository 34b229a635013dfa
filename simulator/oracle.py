"""Oracle policies that rank with the simulator's latent truth: what a perfect model could do.

They answer a question the evaluation needs answered independently of any learning: in this
world, can per-user objective weights beat global ones at all? ``python -m simulator.oracle``
prints the oracle's fixed-weight front and the oracle with per-user weights (1 - alpha_u, alpha_u).

Score of candidate i for user u with click weight w: w p_ui / max_j p_uj + (1 - w) e_ui / max_j e_uj,
where p = P(click | examined) and e = p * expected dwell given a click (noise-free), i.e. the
serving score with perfect predictions (same per-list normalization as model.scoring).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence

import numpy as np

from simulator.behaviour import click_probability, read_fraction
from simulator.config import SimulatorConfig
from simulator.session import ListRequest, Ranking, Simulator
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
