"""Throughput of ``paperec replay`` vs a bare kafka-python producer loop, in the same run.

    .venv/bin/python -m benchmarks.replay [--users 700] [--sessions 5] [--rounds 3] [--cli]

1. Simulates a log (``paperec simulate``'s ``simulate_log``, seeded; the defaults give about
   110k events, ~75 MB) into a temporary directory.
2. Bare producer: one kafka-python ``KafkaProducer`` with replay's own producer options
   (``paperec.replay.producer_config``: acks=all, idempotent, linger 5 ms) sends the log's
   events as (topic, key, value) tuples encoded *before* the clock starts (the same bytes replay
   sends), then flushes and closes. Timed from the producer's construction to its close.
3. ``paperec replay``: by default the command's own entry point ``paperec.replay.run`` is called
   in this process with the arguments ``paperec replay LOG --no-progress`` parses to. That is
   everything the command does (open and read the file, parse and validate each line, re-order
   with ``in_time_order`` -- these three in the command's reader worker process, whose start-up
   is timed too -- ``replay()`` into a ``KafkaSender``, flush and close), less the
   interpreter's start-up and imports, which do not depend on the log's size. Timed from the
   call to its return, i.e. until every event is acked (``close`` flushes). With ``--cli`` the
   command is run as users run it instead, ``python -m paperec.cli replay LOG --no-progress`` in
   a subprocess, timed from its start to its exit (interpreter start-up included).

Events/s = events published / that wall time. Each line also shows the client's CPU time per
event (this process's threads, or the CLI subprocess): the broker shares the machine's CPUs, and
CPU per event moves less than wall time when other work loads the machine. After each
measurement the topics' end offsets are read back: every event must be on the broker.
Measurements alternate (bare, replay, bare, replay, ...) for ``--rounds`` rounds, each to its own
fresh topics (created before any clock starts), so load changes on a shared machine hit both
sides alike; the ratio replay/bare is taken per round and its median is compared with the target
(>= 0.5x). Topics are deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaProducer, TopicPartition

from base import kafka as kafka_clients
from base.settings import Settings
from base.topics import create_topics, delete_prefixed_topics
from paperec import replay as replay_cmd
from paperec.simulate import simulate_log
from schemas import encode
from simulator.config import SimulatorConfig
from simulator.logfile import LogLine, in_time_order, read_log

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.5  # replay >= 0.5x the bare producer's events/s


@dataclass
class Workload:
    log: Path
    events: list[tuple[str, bytes, bytes]]  # (topic suffix, key, value) in replay's order

    def __len__(self) -> int:
        return len(self.events)


def make_workload(args: argparse.Namespace, out_dir: Path) -> Workload:
    path = out_dir / "bench.jsonl"
    t = time.perf_counter()
    cfg = SimulatorConfig(seed=args.seed, n_users=args.users)
    counts = simulate_log(cfg, args.sessions, path)
    events = []
    for item in in_time_order(read_log(path)):
        assert isinstance(item, LogLine), item  # the simulator writes no corrupt lines
        e = item.event
        events.append((replay_cmd.TOPIC_OF[e.type], e.request_id.encode(), encode(e)))
    print(
        f"log: {args.users} users x {args.sessions} sessions -> {len(events)} events "
        f"({counts.get('impression', 0)} impressions, {counts.get('click', 0)} clicks, "
        f"{counts.get('dwell', 0)} dwells), {path.stat().st_size / 1e6:.0f} MB, "
        f"simulated and pre-encoded in {time.perf_counter() - t:.0f} s"
    )
    return Workload(path, events)


def end_offsets(settings: Settings) -> int:
    """Records on the three event topics behind ``settings.topic_prefix``."""
    consumer = kafka_clients.consumer(settings, enable_auto_commit=False)
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in (settings.topic(s) for s in replay_cmd.TOPIC_OF.values())
            for p in consumer.partitions_for_topic(topic) or ()
        ]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


def bare_records(settings: Settings, workload: Workload) -> list[tuple[str, bytes, bytes]]:
    topics = {suffix: settings.topic(suffix) for suffix in replay_cmd.TOPIC_OF.values()}
    return [(topics[s], k, v) for s, k, v in workload.events]


def bare_producer(settings: Settings, records: list[tuple[str, bytes, bytes]]) -> float:
    """Seconds for a bare KafkaProducer to send every pre-encoded event and have it acked."""
    t = time.perf_counter()
    producer = KafkaProducer(**replay_cmd.producer_config(settings))
    send = producer.send
    for topic, key, value in records:
        send(topic, key=key, value=value)
    producer.flush(timeout=120)
    producer.close(timeout=120)
    return time.perf_counter() - t


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system, all threads)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def replay_args(log: Path) -> argparse.Namespace:
    """The arguments ``paperec replay LOG --no-progress`` parses to (the command's defaults)."""
    parser = argparse.ArgumentParser()
    replay_cmd.configure(parser)
    return parser.parse_args([str(log), "--no-progress"])


def paperec_replay(settings: Settings, workload: Workload, cli: bool) -> float:
    """Seconds ``paperec replay LOG --no-progress`` takes, until every event is acked."""
    if cli:
        env = dict(os.environ, PAPEREC_TOPIC_PREFIX=settings.topic_prefix)
        env.setdefault("PAPEREC_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
        cmd = [sys.executable, "-m", "paperec.cli", "replay", str(workload.log), "--no-progress"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - t
        output, rc = proc.stdout + proc.stderr, proc.returncode
    else:
        args = replay_args(workload.log)
        out = io.StringIO()
        t = time.perf_counter()
        with contextlib.redirect_stdout(out):
            rc = replay_cmd.run(args, settings)
        elapsed = time.perf_counter() - t
        output = out.getvalue()
    if rc != 0 or f"published {len(workload)} events" not in output:
        raise RuntimeError(f"paperec replay failed (exit status {rc}):\n{output}")
    return elapsed


def profile_replay(settings: Settings, workload: Workload, path: Path) -> None:
    """``paperec.replay.run`` once more under cProfile (wall clock); top functions printed."""
    args = replay_args(workload.log)
    profile = cProfile.Profile()
    with contextlib.redirect_stdout(io.StringIO()):
        profile.enable()
        try:
            replay_cmd.run(args, settings)
        finally:
            profile.disable()
    profile.dump_stats(str(path))
    print(f"\ncProfile of paperec replay (main thread; stats in {path}):")
    pstats.Stats(profile).sort_stats("tottime").print_stats(20)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=700, help="simulated users")
    p.add_argument("--sessions", type=int, default=5, help="sessions per user (~31 events/session)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3, help="bare/replay pairs, alternated")
    p.add_argument("--cli", action="store_true", help="time the CLI in a subprocess (start-up included)")
    p.add_argument("--keep-topics", action="store_true")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--profile", type=Path, help="finally profile one more replay, stats to this file")
    args = p.parse_args()
    if min(args.users, args.sessions, args.rounds) < 1:
        p.error("--users, --sessions and --rounds must be >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python 3 warns whenever its I/O thread waited > 100 ms for the GIL (it does, while
    # replay's thread parses): many lines, no failure. Real errors still show.
    logging.getLogger("kafka").setLevel(logging.ERROR)

    base = Settings.from_env()
    base = base.replace(topic_prefix=f"paperec.bench.{uuid.uuid4().hex[:8]}.")
    # One set of fresh topics per measurement, all under the base prefix (deleted together).
    runs = [(side, r) for r in range(args.rounds) for side in ("bare", "replay")]
    if args.profile:
        runs.append(("profile", 0))
    per_run = {run: base.replace(topic_prefix=f"{base.topic_prefix}{run[0]}{run[1]}.") for run in runs}
    try:
        with tempfile.TemporaryDirectory(prefix="paperec-bench-replay-") as tmp:
            workload = make_workload(args, Path(tmp))
            for settings in per_run.values():
                problems = create_topics(settings)
                if problems:
                    print("\n".join(problems), file=sys.stderr)
                    return 1
            how = "CLI subprocess, start-up included" if args.cli else "paperec.replay.run in-process"
            print(
                f"broker {base.kafka_bootstrap}, {base.event_partitions} partitions per event topic; "
                f"replay timed as: {how}"
            )
            rates: dict[str, list[float]] = {"bare": [], "replay": []}
            for (side, r), settings in per_run.items():
                if side == "profile":
                    assert args.profile is not None
                    profile_replay(settings, workload, args.profile)
                    continue
                records = bare_records(settings, workload) if side == "bare" else []
                cpu0 = cpu_seconds()
                if side == "bare":
                    seconds = bare_producer(settings, records)
                else:
                    seconds = paperec_replay(settings, workload, args.cli)
                cpu_us = (cpu_seconds() - cpu0) / len(workload) * 1e6
                on_broker = end_offsets(settings)
                if on_broker != len(workload):
                    raise RuntimeError(f"{side}: {on_broker} of {len(workload)} events on the broker")
                rates[side].append(len(workload) / seconds)
                label = "bare KafkaProducer loop" if side == "bare" else "paperec replay"
                print(
                    f"round {r + 1} {label:24s} {rates[side][-1]:10,.0f} events/s "
                    f"({seconds:5.2f} s; client CPU {cpu_us:3.0f} us/event)"
                )
    finally:
        if not args.keep_topics:
            delete_prefixed_topics(base)

    ratios = [rp / b for b, rp in zip(rates["bare"], rates["replay"], strict=True)]
    ratio = statistics.median(ratios)
    bare, replayed = statistics.median(rates["bare"]), statistics.median(rates["replay"])
    print(
        f"\nmedian of {args.rounds} rounds ({len(workload)} events):\n"
        f"  bare KafkaProducer loop  {bare:10,.0f} events/s\n"
        f"  paperec replay           {replayed:10,.0f} events/s\n"
        f"  ratio replay/bare        {ratio:10.2f}x   (per round: {', '.join(f'{x:.2f}' for x in ratios)})\n"
        f"  target                   >= {TARGET}x: {'MET' if ratio >= TARGET else 'NOT MET'}"
    )
    if args.json:
        results = {
            "events": len(workload),
            "bare_events_per_s": rates["bare"],
            "replay_events_per_s": rates["replay"],
            "ratios": ratios,
            "ratio_median": ratio,
            "cli": args.cli,
        }
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ratio >= TARGET else 2


if __name__ == "__main__":
    sys.exit(main())
