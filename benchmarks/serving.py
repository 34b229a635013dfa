"""Serving benchmark: end-to-end /rank over HTTP vs the bare scoring function, and
publication-to-served latency of snapshots, in one run on the dev stack.

    .venv/bin/paperec devstack up
    .venv/bin/python benchmarks/serving.py                     # lists of 50 and 200 candidates
    .venv/bin/python benchmarks/serving.py --seconds 10 --swaps 30

What it does, on a throwaway topic prefix (deleted afterwards):
1. publishes one signed snapshot and starts two serving nodes (``python -m actor_service``,
   i.e. ``paperec serve``, as subprocesses) on it;
2. per list length, in interleaved rounds so that all variants see the same machine load:
   the bare function in this process (``featurize + score``, and ``score`` alone on prebuilt
   tensors; the same model decoded from the same snapshot, the same torch thread count and
   exploration noise as the node) vs POST /rank to node 1 over keep-alive HTTP/1.1 connections,
   1 request in flight (latency) and ``--concurrency`` in flight (throughput; the node
   micro-batches concurrent lists). The HTTP client is a minimal one so that the load generator
   takes little of the CPU it shares with the node;
3. publishes ``--swaps`` new snapshots and times, for each, from the send (and from the broker's
   acknowledgement) until both nodes' /readyz report the new version (polled every 5 ms), plus
   the nodes' own record-timestamp-to-swap histogram.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Run as a script, benchmarks/ is sys.path[0], and a module there named like a package of the
# project (benchmarks/learner.py) would shadow it: look the packages up from the project root.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import httpx
import orjson
import torch

from actor_service.devtools import (
    NodeProcess,
    SnapshotPublisher,
    example_request,
    make_model,
    metric_value,
    snapshot_record,
    start_node,
    wait_ready,
)
from base.settings import Settings
from base.topics import create_topics, delete_prefixed_topics
from benchmarks.http_client import Connection, raw_request
from model.featurize import ListView, list_inputs
from model.scoring import ActorModel, score
from model.snapshot import decode_snapshot, header_of
from model.snapshot_keys import snapshot_keys


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def bare(fn: Callable[[], object], seconds: float) -> tuple[list[float], float]:
    """Per-call latencies and calls/s of sequential calls for ~``seconds``."""
    for _ in range(5):
        fn()
    lat: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    return lat, len(lat) / (time.perf_counter() - start)


async def http_run(
    node: NodeProcess, body: bytes, seconds: float, concurrency: int
) -> tuple[list[float], float, int]:
    """Latencies, requests/s and failures with ``concurrency`` requests in flight (one
    keep-alive connection each)."""
    parsed = httpx.URL(node.url)
    host, port = parsed.host, parsed.port or 80
    request = raw_request("POST", "/rank", port, body, node.auth_headers, host=host)
    conns = [await Connection.open(port, host) for _ in range(concurrency)]
    lat: list[float] = []
    failures = 0
    try:
        for conn in conns:
            status, _, _ = await conn.request(request)
            assert status == 200, status
        deadline = time.perf_counter() + seconds

        async def worker(conn: Connection) -> None:
            nonlocal failures
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                status, _, _ = await conn.request(request)
                if status != 200:
                    failures += 1
                lat.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        elapsed = time.perf_counter() - start
    finally:
        for conn in conns:
            conn.close()
    return lat, len(lat) / elapsed, failures


def ms(x: float) -> str:
    return f"{x * 1e3:7.2f}"


@dataclass
class Variant:
    name: str
    latencies: list[float] = field(default_factory=list)
    calls: int = 0
    seconds: float = 0.0
    failures: int = 0

    def add(self, latencies: list[float], calls_per_s: float, failures: int = 0) -> None:
        self.latencies += latencies
        self.calls += len(latencies)
        self.seconds += len(latencies) / calls_per_s
        self.failures += failures

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds


def bench_lists(node: NodeProcess, model: ActorModel, args: argparse.Namespace) -> list[str]:
    """Rounds of (bare, HTTP) alternate, so both see the same machine load (others' jobs too)."""
    cfg = model.ranker.cfg
    summary = []
    slice_s = args.seconds / args.rounds
    for n in args.lengths:
        req = example_request(n, cfg, seed=n)
        view = ListView(
            req["user_features"],
            req["history"],
            req["context"],
            [it["item_id"] for it in req["items"]],
            [it["features"] for it in req["items"]],
        )
        inputs = list_inputs([view], cfg)
        gen = torch.Generator().manual_seed(0)

        def featurize_and_score(v: ListView = view, g: torch.Generator = gen) -> object:
            return score(model, list_inputs([v], cfg), args.noise_std, g)

        def score_only(x: object = inputs, g: torch.Generator = gen) -> object:
            return score(model, x, args.noise_std, g)  # type: ignore[arg-type]

        body = orjson.dumps(req)
        v_s, v_fs = Variant("bare: score (prebuilt tensors)"), Variant("bare: featurize + score")
        v_1, v_c = Variant("HTTP, 1 in flight"), Variant(f"HTTP, {args.concurrency} in flight")
        for _ in range(args.rounds):
            v_s.add(*bare(score_only, slice_s))
            v_fs.add(*bare(featurize_and_score, slice_s))
            v_1.add(*asyncio.run(http_run(node, body, slice_s, 1)))
            v_c.add(*asyncio.run(http_run(node, body, slice_s, args.concurrency)))
        print(f"\n{n} candidates ({len(body) / 1024:.0f} KiB request)        p50 ms   p99 ms    req/s")
        for v in (v_s, v_fs, v_1, v_c):
            p50, p99 = pct(v.latencies, 0.5), pct(v.latencies, 0.99)
            print(f"  {v.name:38s} {ms(p50)}  {ms(p99)}  {v.throughput:7.1f}")
        print(f"  HTTP failures: {v_1.failures + v_c.failures}")
        best = max(v_1.throughput, v_c.throughput)
        summary.append(
            f"{n} candidates: HTTP throughput {best:.1f}/s = {best / v_s.throughput:.2f}x bare score "
            f"({v_s.throughput:.1f}/s), {best / v_fs.throughput:.2f}x featurize+score; "
            f"1 in flight: {v_1.throughput / v_s.throughput:.2f}x; p50/p99 "
            f"{pct(v_1.latencies, 0.5) * 1e3:.1f}/{pct(v_1.latencies, 0.99) * 1e3:.1f} ms vs bare "
            f"{pct(v_s.latencies, 0.5) * 1e3:.1f}/{pct(v_s.latencies, 0.99) * 1e3:.1f} ms"
        )
    return summary


async def poll_version(nodes: list[NodeProcess], version: int, t0: float, timeout_s: float) -> list[float]:
    """Seconds from t0 until each node's /readyz reports ``version``."""
    async with httpx.AsyncClient(timeout=2.0) as client:

        async def one(node: NodeProcess) -> float:
            while time.perf_counter() - t0 < timeout_s:
                r = await client.get(node.url + "/readyz")
                if r.status_code == 200 and r.json()["snapshot_version"] >= version:
                    return time.perf_counter() - t0
                await asyncio.sleep(0.005)
            return float("inf")

        return list(await asyncio.gather(*(one(n) for n in nodes)))


def node_publish_to_served(nodes: list[NodeProcess]) -> list[tuple[float, float]]:
    """(sum, count) of each node's own record-timestamp -> swap histogram."""
    out = []
    with httpx.Client() as client:
        for node in nodes:
            text = client.get(node.url + "/metrics", headers=node.auth_headers).text
            total = metric_value(text, "paperec_serving_snapshot_publish_to_served_seconds_sum")
            count = metric_value(text, "paperec_serving_snapshot_publish_to_served_seconds_count")
            out.append((total, count))
    return out


def bench_hot_load(
    nodes: list[NodeProcess], settings: Settings, publisher: SnapshotPublisher, swaps: int
) -> str:
    """Publication (send) and broker ack -> every node's /readyz reports the new version."""
    from_send: list[float] = []
    from_ack: list[float] = []
    before = node_publish_to_served(nodes)
    for i in range(swaps):
        version = 2 + i
        rec = snapshot_record(make_model(100 + i), version, settings)
        t_send = time.perf_counter()
        publisher.publish(rec)
        ack = time.perf_counter() - t_send
        served = max(asyncio.run(poll_version(nodes, version, t_send, 10.0)))  # by all nodes
        from_send.append(served)
        from_ack.append(served - ack)
        time.sleep(0.2)
    own = [
        f"{(t1 - t0) / max(c1 - c0, 1) * 1e3:.0f} ms mean"
        for (t0, c0), (t1, c1) in zip(before, node_publish_to_served(nodes), strict=True)
    ]
    print(f"\nsnapshot publication -> served by both nodes, {swaps} swaps ({len(rec.value) / 1e6:.1f} MB):")
    for name, values in (("from send", from_send), ("from broker ack", from_ack)):
        p50, p99 = pct(values, 0.5), pct(values, 0.99)
        print(f"  {name:16s} p50 {ms(p50)} ms   p99 {ms(p99)} ms   max {ms(max(values))} ms")
    print(f"  nodes' own record timestamp -> swap: {'; '.join(own)}")
    return (
        f"publication (send) -> served by both nodes: p50 {pct(from_send, 0.5) * 1e3:.0f} ms, "
        f"p99 {pct(from_send, 0.99) * 1e3:.0f} ms; from broker ack p50 {pct(from_ack, 0.5) * 1e3:.0f} ms, "
        f"p99 {pct(from_ack, 0.99) * 1e3:.0f} ms (target p99 <= 1000 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200], help="candidates per list")
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per variant and length")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds the time is split into")
    parser.add_argument("--concurrency", type=int, default=4, help="HTTP requests in flight")
    parser.add_argument("--swaps", type=int, default=20, help="snapshots published for hot-load timing")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads (node and bare)")
    parser.add_argument(
        "--noise-std", type=float, default=0.1, help="exploration noise (snapshot header, so node; and bare)"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.torch_threads)
    # dev_mode: the benchmark's nodes may use the dev stack's built-in snapshot key
    prefix = f"paperec.bench.{uuid.uuid4().hex[:8]}."
    settings = Settings.from_env().replace(topic_prefix=prefix, dev_mode=True)
    problems = create_topics(settings)
    if problems:
        raise SystemExit(f"topics: {problems}")
    publisher = SnapshotPublisher(settings)
    rec = snapshot_record(make_model(1), 1, settings, noise_std=args.noise_std)  # the nodes explore so
    publisher.publish(rec)
    _, model = decode_snapshot(header_of(rec.headers), rec.value, snapshot_keys(settings).accepted)

    node_args = [
        "--serve-cold-start", "refuse",
        "--serve-torch-threads", str(args.torch_threads),
        "--log-level", "WARNING",
    ]  # fmt: skip
    nodes: list[NodeProcess] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            nodes = [start_node(settings, Path(tmp), name=f"bench-{i}", extra_args=node_args) for i in (1, 2)]
            wait_ready(nodes, version=1)
            print(f"torch threads {args.torch_threads}, {args.seconds:g} s per variant")
            print(f"model: {model.ranker.cfg}")
            summary = bench_lists(nodes[0], model, args)
            summary.append(bench_hot_load(nodes, settings, publisher, args.swaps))
        finally:
            for node in nodes:
                node.stop()
            publisher.close()
            delete_prefixed_topics(settings)
    print("\nsummary")
    for line in summary:
        print("  " + line)


if __name__ == "__main__":
    main()
