"""Throughput of the PAPERec training step vs a plain two-head ranker step, in one run.

The plain step is what one would train without PAPERec: the same ranker, same batch, loss =
sum of the objectives' losses, one backward, the same clipping and AdamW. Steps of the two
are interleaved (plain, paperec, paperec, plain, ...) so that both see the same machine load;
the reported ratio is the median over rounds of plain_time / paperec_time.

The reward modes are timed in the same rounds: ``paperec`` is the published reward (pareto),
``engagement`` and ``hybrid`` the other two (learner/training.py); each is reported as the
median over rounds of mode_time / pareto_time (target: hybrid <= 1.5; engagement computes no
per-list gradients and should be <= 1).

    .venv/bin/python -m benchmarks.train_step --batch-size 256 --list-len 20 --steps 30
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from learner.training import PAPERecConfig, Trainer
from model.batch import ListBatch
from model.ranker import Ranker, RankerConfig
from model.runtime import default_device

MODES = {"engagement": 1.0, "hybrid": 1.5}
"""reward modes timed beside the pareto step (``paperec``), and the target of mode_time / pareto_time"""


def plain_step_fn(cfg: PAPERecConfig, device: torch.device) -> Callable[[ListBatch], float]:
    torch.manual_seed(cfg.seed)
    ranker = Ranker(cfg.ranker).to(device)
    optimizer = torch.optim.AdamW(ranker.parameters(), lr=cfg.ranker_lr, weight_decay=cfg.weight_decay)

    def step(batch: ListBatch) -> float:
        losses = ranker.losses_per_list(ranker(batch), batch)  # (B, K)
        loss = losses.sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(ranker.parameters(), cfg.max_grad_norm)
        optimizer.step()
        return loss.item()

    return step


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="", help='"cpu", "cuda"; default: CUDA when available')
    parser.add_argument("--batch-size", type=int, default=256, help="lists per step")
    parser.add_argument("--list-len", type=int, default=20, help="items per list")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--grad-mode", default="shared_repr", choices=["shared_repr", "full_params"])
    parser.add_argument(
        "--baselines", default="", help="also time these strategies, comma-separated (peltr,fixed,single)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device(args.device)

    ranker_cfg = RankerConfig(max_list_len=args.list_len)
    base = PAPERecConfig(ranker=ranker_cfg, device=str(device), grad_mode=args.grad_mode)
    batch = ListBatch.synthetic(ranker_cfg, args.batch_size, torch.Generator().manual_seed(0)).to(device)

    variants: dict[str, Callable[[ListBatch], object]] = {"plain": plain_step_fn(base, device)}
    for name in ["paperec", *filter(None, args.baselines.split(","))]:
        cfg = dataclasses.replace(base, strategy=name)
        variants[name] = Trainer(cfg).step
    for mode in MODES:
        variants[mode] = Trainer(dataclasses.replace(base, strategy="paperec", reward=mode)).step

    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(args.warmup + args.steps):
        order = list(variants) if i % 2 == 0 else list(reversed(variants))
        for name in order:
            t = timed(lambda fn=variants[name]: fn(batch), device)  # type: ignore[misc]
            if i >= args.warmup:
                times[name].append(t)

    plain = statistics.median(times["plain"])
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch_size} "
        f"list_len={args.list_len} steps={args.steps} grad_mode={args.grad_mode} d_model={ranker_cfg.d_model}"
    )
    print(f"{'variant':<10} {'median ms':>10} {'min ms':>8} {'lists/s':>8} {'plain/variant':>14}")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(
            f"{name:<10} {1e3 * median:>10.1f} {1e3 * min(ts):>8.1f} "
            f"{args.batch_size / median:>8.0f} {plain / median:>14.2f}"
        )
    # headline: the median of per-round ratios; a round's two steps ran back to back under the
    # same machine load, which keeps the ratio stable on a shared machine
    paired = statistics.median(p / q for p, q in zip(times["plain"], times["paperec"], strict=True))
    verdict = "meets" if paired >= 0.67 else "MISSES"
    print(f"ratio plain_time/paperec_time = {paired:.2f} (median of per-round ratios; {verdict} >= 0.67)")
    for mode, target in MODES.items():
        ratio = statistics.median(m / p for m, p in zip(times[mode], times["paperec"], strict=True))
        verdict = "meets" if ratio <= target else "MISSES"
        print(
            f"ratio {mode}_time/pareto_time = {ratio:.2f} (median of per-round ratios; {verdict} <= {target})"
        )


if __name__ == "__main__":
    main()
