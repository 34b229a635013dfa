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

Both numbers come from the same run on the same machine (the broker shares its CPUs). Settings
(broker address, partitions, ...) come from PAPEREC_* variables as everywhere else; the join
window and session gap are shortened so the backlog closes while it is being read.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from base import kafka as kafka_clients
from base.settings import (
    TOPIC_CLICKS,
    TOPIC_DWELLS,
    TOPIC_IMPRESSIONS,
    TOPIC_LIST_OUTCOMES,
    TOPIC_TRANSITIONS,
    Settings,
)
from base.topics import create_topics, delete_prefixed_topics
from schemas import Click, Dwell, Impression, decode, transition_id

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


def run_join(
    settings: Settings, args: argparse.Namespace, workload: Workload, log_path: Path
) -> dict[str, float]:
    env = dict(os.environ)
    env.update(
        {
            "PAPEREC_TOPIC_PREFIX": settings.topic_prefix,
            "PAPEREC_JOIN_WINDOW_MS": str(args.window_ms),
            "PAPEREC_JOIN_LATENESS_MS": str(args.lateness_ms),
            "PAPEREC_SESSION_GAP_MS": str(args.session_gap_ms),
            "PAPEREC_STREAMS_IDLE_MS": "1000",
            "PAPEREC_STREAMS_COMMIT_INTERVAL_S": "0.25",
            "PAPEREC_STREAMS_METRICS_CLICKHOUSE": "1" if args.clickhouse else "0",
            "PAPEREC_STATE_DIR": tempfile.mkdtemp(prefix="paperec-bench-"),
        }
    )
    inputs = {settings.topic(t) for t in (TOPIC_IMPRESSIONS, TOPIC_CLICKS, TOPIC_DWELLS)}
    outcomes = settings.topic(TOPIC_LIST_OUTCOMES)
    admin = kafka_clients.admin(settings)
    ends = kafka_clients.consumer(settings, group_id=None)
    out_tps, outcome_tps = (
        [TopicPartition(t, p) for p in sorted(ends.partitions_for_topic(t) or ())]
        for t in (settings.topic(TOPIC_TRANSITIONS), outcomes)
    )
    n_out = len(workload.expected_ids)
    with open(log_path, "w") as log:
        cmd = [sys.executable, "-m", "streams", "--quiet"]
        if os.environ.get("PAPEREC_BENCH_WORKER_SCRIPT"):  # diagnostics: run the worker through a wrapper
            cmd = [sys.executable, os.environ["PAPEREC_BENCH_WORKER_SCRIPT"]]
        if args.profile:  # CPU time, not wall time: the machine's other load does not count
            cmd = [sys.executable, "-c", PROFILE.format(path=str(args.profile))]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        samples: list[tuple[float, int]] = []  # (time, input records stage 1 committed)
        outputs: list[tuple[float, int]] = []  # (time, transitions on their topic)
        link_lag: list[tuple[float, int]] = []  # (time, list-outcome records stage 2 has not committed)
        deadline = time.time() + args.timeout_s
        while time.time() < deadline and proc.poll() is None:
            n = committed(admin, settings.streams_app_id, inputs)
            t = time.perf_counter()
            samples.append((t, n))
            outputs.append((t, end_offsets(ends, out_tps)))
            linked = committed(admin, settings.streams_link_app_id, {outcomes})
            link_lag.append((t, end_offsets(ends, outcome_tps) - linked))
            if n >= workload.n_events and outputs[-1][1] >= n_out:
                break
            time.sleep(0.05)
        if not samples or samples[-1][1] < workload.n_events or outputs[-1][1] < n_out:
            raise RuntimeError(f"join did not finish the backlog (worker log: {log_path})")
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
        lag_max = max(
            (lag for t, lag in link_lag if marks[0.1] <= t - t_first <= marks[0.9]),
            default=0,
        )
        rate = 0.8 * workload.n_events / (marks[0.9] - marks[0.1])
        cpu_s = _cpu_seconds(proc.pid) + sum(_cpu_seconds(c) for c in _children(proc.pid))
        drained = count_transitions(settings, workload.expected_ids, deadline)
        t_out = _crossing(outputs, n_out) - t_first
        print(
            f"  stage 2 lag on the list outcomes over the steady state: at most {lag_max} records "
            f"(of {args.requests:,} lists); all transitions out {t_out:.1f} s after the first commit"
        )
        return {
            "join_events_per_s": rate,
            "join_events_per_s_whole_backlog": workload.n_events / marks[1.0],
            "transitions_ok": float(drained),
            "all_committed_after_s": marks[1.0],
            "all_transitions_after_s": t_out,
            "link_lag_max_records": float(lag_max),
            "worker_cpu_us_per_event": cpu_s / workload.n_events * 1e6,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
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


def count_transitions(settings: Settings, expected: set[str], deadline: float) -> bool:
    consumer = kafka_clients.consumer(
        settings,
        settings.topic(TOPIC_TRANSITIONS),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    seen: set[str] = set()
    try:
        while time.time() < deadline and not expected <= seen:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    seen.add(orjson.loads(r.value)["transition_id"])
    finally:
        consumer.close()
    missing, extra = expected - seen, seen - expected
    if missing or extra:
        print(f"transitions: {len(missing)} missing, {len(extra)} unexpected", file=sys.stderr)
    return not missing and not extra


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=60_000)
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--items", type=int, default=10, help="items per impression")
    p.add_argument("--features", type=int, default=8, help="features per item")
    p.add_argument("--feedback", type=float, default=1.5, help="mean clicks per list (each with a dwell)")
    p.add_argument("--spacing-ms", type=float, default=1.0, help="event time between requests")
    p.add_argument("--window-ms", type=int, default=3_000)
    p.add_argument("--lateness-ms", type=int, default=500)
    p.add_argument("--session-gap-ms", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout-s", type=float, default=300)
    p.add_argument("--clickhouse", action="store_true", help="also write metrics to ClickHouse")
    p.add_argument("--keep-topics", action="store_true")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--profile", type=Path, help="run the worker under cProfile, stats to this file")
    args = p.parse_args()

    settings = Settings.from_env(topic_prefix=f"paperec.bench.{uuid.uuid4().hex[:8]}.")
    problems = create_topics(settings)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    workload = make_workload(args, t0_ms=int(time.time() * 1000))
    print(
        f"workload: {args.requests} requests, {workload.n_events} events "
        f"({', '.join(f'{k}={len(v)}' for k, v in workload.events.items())}), "
        f"{len(workload.expected_ids)} expected transitions, {settings.event_partitions} partitions"
    )
    try:
        produce_s = asyncio.run(produce(settings, workload))
        print(f"produced in {produce_s:.1f} s")
        bare_before = asyncio.run(bare_consumer(settings, workload.n_events))
        print(f"bare aiokafka consumer + decode: {bare_before:,.0f} events/s")
        log_path = Path(tempfile.mkdtemp(prefix="paperec-bench-log-")) / "worker.log"
        join = run_join(settings, args, workload, log_path)
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
            f"(worker log: {log_path})"
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
    finally:
        if not args.keep_topics:
            delete_prefixed_topics(settings)


if __name__ == "__main__":
    sys.exit(main())
