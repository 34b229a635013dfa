"""Scale-out figures: 2 processes against 1, measured back to back in the same run.

    .venv/bin/python -m benchmarks.scale [learner|join|all]      # all: the default
    .venv/bin/python -m benchmarks.scale learner --batch-size 256 --steps 20
    .venv/bin/python -m benchmarks.scale join --requests 30000 --partitions 8 --join-rounds 2

learner: the same global batch (``--batch-size`` lists per step) trained by one process and by
2 gloo ranks on this machine (each rank steps on half of it; gradients all-reduced, see
learner/distributed.py), in-process synthetic data, the same model and strategy. The CPU threads
are split evenly (``--threads`` in all: one process gets all of them, each rank its share), so the
ratio says what a second process buys on the same cores; on 2 cores expect ~1x or worse (the
all-reduces and the duplicated per-step work cost, the cores do not grow). On GPUs (NCCL) each
rank would bring its own device.

join: the same backlog (benchmarks/streams.py's workload and flags: ``--requests`` lists of 10
items, ~1.5 clicks and as many dwells each, ``--partitions`` per event topic) joined by 1 streams
worker (``python -m streams``: both stages, stage 2 in a child process, as in production) and by
2 workers started together with the same topic prefix, each with its own state dir: each stage is
one consumer group, which splits the partitions between the two. Every join gets fresh topics
with the backlog produced anew (a group reads its backlog once) and is measured as
benchmarks/streams.py measures it (``run_join``): from stage 1's committed offsets, events/s
between 10% and 90% of the input committed (steady state) and from the first commit to the last
(whole backlog, start-up rebalance included). Two workers started together do not join the
group in one generation (the first gets every partition; the rebalance that splits them follows
seconds later), so the steady state starts no earlier than the moment stage 1's final split was
first seen (the groups' descriptions, sampled every 0.25 s); none is measured if over 60% of
the input was committed by then. Each round joins with 1, then with 2 workers; the ratio 2/1 is
taken per round. Also reported: each stage's split over time, and the correctness of every join:
the deduplicated transition ids against the expected set (repeated records counted: delivery is
at least once) and the dead letters (the workload is valid and in time, so a dead letter is an
event lost; the ids alone would not show a lost click). Exit status 2 unless every join gave
exactly the expected ids and no dead letter. On 2 cores expect ~1x or less: 2 workers are 4
processes, with the broker, on the same 2 cores; the figure that matters is the one from a
machine with more cores than processes.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from benchmarks.streams import (
    JoinRun,
    add_workload_args,
    format_shares,
    fresh_topics,
    make_workload,
    produce,
    run_join,
)
from learner import distributed
from learner.training import PAPERecConfig, Trainer
from model.batch import ListBatch
from model.ranker import RankerConfig


def _config(args: argparse.Namespace) -> PAPERecConfig:
    return PAPERecConfig(
        ranker=RankerConfig(max_list_len=args.list_len), strategy=args.strategy, device="cpu", seed=0
    )


def _step_times(args: argparse.Namespace, rank: int, world: int) -> list[float]:
    """Seconds of each timed global step on this rank (a barrier before and after each one)."""
    cfg = _config(args)
    trainer = Trainer(cfg)
    share = args.batch_size // world
    g = torch.Generator().manual_seed(1)
    batches = [ListBatch.synthetic(cfg.ranker, args.batch_size, g) for _ in range(4)]
    times = []
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)].select(slice(rank * share, (rank + 1) * share))
        distributed.barrier()
        t0 = time.perf_counter()
        trainer.step(batch)
        distributed.barrier()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return times


def _rank(index: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(distributed.loopback_env(index, world, port))
    torch.set_num_threads(max(1, args.threads // world))
    distributed.init(torch.device("cpu"), timeout_s=120)
    try:
        times = _step_times(args, index, world)
    finally:
        distributed.shutdown()
    if index == 0:
        torch.save(times, Path(out) / "times.pt")


def learner_scale(args: argparse.Namespace) -> list[tuple[float, float]]:
    """Per round: (steps/s with 1 process, steps/s with 2 ranks), medians over its timed steps.
    The two run back to back in each round, so a round's ratio sees one machine load."""
    rounds = []
    for _ in range(args.rounds):
        torch.set_num_threads(args.threads)
        one = statistics.median(_step_times(args, 0, 1))
        with tempfile.TemporaryDirectory() as out:
            mp.spawn(_rank, args=(2, distributed.free_loopback_port(), args, out), nprocs=2, join=True)
            two = statistics.median(torch.load(Path(out) / "times.pt", weights_only=True))
        rounds.append((1.0 / one, 1.0 / two))
    return rounds


def join_once(args: argparse.Namespace, workers: int) -> JoinRun:
    """One join of a fresh backlog by ``workers`` workers: fresh topics (deleted afterwards
    unless ``--keep-topics``), the workload produced, joined."""
    with fresh_topics(args) as settings:
        workload = make_workload(args, t0_ms=int(time.time() * 1000))
        produce_s = asyncio.run(produce(settings, workload))
        log_dir = Path(tempfile.mkdtemp(prefix="paperec-bench-log-"))
        print(
            f"join by {workers} worker(s): {workload.n_events:,} events produced in {produce_s:.1f} s "
            f"to {settings.event_partitions} partitions per event topic (worker logs: {log_dir})"
        )
        return run_join(settings, args, workload, log_dir, workers=workers)


def join_scale(args: argparse.Namespace) -> list[tuple[JoinRun, JoinRun]]:
    """Per round: (the join by 1 worker, the join by 2), back to back, so a round's ratio sees
    one machine load."""
    return [(join_once(args, 1), join_once(args, 2)) for _ in range(args.join_rounds)]


def report_learner(args: argparse.Namespace) -> None:
    rounds = learner_scale(args)
    print(
        f"learner: batch={args.batch_size} (global) list_len={args.list_len} strategy={args.strategy} "
        f"threads={args.threads} in all, cores={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
    )
    for i, (one, two) in enumerate(rounds):
        print(f"round {i}: steps/s 1 process {one:.2f}, 2 gloo ranks {two:.2f}; ratio 2/1 = {two / one:.2f}")
    ratio = statistics.median(two / one for one, two in rounds)
    print(f"learner steps/s ratio 2 ranks / 1 process = {ratio:.2f} (median of per-round ratios)")


def report_join(args: argparse.Namespace) -> bool:
    """Prints the join's figures; whether every join gave exactly the expected transitions and
    no dead letter (the workload is valid and in time: a dead letter is input lost)."""
    rounds = join_scale(args)
    print(
        f"join: {args.requests} requests, {args.partitions} partitions per event topic, "
        f"cores={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
    )
    steady, whole = [], []
    for i, (one, two) in enumerate(rounds):
        f1, f2 = one.figures, two.figures
        steady.append(f2["join_events_per_s"] / f1["join_events_per_s"])
        whole.append(f2["join_events_per_s_whole_backlog"] / f1["join_events_per_s_whole_backlog"])
        print(
            f"round {i}: events/s steady state 1 worker {f1['join_events_per_s']:,.0f}, 2 workers "
            f"{f2['join_events_per_s']:,.0f} (ratio 2/1 = {steady[-1]:.2f}); whole backlog "
            f"{f1['join_events_per_s_whole_backlog']:,.0f}, {f2['join_events_per_s_whole_backlog']:,.0f} "
            f"({whole[-1]:.2f}); worker CPU per event {f1['worker_cpu_us_per_event']:.0f} us, "
            f"{f2['worker_cpu_us_per_event']:.0f} us (all processes, start-up included)"
        )
        final = {stage: changes[-1] for stage, changes in two.splits.items() if changes}
        print(
            "  2 workers' split at the end: "
            + "; ".join(
                f"{stage} {format_shares(shares)} (from {t:+.1f} s)" for stage, (t, shares) in final.items()
            )
            + f"; steady state from {f2['steady_state_from_s']:.1f} s after the first commit"
        )
        for n, run in ((1, one), (2, two)):
            f = run.figures
            verdict = "exactly the expected ids" if f["transitions_ok"] else "MISMATCH"
            print(
                f"  {n} worker(s): transitions out {verdict}, {f['duplicate_transitions']:.0f} repeated "
                f"record(s); {f['dead_letters']:.0f} dead letters (0 expected)"
            )
    measured = [r for r in steady if not math.isnan(r)]  # nan: the split settled after 90% committed
    missing = len(steady) - len(measured)
    print(
        f"join events/s ratio 2 workers / 1 worker = "
        f"{statistics.median(measured) if measured else math.nan:.2f} steady state"
        + (f" ({missing} round(s) without one: raise --requests)" if missing else "")
        + f", {statistics.median(whole):.2f} whole backlog (medians of per-round ratios)"
    )
    return all(
        run.figures["transitions_ok"] and not run.figures["dead_letters"] for pair in rounds for run in pair
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", nargs="?", choices=("learner", "join", "all"), default="all")
    parser.add_argument(
        "--batch-size", type=int, default=256, help="learner: lists per global step (split among ranks)"
    )
    parser.add_argument("--list-len", type=int, default=20, help="learner: items per list")
    parser.add_argument(
        "--strategy", default="paperec", help="learner: paperec (pareto reward), fixed, peltr, single"
    )
    parser.add_argument("--steps", type=int, default=20, help="learner: timed steps per world size")
    parser.add_argument("--warmup", type=int, default=3, help="learner: untimed steps per world size")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="learner: CPU threads in all"
    )
    parser.add_argument("--rounds", type=int, default=3, help="learner: rounds of (1 process, 2 ranks)")
    parser.add_argument("--join-rounds", type=int, default=2, help="join: rounds of (1 worker, 2 workers)")
    add_workload_args(parser, requests=30_000)  # join: benchmarks/streams.py's backlog and settings
    parser.set_defaults(partitions=8)
    args = parser.parse_args()
    ok = True
    if args.part in ("learner", "all"):
        report_learner(args)
    if args.part in ("join", "all"):
        ok = report_join(args)
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
