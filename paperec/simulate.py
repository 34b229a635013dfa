"""``paperec simulate``: simulate users' sessions and write a recorded event log (JSON Lines).

    paperec simulate --users 200 --sessions 5 --out sim.jsonl [--seed 0] [--policy heuristic]

Each of the N users has M sessions, an hour apart; lists are ranked by a model-free policy
(``heuristic``: observable clickbait/quality proxies mixed with explored weights; ``random``).
The log holds impression, click and dwell records in timestamp order (docs/simulator.md).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from tqdm import tqdm

from base.settings import Settings
from simulator.config import SimulatorConfig
from simulator.logfile import EventSorter, LogWriter
from simulator.policies import HeuristicPolicy, RandomPolicy
from simulator.session import Policy, Simulator

log = logging.getLogger(__name__)

DEFAULT_START_MS = 1_732_795_200_000  # 2024-11-28T12:00:00Z: fixed, so a seed gives the same log


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, required=True, help="number of simulated users N")
    parser.add_argument("--sessions", type=int, required=True, help="sessions per user M")
    parser.add_argument("--out", type=Path, required=True, help="log file to write (JSON Lines)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the world and every draw")
    parser.add_argument("--policy", choices=["heuristic", "random"], default="heuristic")
    parser.add_argument("--control", action="store_true", help="no preference heterogeneity")
    parser.add_argument(
        "--start-ms", type=int, default=DEFAULT_START_MS, help="epoch ms of the first session"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def simulate_log(
    cfg: SimulatorConfig,
    sessions_per_user: int,
    out: Path,
    policy_name: str = "heuristic",
    start_ms: int = DEFAULT_START_MS,
    progress: bool = False,
) -> dict[str, int]:
    """Simulate every user's sessions and write the time-ordered log; returns event counts."""
    sim = Simulator(cfg)
    policy: Policy = (
        HeuristicPolicy(cfg, seed=cfg.seed) if policy_name == "heuristic" else RandomPolicy(cfg.seed)
    )
    specs = sim.user_sessions(range(cfg.n_users), sessions_per_user, start_ms)
    sorter = EventSorter()
    lists = 0
    with tqdm(total=len(specs), desc="sessions", unit="session", disable=not progress) as bar:
        for result in sim.run(policy, specs, parallel=64):
            sorter.add(result.events())
            lists += 1
            if result.done:
                bar.update(1)
    with LogWriter(out) as writer:
        writer.write_all(sorter.sorted())
    counts = dict(writer.stats.events)
    counts.update(sessions=len(specs), lists=lists)
    return counts


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.users < 1 or args.sessions < 1:
        print("--users and --sessions must be >= 1")
        return 2
    cfg = SimulatorConfig(seed=args.seed, n_users=args.users)
    if args.control:
        cfg = cfg.control()
    t0 = time.perf_counter()
    counts = simulate_log(cfg, args.sessions, args.out, args.policy, args.start_ms, not args.no_progress)
    print(
        f"wrote {args.out}: {counts['sessions']} sessions, {counts['lists']} lists, "
        f"{counts.get('impression', 0)} impressions, {counts.get('click', 0)} clicks, "
        f"{counts.get('dwell', 0)} dwells in {time.perf_counter() - t0:.1f} s"
    )
    return 0
