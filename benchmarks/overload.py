"""Overload benchmark: a serving node under 3x its capacity sheds load with fast 503s and keeps
its accepted latency, /healthz and memory bounded. Baselines are measured in the same run.

    .venv/bin/paperec devstack up
    .venv/bin/python benchmarks/overload.py                      # 200 candidates, 2 x 60 s at 3x
    .venv/bin/python benchmarks/overload.py --seconds 10         # shorter overload phases

What it does, on a throwaway topic prefix (deleted afterwards):
1. publishes one signed snapshot and starts a serving node (``python -m actor_service``, i.e.
   ``paperec serve``) as a SEPARATE PROCESS on loopback, with its DEFAULT admission settings
   (``--max-in-flight`` sets the count cap of both nodes). With 2 or more usable cores, the node
   (every thread of it) is pinned to one core and the load generator (this process) to another
   (``os.sched_setaffinity``; ``--no-pin`` turns it off), so the generator's CPU does not come
   out of the node's; the pinning is printed, and every phase below runs under it. Other
   processes on the machine are not pinned away;
2. unloaded latency: 1 request in flight, sequential, for ``--baseline-seconds``;
3. capacity: closed-loop throughput (200 responses/s) with 1, 2, 4, 8 and 16 requests in flight;
   the maximum is the capacity. The defaults must not shed here (non-200s are printed): a
   capacity cut by admission would understate the load of the next phases;
4. an overload phase (below) on this default node, labelled ``default settings``: what the
   defaults, which only guard against collapse, do at 3x;
5. stops it and starts a second node (same process setup, same pinning) configured by the
   documented SLO rule from the baseline just measured, with SLO = 2x the unloaded p99:
   ``--serve-max-queue-wait-ms`` = SLO - unloaded p99 (= the unloaded p99) and
   ``--serve-request-deadline-ms`` = SLO, both rounded up to whole ms (``--max-queue-wait-ms`` /
   ``--deadline-ms`` override either; then it is not derived); the settings and the rule are
   printed. Its overload phase is labelled ``SLO settings``;
6. overload: open-loop arrivals at ``--factor`` x capacity (fixed interval; each arrival is sent
   at its time whatever happened to the earlier ones) for ``--seconds``, every request with a
   ``--timeout-s`` client timeout, over as many keep-alive connections as needed; meanwhile
   ``/healthz`` is probed every ``--probe-ms`` on a connection of its own and the node's RSS is
   read from /proc at the start, the middle and the end.

The load generator is a minimal asyncio HTTP/1.1 client (like benchmarks/serving.py's), not
httpx: httpx costs ~1-2 ms of CPU a request, and at 3x capacity on a 2-core machine shared with
the node it alone took a core and fell seconds behind its schedule (measured: 42 of 284
requests/s sent), so the benchmark measured its own client, not the node.

Printed: capacity; unloaded p50/p99; per overload phase the p99 of the accepted (200) requests and
its ratio to the unloaded p99 (target <= 2x), the share shed and whether every shed request was a
503 with Retry-After (any other status or a timeout is counted and shown), the goodput (200/s) as
a share of capacity, /healthz p99 (target < 50 ms), RSS start/middle/end, and the node's CPU over
the overload phase (all threads, and its event loop thread alone: HTTP, parsing, admission).
``--http h11 --loop asyncio`` runs the node on uvicorn's pure-Python parser and loop to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Run as a script, benchmarks/ is sys.path[0], and a module there named like a package of the
# project (benchmarks/learner.py) would shadow it: look the packages up from the project root.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import httpx
import orjson

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

CAPACITY_CONCURRENCY = (1, 2, 4, 8, 16)
KEEP_ALIVE_S = 4.0  # reuse a connection idle at most this long (uvicorn closes them after 5 s)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def pin(pid: int, cores: set[int]) -> None:
    """Pin every thread of process ``pid`` (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(task.name), cores)


USABLE_CORES = sorted(os.sched_getaffinity(0))  # before pin_apart narrows this process to one


def pin_apart(node_pid: int) -> str:
    """Node on one usable core, this process (the generator) on another; what was done, in words."""
    usable = USABLE_CORES
    if len(usable) < 2:
        return f"not pinned: {len(usable)} usable core (node and load generator share it)"
    node_core, gen_core = usable[-1], usable[0]
    pin(node_pid, {node_core})
    pin(os.getpid(), {gen_core})
    return (
        f"pinned: node on core {node_core}, load generator on core {gen_core} "
        f"({len(usable)} usable; other processes on the machine are not pinned)"
    )


def loaded_parts(pid: int) -> str:
    """Which HTTP parser and event loop the node really runs: their C extensions in its memory map
    (uvicorn's 'auto' picks httptools and uvloop when installed)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    http = "httptools" if "/httptools/" in maps else "h11 (pure Python)"
    loop = "uvloop" if "/uvloop/" in maps else "asyncio"
    return f"HTTP parser {http}, event loop {loop}"


def cpu_s(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) of process ``pid``, or of its thread ``tid``."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def closed_loop(
    node: NodeProcess, body: bytes, seconds: float, concurrency: int
) -> tuple[list[float], float, Counter[str]]:
    """200-latencies, 200 responses/s and the non-200 answers by status and error type with
    ``concurrency`` requests in flight."""
    raw = raw_request("POST", "/rank", node.port, body, node.auth_headers)
    lat: list[float] = []
    other: Counter[str] = Counter()
    conns = [await Connection.open(node.port) for _ in range(concurrency)]
    deadline = time.perf_counter() + seconds

    async def worker(conn: Connection) -> None:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            status, _, payload = await conn.request(raw)
            if status == 200:
                lat.append(time.perf_counter() - t)
            else:
                other[f"{status} {error_type(payload)}"] += 1

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    return lat, len(lat) / (time.perf_counter() - start), other


def error_type(payload: bytes) -> str:
    """The API error's ``type`` (``overloaded``, ``deadline_exceeded``, ...), or ``?``."""
    try:
        return str(orjson.loads(payload)["detail"][0]["type"])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return "?"


@dataclass
class Overload:
    sent: int = 0
    accepted: list[float] = field(default_factory=list)  # latencies of 200s
    shed: list[float] = field(default_factory=list)  # latencies of 503s
    shed_types: Counter[str] = field(default_factory=Counter)
    shed_without_retry_after: int = 0
    other_status: Counter[int] = field(default_factory=Counter)
    timeouts: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    healthz: list[float] = field(default_factory=list)
    healthz_failed: int = 0
    rss: list[float] = field(default_factory=list)
    cpu: float = 0.0  # node CPU seconds over the phase
    loop_cpu: float = 0.0  # of which its main thread (the event loop: HTTP, parsing, admission)
    lag_max: float = 0.0  # how late the generator sent an arrival (its own CPU starvation)
    elapsed: float = 0.0
    connections: int = 0


async def open_loop(node: NodeProcess, body: bytes, rate: float, args: argparse.Namespace) -> Overload:
    out = Overload()
    n = int(rate * args.seconds)
    interval = 1.0 / rate
    raw = raw_request("POST", "/rank", node.port, body, node.auth_headers)
    healthz = raw_request("GET", "/healthz", node.port)  # open: no token
    # (connection, last used): a new connection whenever all are busy, so no client-side queue.
    idle: list[tuple[Connection, float]] = []
    done = asyncio.Event()

    def reuse() -> Connection | None:
        while idle:
            conn, used = idle.pop()
            if time.perf_counter() - used < KEEP_ALIVE_S:
                return conn
            conn.close()  # the node may have closed it (uvicorn's keep-alive timeout)
        return None

    async def one() -> None:
        conn = reuse()
        t = time.perf_counter()
        try:
            if conn is None:
                conn = await Connection.open(node.port)
                out.connections += 1
            status, headers, payload = await asyncio.wait_for(conn.request(raw), args.timeout_s)
        except TimeoutError:
            out.timeouts += 1
            if conn is not None:
                conn.close()
            return
        except (OSError, asyncio.IncompleteReadError) as exc:
            out.errors[type(exc).__name__] += 1
            if conn is not None:
                conn.close()
            return
        dt = time.perf_counter() - t
        if headers.get(b"connection", b"").lower() == b"close":
            conn.close()  # the node closes it after this answer
        else:
            idle.append((conn, time.perf_counter()))
        if status == 200:
            out.accepted.append(dt)
        elif status == 503:
            out.shed.append(dt)
            out.shed_types[error_type(payload)] += 1
            if b"retry-after" not in headers:
                out.shed_without_retry_after += 1
        else:
            out.other_status[status] += 1

    async def probe() -> None:
        conn = await Connection.open(node.port)
        try:
            while not done.is_set():
                t = time.perf_counter()
                try:
                    status, _, _ = await asyncio.wait_for(conn.request(healthz), 5.0)
                    if status == 200:
                        out.healthz.append(time.perf_counter() - t)
                    else:
                        out.healthz_failed += 1
                except (TimeoutError, OSError, asyncio.IncompleteReadError):
                    out.healthz_failed += 1
                    conn.close()
                    conn = await Connection.open(node.port)
                await asyncio.sleep(max(0.0, args.probe_ms / 1000 - (time.perf_counter() - t)))
        finally:
            conn.close()

    out.rss.append(rss_mb(node.proc.pid))
    cpu0, loop_cpu0 = cpu_s(node.proc.pid), cpu_s(node.proc.pid, node.proc.pid)
    probe_task = asyncio.create_task(probe())
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    for i in range(n):
        due = start + i * interval
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        else:
            out.lag_max = max(out.lag_max, now - due)
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        out.sent += 1
        if i == n // 2:
            out.rss.append(rss_mb(node.proc.pid))
    await asyncio.gather(*tasks)
    out.elapsed = time.perf_counter() - start
    out.cpu = cpu_s(node.proc.pid) - cpu0
    out.loop_cpu = cpu_s(node.proc.pid, node.proc.pid) - loop_cpu0
    out.rss.append(rss_mb(node.proc.pid))
    done.set()
    await probe_task
    for conn, _ in idle:
        conn.close()
    return out


def ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


@dataclass
class Baseline:
    """What the default node measured: the unloaded latency and the closed-loop capacity."""

    unloaded: list[float]
    unloaded_other: Counter[str]  # non-200 answers at 1 in flight, by status and type
    capacity: float
    best: int  # in flight at the capacity
    capacity_other: Counter[str]  # non-200 answers over every closed-loop level (shed: a cut phase)

    @property
    def p99(self) -> float:
        return pct(self.unloaded, 0.99)


def measure_baseline(node: NodeProcess, body: bytes, args: argparse.Namespace) -> Baseline:
    asyncio.run(closed_loop(node, body, 2.0, 2))  # warm-up
    base, _, base_other = asyncio.run(closed_loop(node, body, args.baseline_seconds, 1))
    print(
        f"unloaded (1 in flight): p50 {ms(pct(base, 0.5))} ms, p99 {ms(pct(base, 0.99))} ms, "
        f"{len(base)} requests, non-200 {dict(base_other)}"
    )
    capacity, best, cut = 0.0, 0, Counter[str]()
    for c in CAPACITY_CONCURRENCY:
        lat, thr, other = asyncio.run(closed_loop(node, body, args.capacity_seconds, c))
        print(
            f"closed loop, {c:2d} in flight: {thr:6.1f} req/s, p99 {ms(pct(lat, 0.99))} ms, "
            f"non-200 {dict(other)}"
        )
        cut += other
        if thr > capacity:
            capacity, best = thr, c
    print(f"capacity: {capacity:.1f} req/s ({best} in flight)")
    return Baseline(base, base_other, capacity, best, cut)


def overload_phase(
    node: NodeProcess, body: bytes, base: Baseline, args: argparse.Namespace, label: str
) -> list[str]:
    """Open loop at ``--factor`` x the baseline's capacity on ``node``; printed, and summary lines."""
    rate = args.factor * base.capacity
    print(f"\n[{label}] open loop at {args.factor:g}x capacity = {rate:.1f} req/s for {args.seconds:g} s ...")
    o = asyncio.run(open_loop(node, body, rate, args))
    answered = len(o.accepted) + len(o.shed)
    shed_share = len(o.shed) / max(o.sent, 1)
    acc_p99 = pct(o.accepted, 0.99)
    goodput = len(o.accepted) / o.elapsed
    print(
        f"  sent {o.sent} in {o.elapsed:.1f} s ({o.sent / o.elapsed:.1f}/s; "
        f"generator lag max {ms(o.lag_max)} ms; {o.connections} connections)"
    )
    print(
        f"  200: {len(o.accepted)}  503: {len(o.shed)} {dict(o.shed_types)}  other status: "
        f"{dict(o.other_status)}  timeouts: {o.timeouts}  client errors: {dict(o.errors)}"
    )
    print(f"  503 without Retry-After: {o.shed_without_retry_after}")
    print(
        f"  accepted: p50 {ms(pct(o.accepted, 0.5))} ms, p99 {ms(acc_p99)} ms; "
        f"shed (503): p50 {ms(pct(o.shed, 0.5))} ms, p99 {ms(pct(o.shed, 0.99))} ms"
    )
    print(
        f"  /healthz every {args.probe_ms:g} ms: {len(o.healthz)} probes, p50 {ms(pct(o.healthz, 0.5))} ms, "
        f"p99 {ms(pct(o.healthz, 0.99))} ms, max {ms(max(o.healthz, default=float('nan')))} ms, "
        f"{o.healthz_failed} failed"
    )
    print(f"  node RSS start/middle/end: {' / '.join(f'{r:.0f}' for r in o.rss)} MB")
    print(
        f"  node CPU {o.cpu / o.elapsed:.0%} of a core, of which its event loop thread "
        f"{o.loop_cpu / o.elapsed:.0%} ({o.loop_cpu / max(o.sent, 1) * 1e3:.2f} ms per request sent)"
    )
    text = httpx.get(node.url + "/metrics", headers=node.auth_headers, timeout=5).text
    kinds = {k: metric_value(text, "paperec_serving_errors_total", f'kind="{k}"') for k in o.shed_types}
    print(f"  node errors_total (since the node started): {kinds}")
    every_shed_is_503 = not o.other_status and not o.timeouts and not o.errors and answered == o.sent
    return [
        f"[{label}] at {o.sent / o.elapsed / base.capacity:.2f}x capacity: accepted p50 "
        f"{ms(pct(o.accepted, 0.5))} ms, p99 {ms(acc_p99)} ms = {acc_p99 / base.p99:.2f}x unloaded p99 "
        f"(target <= 2x); goodput {goodput:.1f}/s = {goodput / base.capacity:.2f}x capacity",
        f"[{label}] shed {shed_share:.1%} of requests {dict(o.shed_types)}; every request answered 200 "
        f"or 503: {every_shed_is_503} (other status {sum(o.other_status.values())}, timeouts "
        f"{o.timeouts}, client errors {sum(o.errors.values())}); 503 without Retry-After: "
        f"{o.shed_without_retry_after}",
        f"[{label}] /healthz p99 under overload {ms(pct(o.healthz, 0.99))} ms (target < 50 ms), "
        f"{o.healthz_failed} failed",
        f"[{label}] node RSS start/middle/end {' / '.join(f'{r:.0f}' for r in o.rss)} MB; node CPU "
        f"{o.cpu / o.elapsed:.0%} of a core, event loop {o.loop_cpu / o.elapsed:.0%} "
        f"({o.loop_cpu / max(o.sent, 1) * 1e3:.2f} ms per request sent)",
    ]


def slo_settings(base: Baseline, args: argparse.Namespace) -> tuple[list[str], str]:
    """The SLO node's admission flags by the documented rule, from the baseline just measured
    (SLO = 2x unloaded p99: wait budget = SLO - unloaded p99, deadline = SLO), unless given as
    ``--max-queue-wait-ms`` / ``--deadline-ms``; and how they were chosen, in words."""
    p99_ms = base.p99 * 1e3
    slo_ms = math.ceil(2 * p99_ms)
    wait_ms = (
        float(args.max_queue_wait_ms)
        if args.max_queue_wait_ms is not None
        else float(slo_ms - math.ceil(p99_ms))
    )
    deadline_ms = args.deadline_ms if args.deadline_ms is not None else slo_ms
    how = (
        f"rule: serve_max_queue_wait_ms = SLO - unloaded p99, serve_request_deadline_ms = SLO; "
        f"SLO = 2 x unloaded p99 {p99_ms:.1f} ms = {slo_ms} ms -> wait budget {wait_ms:g} ms "
        f"({'given' if args.max_queue_wait_ms is not None else 'derived'}), deadline {deadline_ms} ms "
        f"({'given' if args.deadline_ms is not None else 'derived'})"
    )
    return ["--serve-max-queue-wait-ms", f"{wait_ms:g}", "--serve-request-deadline-ms", str(deadline_ms)], how


def start_pinned(
    settings: Settings, log_dir: Path, name: str, node_args: list[str], args: argparse.Namespace
) -> tuple[NodeProcess, str]:
    """Start a node, wait for it to serve the snapshot, pin it (and this process) apart."""
    node = start_node(settings, log_dir, name=name, extra_args=node_args)
    try:
        wait_ready([node], version=1)
    except BaseException:
        node.stop()
        raise
    print(f"node {name}: separate process (pid {node.proc.pid}), args {' '.join(node_args)}")
    pinning = "not pinned (--no-pin)" if args.no_pin else pin_apart(node.proc.pid)
    print(f"cores: {pinning}")
    print(f"node {name}: {loaded_parts(node.proc.pid)}")
    return node, pinning


def run(settings: Settings, log_dir: Path, common: list[str], args: argparse.Namespace) -> list[str]:
    body = orjson.dumps(example_request(args.candidates, seed=7))
    print(f"{args.candidates} candidates ({len(body) / 1024:.0f} KiB request)")
    defaults = Settings()
    node, pinning = start_pinned(settings, log_dir, "overload-defaults", common, args)
    try:
        print(
            "baseline node: default admission (serve_max_queue_wait_ms "
            f"{defaults.serve_max_queue_wait_ms:g}, "
            f"serve_request_deadline_ms {defaults.serve_request_deadline_ms}, serve_max_in_flight "
            f"{defaults.serve_max_in_flight} unless --max-in-flight)"
        )
        base = measure_baseline(node, body, args)
        summary = [
            f"cores: {pinning}",
            f"capacity {base.capacity:.1f} req/s at {args.candidates} candidates ({base.best} in flight; "
            f"non-200 in the closed-loop phase {dict(base.capacity_other)}); unloaded p99 "
            f"{ms(base.p99)} ms (p50 {ms(pct(base.unloaded, 0.5))} ms; non-200 {dict(base.unloaded_other)})",
        ]
        summary += overload_phase(node, body, base, args, "default settings")
    finally:
        node.stop()  # the SLO node gets the core to itself

    slo_args, how = slo_settings(base, args)
    print(f"\nSLO node: {how}")
    node, _ = start_pinned(settings, log_dir, "overload-slo", common + slo_args, args)
    try:
        warm, _, _ = asyncio.run(closed_loop(node, body, 2.0, 1))  # warm-up, unloaded
        print(
            f"SLO node warm-up (1 in flight, 2 s): p50 {ms(pct(warm, 0.5))} ms, p99 {ms(pct(warm, 0.99))} ms"
        )
        summary.append(f"SLO node: {how}")
        summary += overload_phase(node, body, base, args, "SLO settings")
    finally:
        node.stop()
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--candidates", type=int, default=200, help="candidates per list")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each overload phase")
    parser.add_argument("--factor", type=float, default=3.0, help="offered load as a multiple of capacity")
    parser.add_argument("--baseline-seconds", type=float, default=8.0, help="unloaded latency phase")
    parser.add_argument("--capacity-seconds", type=float, default=4.0, help="per closed-loop level")
    parser.add_argument("--probe-ms", type=float, default=50.0, help="/healthz probe interval")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="client timeout of a /rank request")
    parser.add_argument(
        "--max-in-flight", type=int, default=None, help="node setting, both nodes (default: its own)"
    )
    parser.add_argument(
        "--deadline-ms", type=int, default=None, help="SLO node's deadline (default: derived, SLO)"
    )
    parser.add_argument(
        "--max-queue-wait-ms",
        type=float,
        default=None,
        help="SLO node's wait budget (default: derived, SLO - unloaded p99)",
    )
    parser.add_argument("--http", default=None, help="node's HTTP parser: httptools or h11 (default: auto)")
    parser.add_argument("--loop", default=None, help="node's event loop: uvloop or asyncio (default: auto)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin node and generator apart")
    args = parser.parse_args()

    # dev_mode: the node may use the dev stack's built-in snapshot key (as benchmarks/serving.py)
    settings = Settings.from_env().replace(
        topic_prefix=f"paperec.bench.{uuid.uuid4().hex[:8]}.", dev_mode=True
    )
    problems = create_topics(settings)
    if problems:
        raise SystemExit(f"topics: {problems}")
    publisher = SnapshotPublisher(settings)
    publisher.publish(snapshot_record(make_model(1), 1, settings))
    common = ["--serve-cold-start", "refuse", "--log-level", "WARNING"]
    if args.max_in_flight is not None:
        common += ["--serve-max-in-flight", str(args.max_in_flight)]
    for flag in ("http", "loop"):
        if getattr(args, flag) is not None:
            common += [f"--{flag}", getattr(args, flag)]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            summary = run(settings, Path(tmp), common, args)
        finally:
            publisher.close()
            delete_prefixed_topics(settings)
    print("\nsummary")
    for line in summary:
        print("  " + line)


if __name__ == "__main__":
    main()
