"""Rollout benchmark: what arms cost a serving node, and what a harmful snapshot costs users
before the controller rolls it back.

    .venv/bin/python benchmarks/rollout.py overhead              # in-process, no dev stack
    .venv/bin/paperec devstack up
    .venv/bin/python benchmarks/rollout.py loop                  # the whole loop, dev stack
    .venv/bin/python benchmarks/rollout.py                       # both

``overhead`` (no Kafka, no HTTP): the node's ranking path for one list of ``--candidates``
candidates (200), in this process, on one torch thread as the node's scorer
(``serve_torch_threads`` = 1):

- ``none``: ``actor_service.ranking.rank`` on the incumbent, no arm (``rollout=direct`` without
  a holdout, as before arms existed);
- ``assigned``: what the node's POST /rank adds: ``Routing.route(user_id)`` (one SHA-256 of the
  user id, two during a canary: ``actor_service.arms``), ``rank`` with the route's model, arm and
  fixed weights, and the per-arm request counter, on users of the personalized arm (the same
  model and work as ``none``: the difference is the assignment alone);
- ``holdout users``: the same for users of the holdout arm (ranked by fixed weights: the
  generator's weights replaced and the list re-sorted, ``ranking.with_fixed_weights``);
- ``mixed``: users drawn from a population split as the demo splits it (holdout 0.1, a canary
  at 0.2 of the rest on a second model), the same list each time.

The variants take turns call by call for ``--seconds`` (60), so that all see the same machine
load, on the same request and the same exploration noise stream. Printed: median and mean per-call time of
each, the ratios to ``none`` (target for ``assigned``: <= 1.05 at 200 candidates), and the cost of
``Routing.route`` alone per call, as a share of ``none``'s median (the part no other work hides).

``loop`` (the dev stack's broker and ClickHouse, a throwaway topic prefix and database, both
deleted afterwards): the loop of the rollout acceptance test at the demo's traffic rate:

1. starts the streams worker, two serving nodes with ``rollout=guarded``, ``holdout_share`` 0.1
   (the demo's) and the rollout controller (``paperec rollout``, the settings' ``canary_share``
   0.2, ``rollout_*`` defaults unless given), as child processes with the demo's short windows;
2. publishes a good snapshot (``rollout.devtools.proxy_ranker_model``: ranks the simulator's
   items by their observable bait and quality proxies); the controller bootstraps it;
3. drives seeded simulated users (``--users`` 300, ``--parallel`` 8: the demo's driver, as fast as
   the nodes answer unless ``--lists-per-s``) through ``POST /rank``, until the controller has read
   the lists its off-policy gate needs (``rollout_ope_lists``, at most 500);
4. publishes the harmful snapshot (the same ranker, scores negated: ``rollout.devtools.negated``)
   and waits for its rollback (at most ``--timeout-s``), polling both nodes' ``/readyz``
   (every 10 ms) for the decision they apply;
5. optionally (``--good``) publishes a good snapshot (another weight generator on the same ranker)
   and waits for its promotion the same way.

Printed, per published snapshot: the controller's decisions with their times from the publish
(the broker's acknowledgement) to ``decided_at_ms``, and each node's time from the decision to
applying it; from the impressions topic, the impressions the harmful snapshot served before the
rollback, as a count and as a share of all impressions during its canary (bounded in expectation
by canary_share x (1 - holdout_share) = 0.18), and the traffic rate achieved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script, benchmarks/ is sys.path[0], and a module there named like a package of the
# project (benchmarks/learner.py) would shadow it: look the packages up from the project root.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)


import httpx
import torch
from prometheus_client import CollectorRegistry, Counter

from actor_service.api import RankRequest
from actor_service.arms import CANARY, HOLDOUT, PERSONALIZED, assign_arm
from actor_service.devtools import SnapshotPublisher, example_request, free_port, make_model, snapshot_record
from actor_service.model_slot import served_snapshot
from actor_service.ranking import rank
from actor_service.routing import Routing
from actor_service.served import Served
from base.kafka import read_topic
from base.metrics_store import client as clickhouse_client
from base.metrics_store import init_tables
from base.settings import TOPIC_IMPRESSIONS, TOPIC_ROLLOUT, Settings
from base.topics import create_topics, delete_prefixed_topics
from model.snapshot import decode_snapshot, header_of
from model.snapshot_keys import snapshot_keys
from paperec.demo import DEMO_ENV
from paperec.services import ServiceProcess, Supervisor
from paperec.traffic import Traffic, as_env, serve_base_port
from rollout.devtools import negated, proxy_ranker_model
from schemas import Exploration, Impression, RolloutDecision, decode_impression, decode_rollout_decision
from simulator import SimulatorConfig

DEMO_HOLDOUT_SHARE = 0.1  # the demo's and compose's node setting (docs/rollout.md)
DEMO_CANARY_SHARE = 0.2  # the controller's default canary share
SALT = "paperec"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def served_from_snapshot(seed: int, version: int, settings: Settings) -> Served:
    """A model as a node holds it: a signed snapshot record decoded and verified, served with its
    header's exploration (the learner's default)."""
    rec = snapshot_record(make_model(seed), version, settings)
    header, model = decode_snapshot(header_of(list(rec.headers)), rec.value, snapshot_keys(settings).accepted)
    return served_snapshot(header, model, Exploration(noise_std=0.1))  # the header has its own


@dataclass
class Variant:
    name: str
    call: Callable[[int], object]  # i: the call's index (picks the user)
    latencies: list[float] = field(default_factory=list)

    def once(self, i: int) -> None:
        t = time.perf_counter()
        self.call(i)
        self.latencies.append(time.perf_counter() - t)


def interleaved(variants: list[Variant], seconds: float) -> None:
    """One call of each variant in turn until ``seconds`` have passed: every variant sees the
    same machine load (other processes' bursts land on all of them alike)."""
    for v in variants:
        for i in range(3):
            v.call(i)  # warm: first calls allocate
    start, i = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for v in variants:
            v.once(i)
        i += 1


def paired(v: Variant, base: Variant) -> float:
    """Median of the per-turn ratios (calls of one turn ran back to back, under the same load)."""
    n = min(len(v.latencies), len(base.latencies))
    return statistics.median(a / b for a, b in zip(v.latencies[:n], base.latencies[:n], strict=True))


def users_in(arm: str, canary_share: float, n: int) -> list[str]:
    """``n`` user ids of ``arm`` under the demo's shares."""
    out: list[str] = []
    i = 0
    while len(out) < n:
        uid = f"user-{i}"
        if assign_arm(uid, SALT, DEMO_HOLDOUT_SHARE, canary_share) == arm:
            out.append(uid)
        i += 1
    return out


def run_overhead(args: argparse.Namespace) -> list[str]:
    torch.set_num_threads(1)  # the node's scorer: serve_torch_threads = 1
    settings = Settings.from_env().replace(dev_mode=True)
    incumbent = served_from_snapshot(1, 1, settings)
    candidate = served_from_snapshot(2, 2, settings)
    body = example_request(args.candidates, incumbent.model.ranker.cfg, seed=args.candidates)
    base_req = RankRequest.model_validate(body)
    routing = Routing(
        incumbent,
        candidate,
        canary_share=DEMO_CANARY_SHARE,
        holdout_share=DEMO_HOLDOUT_SHARE,
        salt=SALT,
        log_arms=True,  # guarded mode: impressions name their arm
    )
    # the node counts requests per arm (Instruments.arm_requests): the same kind of counter here
    per_arm = Counter("bench_arm_requests", "requests per arm", ["arm"], registry=CollectorRegistry())
    population = [f"user-{i}" for i in range(1000)]
    personalized = users_in(PERSONALIZED, DEMO_CANARY_SHARE, 200)
    holdout = users_in(HOLDOUT, DEMO_CANARY_SHARE, 200)
    reqs = {
        uid: base_req.model_copy(update={"user_id": uid}) for uid in {*population, *personalized, *holdout}
    }
    gen = torch.Generator().manual_seed(0)
    ts_ms = int(time.time() * 1000)

    def none(i: int, users: list[str] = population) -> object:
        return rank(incumbent, reqs[users[i % len(users)]], "r", ts_ms, gen)

    def assigned(i: int, users: list[str] = personalized) -> object:
        uid = users[i % len(users)]
        route = routing.route(uid)
        arm = route.arm if routing.log_arms else None
        out = rank(route.served, reqs[uid], "r", ts_ms, gen, arm, route.fixed_weights)
        per_arm.labels(route.arm).inc()
        return out

    variants = [
        Variant("none", none),
        Variant("assigned (personalized users)", assigned),
        Variant("holdout users", lambda i: assigned(i, holdout)),
        Variant(
            f"mixed (holdout {DEMO_HOLDOUT_SHARE:g}, canary {DEMO_CANARY_SHARE:g})",
            lambda i: assigned(i, population),
        ),
    ]
    arms = [routing.route(uid).arm for uid in population]
    print(
        f"{args.candidates} candidates; {len(population)} users in the mix: "
        + ", ".join(f"{a} {arms.count(a)}" for a in (HOLDOUT, PERSONALIZED, CANARY))
    )
    interleaved(variants, args.seconds)
    # Routing.route alone, many calls: the assignment's own cost per request (µs).
    n_route = 200_000
    t = time.perf_counter()
    for i in range(n_route):
        routing.route(population[i % len(population)])
    route_s = (time.perf_counter() - t) / n_route

    base = variants[0]
    base_p50, base_mean = pct(base.latencies, 0.5), statistics.fmean(base.latencies)
    print(f"\n{'variant':48s} calls  p50 ms  mean ms  p50/none  mean/none  paired")
    for v in variants:
        p50, mean = pct(v.latencies, 0.5), statistics.fmean(v.latencies)
        print(
            f"  {v.name:46s} {len(v.latencies):5d}  {p50 * 1e3:6.3f}  {mean * 1e3:7.3f}  "
            f"{p50 / base_p50:8.3f}  {mean / base_mean:9.3f}  {paired(v, base):6.3f}"
        )
    print("  paired: median over turns of (this call / the none call of the same turn)")
    print(f"  Routing.route alone: {route_s * 1e6:.2f} µs per call ({n_route} calls)")
    assigned_ratio = pct(variants[1].latencies, 0.5) / base_p50
    verdict = "met" if assigned_ratio <= 1.05 else "NOT met"
    return [
        f"arm assignment at {args.candidates} candidates: assigned/none p50 {assigned_ratio:.3f}x, paired "
        f"{paired(variants[1], base):.3f}x (target <= 1.05: {verdict}); "
        f"Routing.route alone {route_s * 1e6:.2f} µs = {route_s / base_p50 * 100:.3f}% of none's p50 "
        f"{base_p50 * 1e3:.2f} ms; mixed traffic (holdout re-ranking included) p50 "
        f"{pct(variants[3].latencies, 0.5) / base_p50:.3f}x; holdout users "
        f"{pct(variants[2].latencies, 0.5) / base_p50:.3f}x"
    ]


OPE_WARMUP_MAX = 500  # the controller's ope_min_lists cap (rollout.controller.ControllerConfig)


class ReadyzWatch:
    """Polls every node's /readyz in a thread and records when each decision id first appears."""

    def __init__(self, urls: list[str], period_s: float = 0.01) -> None:
        self.urls, self.period_s = urls, period_s
        self.seen: dict[tuple[str, str], float] = {}  # (node url, decision id) -> first seen, wall s
        self.last: dict[str, Any] = {}  # node url -> its latest /readyz body (or error)
        self._client = httpx.Client(timeout=2.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readyz-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for url in self.urls:
                try:
                    body = self._client.get(url + "/readyz").json()
                except Exception as exc:
                    self.last[url] = repr(exc)
                    continue
                self.last[url] = body
                did = body.get("decision_id")
                if did is not None:
                    self.seen.setdefault((url, did), time.time())
            self._stop.wait(self.period_s)

    def wait_for(self, decision_id: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all((u, decision_id) in self.seen for u in self.urls):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._client.close()


def _decisions(settings: Settings) -> list[RolloutDecision]:
    """Every decision on the control topic so far (read back: not verified here)."""
    out = []
    for rec in read_topic(settings, TOPIC_ROLLOUT, timeout_s=10):
        if rec.value:
            out.append(decode_rollout_decision(rec.value))
    return out


def _wait_decision(
    settings: Settings, version: int, kinds: tuple[str, ...], timeout_s: float, check: Callable[[], None]
) -> RolloutDecision | None:
    """The first decision about ``version`` of one of ``kinds`` (polled on the control topic)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check()
        found = [d for d in _decisions(settings) if d.version == version and d.decision in kinds]
        if found:
            return found[0]
        time.sleep(0.5)
    return None


NOT_COUNTED = ('arm="invalid"', 'arm="duplicate"')  # list outcomes the controller did not use


def _lists_read(url: str) -> float:
    """List outcomes the controller has read and used (its /metrics), whatever their arm."""
    try:
        text = httpx.get(url + "/metrics", timeout=2.0).text
    except httpx.HTTPError:
        return 0.0
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("paperec_rollout_lists_total{") and not any(x in line for x in NOT_COUNTED)
    )


def run_loop(args: argparse.Namespace) -> list[str]:
    run_id = uuid.uuid4().hex[:8]
    sim_cfg = SimulatorConfig(seed=args.seed, n_users=args.users)
    ranker = sim_cfg.ranker_config()
    overrides: dict[str, Any] = {
        "topic_prefix": f"paperec.bench.{run_id}.",
        "clickhouse_database": f"bench_rollout_{run_id}",
        "dev_mode": True,
        "rollout": "guarded",
        "holdout_share": DEMO_HOLDOUT_SHARE,
        "serve_port": serve_base_port(),
        "rollout_port": free_port(),
    }
    for name in (
        "canary_share",
        "rollout_min_lists",
        "rollout_max_lists",
        "rollout_max_drop",
        "rollout_alpha",
    ):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    settings = Settings.from_env().replace(**overrides)
    problems = create_topics(settings)
    if problems:
        raise SystemExit(f"topics: {problems}")
    init_tables(settings)
    env = {**as_env(settings), **DEMO_ENV}
    cold_start = json.dumps(
        {"ranker": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(ranker).items()}}
    )
    ports = [settings.serve_port + 1, settings.serve_port + 2]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    supervisor = Supervisor()
    publisher = SnapshotPublisher(settings)
    summary: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(args.logs or tmp)
        print(f"logs in {logs}" + ("" if args.logs else " (deleted at the end; --logs DIR keeps them)"))
        services = [
            ServiceProcess("streams", ["streams"], env, logs / "streams.log"),
            *(
                ServiceProcess(
                    f"actor-{i + 1}",
                    [
                        "serve",
                        "--serve-port",
                        str(port),
                        "--serve-node-id",
                        f"actor-{i + 1}",
                        "--serve-cold-start-config",
                        cold_start,
                        "--serve-snapshot-dir",
                        str(logs / f"snap-{i + 1}"),
                    ],
                    env,
                    logs / f"actor-{i + 1}.log",
                )
                for i, port in enumerate(ports)
            ),
            ServiceProcess("rollout", ["rollout"], env, logs / "rollout.log"),
        ]
        watch: ReadyzWatch | None = None
        traffic = None

        def check() -> None:
            dead = supervisor.dead()
            if dead:
                raise SystemExit("\n".join(f"{d.name} exited:\n{d.tail(40)}" for d in dead))
            if traffic is not None and traffic.error is not None:
                raise SystemExit(f"traffic failed: {traffic.error!r}")

        try:
            for service in services:
                supervisor.start(service)
            good = proxy_ranker_model(ranker, bait_index=sim_cfg.n_topics, quality_index=sim_cfg.n_topics + 1)
            t_pub = _publish(publisher, good, 1, settings)
            boot = _wait_decision(settings, 1, ("bootstrap",), 120, check)
            if boot is None:
                raise SystemExit("no bootstrap decision in 120 s:\n" + services[-1].tail(40))
            print(f"v1 (good) published; bootstrap decided after {boot.decided_at_ms / 1000 - t_pub:.2f} s")
            watch = ReadyzWatch(urls)
            if not watch.wait_for(boot.decision_id, 120):
                tails = "\n".join(f"{s.name}:\n{s.tail(30)}" for s in services[1:3])
                raise SystemExit(
                    f"the nodes did not apply {boot.decision_id} in 120 s; /readyz: {watch.last}\n{tails}"
                )
            rate = args.lists_per_s or 1e9
            traffic = Traffic(
                settings, urls, seed=args.seed, users=args.users, parallel=args.parallel, lists_per_s=rate
            ).start()
            warm = min(OPE_WARMUP_MAX, settings.rollout_ope_lists)
            started, deadline = time.time(), time.monotonic() + 180
            rollout_url = f"http://127.0.0.1:{settings.rollout_port}"
            while _lists_read(rollout_url) < warm:
                check()
                if time.monotonic() > deadline:
                    raise SystemExit(f"the controller read fewer than {warm} lists in 180 s")
                time.sleep(0.5)
            print(f"warm-up: {len(traffic.answered)} lists in {time.time() - started:.1f} s")

            bad_version = 2
            t_bad = _publish(publisher, negated(good), bad_version, settings)
            t_traffic = (time.time(), len(traffic.answered))
            end = _wait_decision(
                settings, bad_version, ("rollback", "reject_ope", "promote"), args.timeout_s, check
            )
            decisions = [d for d in _decisions(settings) if d.version == bad_version]
            for d in decisions:
                watch.wait_for(d.decision_id, 5)
            summary += _report(f"v{bad_version} (harmful: scores negated)", t_bad, decisions, watch, urls)
            if end is None:
                summary.append(f"v{bad_version}: no final decision within {args.timeout_s:g} s")
            time.sleep(2)  # impressions of lists answered just before the rollback reach the topic
            lists_per_s = (len(traffic.answered) - t_traffic[1]) / (time.time() - t_traffic[0])
            if args.good:
                good2 = proxy_ranker_model(
                    ranker, bait_index=sim_cfg.n_topics, quality_index=sim_cfg.n_topics + 1, seed=7
                )
                t_good = _publish(publisher, good2, 3, settings)
                end = _wait_decision(
                    settings, 3, ("promote", "rollback", "reject_ope"), args.timeout_s, check
                )
                decisions = [d for d in _decisions(settings) if d.version == 3]
                for d in decisions:
                    watch.wait_for(d.decision_id, 5)
                summary += _report("v3 (good: another weight generator)", t_good, decisions, watch, urls)
                if end is None:
                    summary.append(f"v3: no final decision within {args.timeout_s:g} s")
            traffic.stop()
            impressions = [decode_impression(r.value) for r in read_topic(settings, TOPIC_IMPRESSIONS, 60)]
            summary += _impressions_report(impressions, decisions_of(settings, bad_version), bad_version)
            summary.append(
                f"traffic: {lists_per_s:.1f} lists/s while v{bad_version} was judged "
                f"({args.users} users, {args.parallel} parallel sessions"
                + (
                    f", paced at {args.lists_per_s:g}/s)"
                    if args.lists_per_s
                    else ", unpaced: the demo's driver)"
                )
            )
        finally:
            if traffic is not None:
                traffic.stop()
            if watch is not None:
                watch.close()
            supervisor.stop_all()
            publisher.close()
            if not args.keep:
                _clean_up(settings)
    return summary


def _clean_up(settings: Settings) -> None:
    """Delete the run's topics and database; a failure is reported, not raised (it must not hide
    the error that ended the run)."""
    try:
        delete_prefixed_topics(settings)
        ch = clickhouse_client(settings)
        try:
            ch.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse_database}")
        finally:
            ch.disconnect()
    except Exception as exc:
        print(f"clean-up incomplete ({settings.topic_prefix}*, {settings.clickhouse_database}): {exc!r}")


def _publish(publisher: Any, model: Any, version: int, settings: Settings) -> float:
    """Publish a signed snapshot; the wall time (s) of the broker's acknowledgement."""
    publisher.publish(snapshot_record(model, version, settings))
    return time.time()


def decisions_of(settings: Settings, version: int) -> list[RolloutDecision]:
    return [d for d in _decisions(settings) if d.version == version]


def _report(
    label: str, t_pub: float, decisions: list[RolloutDecision], watch: ReadyzWatch, urls: list[str]
) -> list[str]:
    lines = []
    for d in decisions:
        applied = [watch.seen.get((u, d.decision_id)) for u in urls]
        lag = ", ".join(
            "not seen" if a is None else f"{(a - d.decided_at_ms / 1000) * 1000:.0f} ms" for a in applied
        )
        lines.append(
            f"{label}: {d.decision} {d.decided_at_ms / 1000 - t_pub:.1f} s after publish ({d.reason}); "
            f"applied by the nodes after {lag}"
        )
    return lines or [f"{label}: no decision"]


def _impressions_report(
    impressions: list[Impression], decisions: list[RolloutDecision], version: int
) -> list[str]:
    canary = next((d for d in decisions if d.decision == "canary"), None)
    final = next((d for d in decisions if d.decision in ("rollback", "reject_ope", "promote")), None)
    served = [i for i in impressions if i.snapshot_version == version]
    by_arm: dict[str, int] = {}
    for i in served:
        by_arm[str(i.arm)] = by_arm.get(str(i.arm), 0) + 1
    items = sum(len(i.items) for i in served)
    line = f"v{version}: {len(served)} lists ({items} item impressions) served, by arm {by_arm}"
    if canary is not None:
        end_ms = final.decided_at_ms if final is not None else max(i.ts_ms for i in impressions)
        during = [i for i in impressions if canary.decided_at_ms <= i.ts_ms <= end_ms]
        share = len(served) / len(during) if during else float("nan")
        after = [i for i in served if final is not None and i.ts_ms > final.decided_at_ms + 1000]
        line += (
            f"; {share:.3f} of the {len(during)} lists served between its canary and "
            f"{'its ' + final.decision if final else 'the end'} (bound in expectation: canary_share x "
            f"(1 - holdout_share)); {len(after)} more than 1 s after the decision"
        )
    return [line]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", nargs="?", choices=("overhead", "loop", "all"), default="all")
    parser.add_argument("--candidates", type=int, default=200, help="candidates per list (overhead)")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="overhead: seconds, all variants together"
    )
    parser.add_argument("--users", type=int, default=300, help="loop: simulated users (the demo's 300)")
    parser.add_argument("--parallel", type=int, default=8, help="loop: concurrent sessions (the demo's 8)")
    parser.add_argument("--seed", type=int, default=0, help="loop: simulator seed")
    parser.add_argument("--lists-per-s", type=float, default=0.0, help="loop: pace (0: unpaced, as the demo)")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="loop: wait for a decision at most")
    parser.add_argument("--good", action="store_true", help="loop: also publish a good snapshot after")
    parser.add_argument("--keep", action="store_true", help="loop: keep the topics and the database")
    parser.add_argument("--logs", default="", help="loop: the services' log directory (default: temporary)")
    for name, kind in (("canary-share", float), ("rollout-min-lists", int), ("rollout-max-lists", int),
                       ("rollout-max-drop", float), ("rollout-alpha", float)):  # fmt: skip
        parser.add_argument(f"--{name}", type=kind, default=None, help="loop: the controller's setting")
    args = parser.parse_args()
    summary: list[str] = []
    if args.part in ("overhead", "all"):
        summary += run_overhead(args)
    if args.part in ("loop", "all"):
        summary += run_loop(args)
    print("\nsummary")
    for line in summary:
        print("  " + line)


if __name__ == "__main__":
    main()
