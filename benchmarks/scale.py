"""Scale-out figures: the data-parallel learner's training steps/s with 1 vs 2 ranks.

learner: the same global batch (``--batch-size`` lists per step) trained by one process and by
2 gloo ranks on this machine (each rank steps on half of it; gradients all-reduced, see
learner/distributed.py), in-process synthetic data, the same model and strategy. The CPU threads
are split evenly (``--threads`` in all: one process gets all of them, each rank its share), so the
ratio says what a second process buys on the same cores; on 2 cores expect ~1x or worse (the
all-reduces and the duplicated per-step work cost, the cores do not grow). On GPUs (NCCL) each
rank would bring its own device.

    .venv/bin/python -m benchmarks.scale --batch-size 256 --steps 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="lists per global step (split among ranks)"
    )
    parser.add_argument("--list-len", type=int, default=20, help="items per list")
    parser.add_argument("--strategy", default="paperec", help="paperec (pareto reward), fixed, peltr, single")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per world size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per world size")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads in all")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (1 process, 2 ranks)")
    args = parser.parse_args()
    rounds = learner_scale(args)
    print(
        f"learner: batch={args.batch_size} (global) list_len={args.list_len} strategy={args.strategy} "
        f"threads={args.threads} in all, cores={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
    )
    for i, (one, two) in enumerate(rounds):
        print(f"round {i}: steps/s 1 process {one:.2f}, 2 gloo ranks {two:.2f}; ratio 2/1 = {two / one:.2f}")
    ratio = statistics.median(two / one for one, two in rounds)
    print(f"learner steps/s ratio 2 ranks / 1 process = {ratio:.2f} (median of per-round ratios)")


if __name__ == "__main__":
    main()
