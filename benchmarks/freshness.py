"""Freshness: delay from a click to the first served snapshot trained on it, at default settings.

Runs the whole loop on the dev stack (streams worker, learner, two serving nodes; library
default windows, session gap and snapshot cadence) with simulated users driving ``POST /rank``
for ``--duration`` seconds, then:
- every click sent at wall time t_c (its event time is t_c too);
- every snapshot v: its header's input watermark W_v (latest event time the learner had trained
  on) and S_v, the first time both serving nodes served v (polled every 50 ms);
- delay(click) = S_v - t_c for the first v with W_v >= t_c: event -> transition -> trained ->
  snapshot -> served, end to end.
Clicks that no snapshot covered before the run ended are reported separately (they would only
shorten the figures if dropped silently).

    .venv/bin/python -m benchmarks.freshness --duration 120
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

from kafka import TopicPartition

from base import kafka as kafka_clients
from base.metrics_store import init_tables
from base.settings import TOPIC_SNAPSHOTS, Settings
from base.topics import create_topics
from model.snapshot import header_of
from paperec.demo import DemoOptions, demo_services
from paperec.demo_driver import DemoDriver
from paperec.devstack_control import ensure_up
from paperec.services import Supervisor
from schemas import decode_snapshot_header


def watermarks(settings: Settings) -> dict[int, int]:
    """snapshot version -> input watermark (ms), from every header on the snapshot topic."""
    tp = TopicPartition(settings.topic(TOPIC_SNAPSHOTS), 0)
    consumer = kafka_clients.consumer(
        settings,
        enable_auto_commit=False,
        fetch_max_bytes=settings.max_message_bytes * 2,
        max_partition_fetch_bytes=settings.max_message_bytes * 2,
    )
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        out: dict[int, int] = {}
        while consumer.position(tp) < end:
            for records in consumer.poll(timeout_ms=5000).values():
                for r in records:
                    h = decode_snapshot_header(header_of(r.headers))
                    out[h.snapshot_version] = h.watermark_ms
        return out
    finally:
        consumer.close()


class ServedTimes(threading.Thread):
    """Wall time (ms) at which every node first served each snapshot version."""

    def __init__(self, driver: DemoDriver) -> None:
        super().__init__(daemon=True)
        self.driver = driver
        self.first_served_ms: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            versions = self.driver.served_versions()
            if versions and all(v is not None for v in versions):
                v = min(v for v in versions if v is not None)  # served by *all* nodes
                self.first_served_ms.setdefault(v, int(time.time() * 1000))


def delays_s(
    clicks_ms: list[int], marks: dict[int, int], served_ms: dict[int, int]
) -> tuple[list[float], int]:
    covered = sorted((marks[v], served_ms[v]) for v in served_ms if v in marks)
    out, uncovered = [], 0
    for t in clicks_ms:
        served = min((s for w, s in covered if w >= t), default=None)
        if served is None:
            uncovered += 1
        else:
            out.append((served - t) / 1000)
    return out, uncovered


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of traffic (default 120)")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the last snapshots")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()

    base = Settings.from_env()
    started_stack = ensure_up(base)
    settings = base.replace(topic_prefix=f"paperec.fresh-{time.strftime('%Y%m%d-%H%M%S')}.")
    assert not create_topics(settings)
    init_tables(settings)
    out = Path("out/freshness")
    opts = DemoOptions(args.duration, args.users, args.parallel, 0, None, None, out, False)
    services, urls = demo_services(settings, opts, out / "logs", demo_tuning=False)
    supervisor = Supervisor()
    for s in services:
        supervisor.start(s)
    driver = DemoDriver(settings, urls, args.users, 0, args.parallel)
    poller = ServedTimes(driver)
    try:
        driver.wait_ready(120, supervisor)
        poller.start()
        driver.drive(args.duration, supervisor)
        # keep the loop turning (no new clicks) so the last clicks can still be covered
        time.sleep(args.drain)
    finally:
        poller.stop.set()
        supervisor.stop_all()
        driver.close()
        if started_stack:
            from paperec.devstack_control import down

            down(base)
    marks = watermarks(settings)
    delays, uncovered = delays_s(driver.click_times_ms, marks, poller.first_served_ms)
    print(
        f"settings: defaults (join window {settings.join_window_ms} ms + lateness "
        f"{settings.join_lateness_ms} ms, session gap {settings.session_gap_ms} ms; learner default cadence)"
    )
    print(
        f"clicks sent: {len(driver.click_times_ms)}, snapshots: {len(marks)}, "
        f"served versions timed: {len(poller.first_served_ms)}"
    )
    if delays:
        q = statistics.quantiles(delays, n=20)
        print(
            f"click -> first served snapshot trained on it: median {statistics.median(delays):.1f} s, "
            f"p95 {q[18]:.1f} s (n={len(delays)}; target <= 30 s)"
        )
    print(f"clicks not yet covered by a served snapshot when the run ended: {uncovered}")


if __name__ == "__main__":
    main()
