"""Throughput of the stream join vs a bare aiokafka consumer, on the same events, in one run.

    .venv/bin/python benchmarks/streams.py [--requests 60000] [--users 2000] [--items 10] ...

1. Writes a backlog of impressions, clicks and dwells (keyed by request_id, Kafka's default
   partitioner) to fresh topics under a unique prefix.
2. Bare consumer: one aiokafka consumer reads the three topics and decodes every record with
   ``schemas.decode`` (validation included). Events/s from its first record to its last.
3. Join: a ``paperec streams`` worker (a subprocess, as in production) reads the same backlog.
   Its throughput is measured from the consumer group's committed offsets, which Faust only
   advances after a record's effects (state changelog, list outcomes, transitions) are durable:
   events/s between the first and the last commit, so worker start-up is not counted. Then the
   transitions topic is read back and checked against the expected transition ids.

``benchmarks/scale.py join`` reuses the workload, the backlog and the measurement (``run_join``
with ``workers=2``) to compare one worker with two.

Both numbers come from the same run on the same machine (the broker shares its CPUs). Settings
(broker address, partitions, ...) come from PAPEREC_* variables as everywhere else; the join
window and session gap are shortened so the backlog closes while it is being read.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from base import kafka as kafka_clients
from base.kafka import member_assignments, read_topic
from base.settings import (
    TOPIC_CLICKS,
    TOPIC_DEAD_LETTER,
    TOPIC_DWELLS,
    TOPIC_IMPRESSIONS,
    TOPIC_LIST_OUTCOMES,
    TOPIC_TRANSITIONS,
    Settings,
)
from base.topics import create_topics, delete_prefixed_topics
from schemas import Click, DeadLetter, Dwell, Impression, decode, transition_id

ROOT = Path(__file__).resolve().parent.parent
PROFILE = """
import cProfile, runpy, sys, time
sys.argv = ["streams", "--quiet"]
profile = cProfile.Profile(time.process_time)
profile.enable()
try:
    runpy.run_module("streams", run_name="__main__")
finally:
    profile.disable()
    profile.dump_stats({path!r})
"""


@dataclass
class Workload:
    events: dict[str, list[tuple[bytes, bytes]]]  # topic suffix -> [(key, value)]
    expected_ids: set[str]

    @property
    def n_events(self) -> int:
        return sum(len(v) for v in self.events.values())


def make_workload(args: argparse.Namespace, t0_ms: int) -> Workload:
    """Requests spread evenly in event time; each has ~``feedback`` clicks, each click a dwell."""
    rng = random.Random(args.seed)
    window = args.window_ms
    events: dict[str, list[tuple[int, bytes, bytes]]] = {
        TOPIC_IMPRESSIONS: [],
        TOPIC_CLICKS: [],
        TOPIC_DWELLS: [],
    }
    by_user: dict[str, list[tuple[int, str]]] = {}
    for i in range(args.requests):
        rid, uid = f"req-{i:08d}", f"user-{i % args.users:06d}"
        ts = t0_ms + int(i * args.spacing_ms)
        items = [
            {
                "item_id": f"item-{rng.randrange(10**6)}-{j}",
                "position": j,
                "features": [round(rng.uniform(-1, 1), 4) for _ in range(args.features)],
            }
            for j in range(args.items)
        ]
        w = rng.random()
        imp = {
            "type": "impression",
            "schema_version": 1,
            "request_id": rid,
            "user_id": uid,
            "ts_ms": ts,
            "snapshot_version": 3,
            "objectives": ["click", "dwell"],
            "weights": [w, 1 - w],
            "noise": [0.01, -0.01],
            "user_features": [round(rng.uniform(-1, 1), 4) for _ in range(16)],
            "history": [f"item-{rng.randrange(10**6)}" for _ in range(10)],
            "context": [1.0, 0.0, 0.5, 0.25],
            "items": items,
        }
        key = rid.encode()
        events[TOPIC_IMPRESSIONS].append((ts, key, orjson.dumps(imp)))
        n_clicks = min(args.items, int(rng.expovariate(1 / args.feedback) + 0.5)) if args.feedback else 0
        for pos in rng.sample(range(args.items), n_clicks):
            c_ts = ts + rng.randint(10, window // 2)
            base = {"request_id": rid, "user_id": uid, "item_id": items[pos]["item_id"], "position": pos}
            events[TOPIC_CLICKS].append(
                (c_ts, key, orjson.dumps({"type": "click", "schema_version": 1, **base, "ts_ms": c_ts}))
            )
            d_ts = c_ts + rng.randint(10, window // 3)
            dwell = {
                "type": "dwell",
                "schema_version": 1,
                **base,
                "ts_ms": d_ts,
                "dwell_ms": rng.randint(500, 60_000),
            }
            events[TOPIC_DWELLS].append((d_ts, key, orjson.dumps(dwell)))
        by_user.setdefault(uid, []).append((ts, rid))
    expected = set()
    for uid, lists in by_user.items():
        lists.sort()
        for (ts, rid), (nts, nrid) in itertools.pairwise(lists):
            expected.add(transition_id(uid, rid, None if nts - ts > args.session_gap_ms else nrid))
        expected.add(transition_id(uid, lists[-1][1], None))
    ordered = {t: [(k, v) for _, k, v in sorted(evs, key=lambda e: e[0])] for t, evs in events.items()}
    return Workload(ordered, expected)


def add_workload_args(p: argparse.ArgumentParser, requests: int) -> None:
    """The backlog's and the join's flags (``make_workload``, ``run_join``), shared with scale.py."""
    p.add_argument("--requests", type=int, default=requests)
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--items", type=int, default=10, help="items per impression")
    p.add_argument("--features", type=int, default=8, help="features per item")
    p.add_argument("--feedback", type=float, default=1.5, help="mean clicks per list (each with a dwell)")
    p.add_argument("--spacing-ms", type=float, default=1.0, help="event time between requests")
    p.add_argument("--window-ms", type=int, default=3_000)
    p.add_argument("--lateness-ms", type=int, default=500)
    p.add_argument("--session-gap-ms", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--partitions", type=int, help="default: the event_partitions setting")
    p.add_argument("--timeout-s", type=float, default=300, help="for one join of the backlog")
    p.add_argument("--clickhouse", action="store_true", help="also write metrics to ClickHouse")
    p.add_argument("--keep-topics", action="store_true")


@contextmanager
def fresh_topics(args: argparse.Namespace) -> Iterator[Settings]:
    """Settings with a unique topic prefix whose topics exist; they are deleted afterwards
    (unless ``--keep-topics``)."""
    prefix = f"paperec.bench.{uuid.uuid4().hex[:8]}."
    settings = Settings.from_env(topic_prefix=prefix, event_partitions=args.partitions)
    problems = create_topics(settings)
    if problems:
        raise SystemExit("\n".join(problems))
    try:
        yield settings
    finally:
        if not args.keep_topics:
            delete_prefixed_topics(settings)


async def produce(settings: Settings, workload: Workload) -> float:
    producer = kafka_clients.aio_producer(
        settings,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    t = time.perf_counter()
    try:
        for suffix, evs in workload.events.items():
            topic = settings.topic(suffix)
            for i, (key, value) in enumerate(evs):
                await producer.send(topic, value, key=key)
                if i % 5000 == 0:
                    await asyncio.sleep(0)
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - t


async def bare_consumer(settings: Settings, n_events: int) -> float:
    """Events/s of one aiokafka consumer reading and decoding (validating) every event."""
    expect = {
        settings.topic(TOPIC_IMPRESSIONS): Impression,
        settings.topic(TOPIC_CLICKS): Click,
        settings.topic(TOPIC_DWELLS): Dwell,
    }
    consumer = kafka_clients.aio_consumer(
        settings,
        *expect,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    got, first = 0, None
    try:
        while got < n_events:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                if first is None:
                    first = time.perf_counter()
                cls = expect[tp.topic]
                for r in records:
                    decode(r.value, cls)
                got += len(records)
    finally:
        await consumer.stop()
    assert first is not None
    return got / (time.perf_counter() - first)


def committed(admin: KafkaAdminClient, group: str, topics: set[str]) -> int:
    """Input records the group committed (0 while the broker cannot tell yet, e.g. a fresh
    broker whose offsets topic is still being created)."""
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    except KafkaError:
        return 0
    return sum(o.offset for tp, o in offsets.items() if tp.topic in topics and o.offset > 0)


def end_offsets(consumer: KafkaConsumer, tps: list[TopicPartition]) -> int:
    """Records on these partitions so far (their end offsets, summed)."""
    try:
        return sum(consumer.end_offsets(tps).values())
    except KafkaError:
        return 0


Shares = list[list[int]]  # the partitions of a stage's input each worker owns, largest share first


def partition_split(group: dict[str, Any], topic: str) -> Shares:
    """The partitions of ``topic`` each member of a consumer group owns, from the group's entry
    in kafka-python's ``KafkaAdminClient.describe_groups``. A member whose assignment is not
    decoded owns none."""
    shares = [owned.get(topic, []) for owned in member_assignments(group)]
    return sorted(shares, key=lambda share: (-len(share), share))


def stage_split(admin: KafkaAdminClient, settings: Settings) -> dict[str, Shares | None]:
    """Each stage's split (stage 1: impressions, and so clicks and dwells, co-partitioned with
    them; stage 2: list outcomes); None while its group is not stable (rebalancing, not there yet)."""
    groups = {
        "stage 1": (settings.streams_app_id, settings.topic(TOPIC_IMPRESSIONS)),
        "stage 2": (settings.streams_link_app_id, settings.topic(TOPIC_LIST_OUTCOMES)),
    }
    try:
        described = admin.describe_groups([group for group, _ in groups.values()])
    except KafkaError:
        described = {}
    return {
        stage: partition_split(described[group], topic)
        if described.get(group, {}).get("group_state") == "Stable"
        else None
        for stage, (group, topic) in groups.items()
    }


def format_shares(shares: Shares | None) -> str:
    if shares is None:
        return "unassigned"
    return " | ".join(",".join(map(str, share)) or "-" for share in shares)


@dataclass
class JoinRun:
    """What ``run_join`` measured: its figures (rates, correctness, CPU) and the partition splits."""

    figures: dict[str, float]
    # stage -> [(s after the first commit, its split)]: the first sample and each change after
    splits: dict[str, list[tuple[float, Shares | None]]]


def run_join(
    settings: Settings,
    args: argparse.Namespace,
    workload: Workload,
    log_dir: Path,
    workers: int = 1,
    profile: Path | None = None,
) -> JoinRun:
    """Joins the backlog with ``workers`` workers started together (the same topic prefix, so
    they share each stage's consumer group; each its own state dir and ``worker-<i>.log``)."""
    env = dict(os.environ)
    env.update(
        {
            "PAPEREC_TOPIC_PREFIX": settings.topic_prefix,
            "PAPEREC_EVENT_PARTITIONS": str(settings.event_partitions),
            "PAPEREC_JOIN_WINDOW_MS": str(args.window_ms),
            "PAPEREC_JOIN_LATENESS_MS": str(args.lateness_ms),
            "PAPEREC_SESSION_GAP_MS": str(args.session_gap_ms),
            "PAPEREC_STREAMS_IDLE_MS": "1000",
            "PAPEREC_STREAMS_COMMIT_INTERVAL_S": "0.25",
            "PAPEREC_STREAMS_METRICS_CLICKHOUSE": "1" if args.clickhouse else "0",
        }
    )
    inputs = {settings.topic(t) for t in (TOPIC_IMPRESSIONS, TOPIC_CLICKS, TOPIC_DWELLS)}
    outcomes = settings.topic(TOPIC_LIST_OUTCOMES)
    admin = kafka_clients.admin(settings)
    ends = kafka_clients.consumer(settings, group_id=None)
    out_tps, outcome_tps, dead_tps = (
        [TopicPartition(t, p) for p in sorted(ends.partitions_for_topic(t) or ())]
        for t in (settings.topic(TOPIC_TRANSITIONS), outcomes, settings.topic(TOPIC_DEAD_LETTER))
    )
    n_out = len(workload.expected_ids)
    cmd = [sys.executable, "-m", "streams", "--quiet"]
    if os.environ.get("PAPEREC_BENCH_WORKER_SCRIPT"):  # diagnostics: run the worker through a wrapper
        cmd = [sys.executable, os.environ["PAPEREC_BENCH_WORKER_SCRIPT"]]
    if profile:  # CPU time, not wall time: the machine's other load does not count
        cmd = [sys.executable, "-c", PROFILE.format(path=str(profile))]
    procs = []
    for i in range(workers):
        worker_env = {**env, "PAPEREC_STATE_DIR": tempfile.mkdtemp(prefix="paperec-bench-")}
        with open(log_dir / f"worker-{i}.log", "w") as log:
            procs.append(
                subprocess.Popen(cmd, cwd=ROOT, env=worker_env, stdout=log, stderr=subprocess.STDOUT)
            )
    try:
        samples: list[tuple[float, int]] = []  # (time, input records stage 1 committed)
        outputs: list[tuple[float, int]] = []  # (time, transitions on their topic)
        link_lag: list[tuple[float, int]] = []  # (time, list-outcome records stage 2 has not committed)
        splits: dict[str, list[tuple[float, Shares | None]]] = {}  # stage -> (time, split): changes
        next_split = 0.0
        # All input committed, stage 2 caught up and no transition for this long: the missing
        # ones will not come (the last windows and sessions close well within it, a watermark
        # hold after a rebalance included).
        stall_s = (settings.streams_outage_grace_ms + args.window_ms + args.lateness_ms) / 1000
        stall_s += args.session_gap_ms / 1000 + 10
        grew_at = time.perf_counter()
        deadline = time.time() + args.timeout_s
        while time.time() < deadline and all(proc.poll() is None for proc in procs):
            n = committed(admin, settings.streams_app_id, inputs)
            t = time.perf_counter()
            samples.append((t, n))
            outputs.append((t, end_offsets(ends, out_tps)))
            linked = committed(admin, settings.streams_link_app_id, {outcomes})
            link_lag.append((t, end_offsets(ends, outcome_tps) - linked))
            if t >= next_split:  # a rebalance during the run shows as a change
                next_split = t + 0.25
                for stage, shares in stage_split(admin, settings).items():
                    changes = splits.setdefault(stage, [])
                    if not changes or changes[-1][1] != shares:
                        changes.append((t, shares))
            if len(outputs) > 1 and outputs[-1][1] > outputs[-2][1]:
                grew_at = t
            if n >= workload.n_events and outputs[-1][1] >= n_out:
                break
            if n >= workload.n_events and link_lag[-1][1] == 0 and t - grew_at > stall_s:
                print(f"  transitions stalled at {outputs[-1][1]:,} of {n_out:,} expected", file=sys.stderr)
                break
            time.sleep(0.05)
        if not samples or samples[-1][1] < workload.n_events:
            raise RuntimeError(f"join did not finish the backlog (worker logs: {log_dir})")
        # Steady state: from 10% to 90% of the input committed (start-up and tail excluded).
        # Stage 1 commits an input record once its effects (state, list outcomes) are durable;
        # stage 2's lag on the list outcomes over the same span shows whether it kept up.
        t_first = _crossing(samples, 1)
        marks = {q: _crossing(samples, q * workload.n_events) - t_first for q in (0.1, 0.5, 0.9, 1.0)}
        for name, curve, total in (
            ("input committed", samples, workload.n_events),
            ("transitions out", outputs, n_out),
        ):
            times = " / ".join(f"{_crossing(curve, q * total) - t_first:.1f}" for q in marks)
            print(f"  {name:16} 10% / 50% / 90% / 100%: {times} s after the first commit")
        # Several workers started together: the first to join the group gets every partition (the
        # broker does not wait for more members), and the rebalance that splits them comes seconds
        # later. So the steady state starts once stage 1's final split is in force (seen first;
        # sampled every 0.25 s). One worker's split is in force before its first commit.
        settled = splits["stage 1"][-1][0] if splits.get("stage 1") else t_first
        start, done_at_start, rate = steady_state(samples, workload.n_events, settled)
        steady = (start - t_first, marks[0.9])
        lag_max = max(
            (lag for t, lag in link_lag if steady[0] <= t - t_first <= steady[1]),
            default=0,
        )
        if steady[0] > marks[0.1]:
            print(
                f"  steady state from {steady[0]:.1f} s, when stage 1's final split was first seen "
                f"({done_at_start / workload.n_events:.0%} of the input committed by then"
                + ("; over 60%: no steady-state rate)" if math.isnan(rate) else ")")
            )
        cpu_s = sum(_cpu_seconds(p) for proc in procs for p in (proc.pid, *_children(proc.pid)))
        stalled = outputs[-1][1] < n_out
        drained, duplicates = count_transitions(
            settings, workload.expected_ids, time.time() if stalled else deadline
        )
        t_out = float("nan") if stalled else _crossing(outputs, n_out) - t_first
        dead_letters = end_offsets(ends, dead_tps)  # none expected: the workload is valid and in time
        why = Counter(
            d.stage for d in (decode(r.value, DeadLetter) for r in read_topic(settings, TOPIC_DEAD_LETTER))
        )
        print(
            f"  stage 2 lag on the list outcomes over the steady state: at most {lag_max} records "
            f"(of {args.requests:,} lists); all transitions out {t_out:.1f} s after the first commit; "
            f"{dead_letters} dead letters{f' {dict(why)}' if why else ''}"
        )
        for stage, changes in splits.items():
            history = "; ".join(f"{t - t_first:+.1f} s {format_shares(shares)}" for t, shares in changes)
            print(f"  {stage} partitions per worker from (s after the first commit): {history}")
        figures = {
            "join_events_per_s": rate,
            "steady_state_from_s": steady[0],
            "join_events_per_s_whole_backlog": workload.n_events / marks[1.0],
            "transitions_ok": float(drained),
            "duplicate_transitions": float(duplicates),
            "dead_letters": float(dead_letters),
            "all_committed_after_s": marks[1.0],
            "all_transitions_after_s": t_out,
            "link_lag_max_records": float(lag_max),
            "worker_cpu_us_per_event": cpu_s / workload.n_events * 1e6,
        }
        return JoinRun(
            figures,
            {stage: [(t - t_first, shares) for t, shares in changes] for stage, changes in splits.items()},
        )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        admin.close()
        ends.close()


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (the worker's stage-2 process), from /proc."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process used so far, from /proc (0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steady_state(
    samples: list[tuple[float, int]], n_events: int, settled: float
) -> tuple[float, float, float]:
    """The steady state of a join, from (time, input records committed) samples: from 10% of the
    input committed, or from ``settled`` (the time the final partition split was first seen) if
    later, to 90%. Returns (its start, records committed by then, events/s); events/s is nan when
    over 60% was committed by the start (too little left to measure)."""
    start = max(_crossing(samples, 0.1 * n_events), settled)
    end = _crossing(samples, 0.9 * n_events)
    done = _level_at(samples, start)
    if done > 0.6 * n_events:
        return start, done, float("nan")
    return start, done, (0.9 * n_events - done) / (end - start)


def _level_at(samples: list[tuple[float, int]], t: float) -> float:
    """The committed count at time ``t`` (linear between samples)."""
    prev_t, prev_n = samples[0]
    for s_t, n in samples:
        if s_t >= t:
            return prev_n if s_t == prev_t else prev_n + (n - prev_n) * (t - prev_t) / (s_t - prev_t)
        prev_t, prev_n = s_t, n
    return prev_n


def _crossing(samples: list[tuple[float, int]], level: float) -> float:
    """The time the committed count reached ``level`` (linear between samples)."""
    prev_t, prev_n = samples[0][0], 0
    for t, n in samples:
        if n >= level:
            if n == prev_n:
                return t
            return prev_t + (t - prev_t) * (level - prev_n) / (n - prev_n)
        prev_t, prev_n = t, n
    return samples[-1][0]


def count_transitions(settings: Settings, expected: set[str], deadline: float) -> tuple[bool, int]:
    """Reads the transitions topic to its end as of the call, and on until every expected id came
    (or the deadline): (exactly the expected ids, records repeating an id already read)."""
    topic = settings.topic(TOPIC_TRANSITIONS)
    consumer = kafka_clients.consumer(settings, enable_auto_commit=False, group_id=None)
    seen: set[str] = set()
    n_records = 0
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        while True:
            polled = consumer.poll(timeout_ms=500)
            for records in polled.values():
                n_records += len(records)
                for r in records:
                    seen.add(orjson.loads(r.value)["transition_id"])
            at_end = all(consumer.position(tp) >= end for tp, end in ends.items())
            if at_end and (expected <= seen or time.time() >= deadline):
                break
            if time.time() >= deadline + 60:  # the broker does not answer: report what was read
                break
    finally:
        consumer.close()
    missing, extra = expected - seen, seen - expected
    if missing or extra:
        print(f"transitions: {len(missing)} missing, {len(extra)} unexpected", file=sys.stderr)
    return not missing and not extra, n_records - len(seen)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_args(p, requests=60_000)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--profile", type=Path, help="run the worker under cProfile, stats to this file")
    args = p.parse_args()

    with fresh_topics(args) as settings:
        return _bare_vs_join(settings, args)


def _bare_vs_join(settings: Settings, args: argparse.Namespace) -> int:
    """The bare consumer before and after the join, on one backlog."""
    workload = make_workload(args, t0_ms=int(time.time() * 1000))
    print(
        f"workload: {args.requests} requests, {workload.n_events} events "
        f"({', '.join(f'{k}={len(v)}' for k, v in workload.events.items())}), "
        f"{len(workload.expected_ids)} expected transitions, {settings.event_partitions} partitions"
    )
    produce_s = asyncio.run(produce(settings, workload))
    print(f"produced in {produce_s:.1f} s")
    bare_before = asyncio.run(bare_consumer(settings, workload.n_events))
    print(f"bare aiokafka consumer + decode: {bare_before:,.0f} events/s")
    log_dir = Path(tempfile.mkdtemp(prefix="paperec-bench-log-"))
    join = run_join(settings, args, workload, log_dir, profile=args.profile).figures
    # Measured again after the join: on a shared machine the load changes between phases;
    # the ratio is taken against the mean of the two.
    bare_after = asyncio.run(bare_consumer(settings, workload.n_events))
    bare = (bare_before + bare_after) / 2
    print(f"bare aiokafka consumer + decode: {bare_after:,.0f} events/s (again, after the join)")
    ratio = join["join_events_per_s"] / bare
    print(
        f"stream join (1 worker):          {join['join_events_per_s']:,.0f} events/s steady state "
        f"({ratio:.2f}x the bare consumer's mean); "
        f"{join['join_events_per_s_whole_backlog']:,.0f} events/s over the whole backlog"
    )
    print(f"worker CPU: {join['worker_cpu_us_per_event']:.0f} us per event (start-up included)")
    print(
        f"transitions out: {'all expected ids, no others' if join['transitions_ok'] else 'MISMATCH'} "
        f"(worker log: {log_dir / 'worker-0.log'})"
    )
    results = {
        "bare_events_per_s": bare,
        "bare_events_per_s_before_after": [bare_before, bare_after],
        **join,
        "ratio": ratio,
        "events": workload.n_events,
        "requests": args.requests,
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    ok = join["transitions_ok"] and ratio >= 0.25 and join["join_events_per_s"] >= 20_000
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
