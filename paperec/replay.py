"""``paperec replay``: publish a recorded event log to Kafka in timestamp order.

    paperec replay LOG                      # as fast as possible
    paperec replay LOG --speed 10           # 10x real time (event-time gaps / 10)
    paperec replay data.csv --format kuairand                 # import a KuaiRand log and publish it
    paperec replay data.csv --format kuairand --write-log out.jsonl   # convert only

Impressions, clicks and dwells go to their topics keyed by ``request_id`` (the join's key).
A corrupt line is reported (line number, reason), counted and skipped, never fatal. The exit
status is 0 unless the broker could not take the events.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from base import kafka as kafka_clients
from base.settings import TOPIC_CLICKS, TOPIC_DWELLS, TOPIC_IMPRESSIONS, Settings
from paperec.replay_reader import EncodedEvent, EncodedLine, read_in_order, read_in_worker
from schemas import encode
from simulator.logfile import BadLine, Event, LogLine, LogWriter

log = logging.getLogger(__name__)

TOPIC_OF = {"impression": TOPIC_IMPRESSIONS, "click": TOPIC_CLICKS, "dwell": TOPIC_DWELLS}
MAX_REPORTED_BAD_LINES = 20  # each bad line is logged up to this many; all are counted


@dataclass
class ReplayStats:
    published: Counter[str] = field(default_factory=Counter)
    bad_lines: list[BadLine] = field(default_factory=list)
    out_of_order: int = 0  # events older than one already published (beyond the re-order window)
    delivery_errors: int = 0

    @property
    def total(self) -> int:
        return sum(self.published.values())

    def summary(self) -> str:
        kinds = ", ".join(f"{self.published[t]} {t}s" for t in ("impression", "click", "dwell"))
        text = f"published {self.total} events ({kinds}); skipped {len(self.bad_lines)} corrupt lines"
        if self.out_of_order:
            text += f"; {self.out_of_order} events were out of time order"
        if self.delivery_errors:
            text += f"; {self.delivery_errors} events FAILED to reach the broker"
        return text


class Pacer:
    """Sleeps so that an event at ``ts_ms`` goes out (ts_ms - first ts) / speed after the first.
    ``speed`` None or <= 0: no waiting. Clock and sleep are injectable for tests."""

    def __init__(
        self,
        speed: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.speed = speed if speed and speed > 0 else None
        self.clock, self.sleep = clock, sleep
        self._origin: tuple[int, float] | None = None

    def wait(self, ts_ms: int) -> None:
        if self.speed is None:
            return
        if self._origin is None:
            self._origin = (ts_ms, self.clock())
            return
        ts0, wall0 = self._origin
        delay = wall0 + (ts_ms - ts0) / 1000.0 / self.speed - self.clock()
        if delay > 0:
            self.sleep(delay)


Item = LogLine | EncodedLine | BadLine


def replay(
    items: Iterable[Item],
    send: Callable[[Any], None],
    pacer: Pacer | None = None,
    on_item: Callable[[Item], None] | None = None,
) -> ReplayStats:
    """Send every good event (an Event, or an EncodedEvent from the worker reader) in order;
    report and count bad lines. ``send`` must not raise for per-event delivery problems (count
    them instead); anything it raises aborts the replay."""
    stats = ReplayStats()
    pacer = pacer or Pacer(None)
    last_ts = -1
    for item in items:
        if on_item is not None:
            on_item(item)
        if isinstance(item, BadLine):
            if len(stats.bad_lines) < MAX_REPORTED_BAD_LINES:
                log.warning("line %d: skipped: %s", item.line_no, item.reason)
            stats.bad_lines.append(item)
            continue
        event = item.event
        if event.ts_ms < last_ts:
            stats.out_of_order += 1
        last_ts = max(last_ts, event.ts_ms)
        pacer.wait(event.ts_ms)
        send(event)
        stats.published[event.type] += 1
    if len(stats.bad_lines) > MAX_REPORTED_BAD_LINES:
        log.warning("... and %d more corrupt lines", len(stats.bad_lines) - MAX_REPORTED_BAD_LINES)
    return stats


def producer_config(settings: Settings) -> dict[str, Any]:
    """kafka-python ``KafkaProducer`` options of ``paperec replay`` (also the benchmark's)."""
    return kafka_clients.producer_options(
        settings,
        client_id="paperec-replay",
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=4 * 1024 * 1024,
    )


class KafkaSender:
    """Produces events to their topics, keyed by request_id; per-partition order is kept
    (idempotent producer, acks=all). Delivery failures are counted, not raised."""

    def __init__(self, settings: Settings, producer: Any = None) -> None:
        from kafka import KafkaProducer

        self.settings = settings
        self.producer = producer or KafkaProducer(**producer_config(settings))
        self.topics = {t: settings.topic(s) for t, s in TOPIC_OF.items()}
        self.errors = 0

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.errors <= MAX_REPORTED_BAD_LINES:
            log.error("delivery failed: %s", exc)

    def __call__(self, event: Event | EncodedEvent) -> None:
        value = event.value if isinstance(event, EncodedEvent) else encode(event)
        future = self.producer.send(self.topics[event.type], key=event.request_id.encode(), value=value)
        future.add_errback(self._failed)

    def close(self, timeout_s: float = 60.0) -> None:
        self.producer.flush(timeout=timeout_s)
        self.producer.close(timeout=timeout_s)


# ------------------------------------------------------------------------------------ the CLI
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "log", type=Path, help="recorded log (JSON Lines), or a KuaiRand CSV with --format kuairand"
    )
    parser.add_argument(
        "--speed", type=float, default=None, help="X times real time (default: as fast as possible)"
    )
    parser.add_argument("--format", choices=["jsonl", "kuairand"], default="jsonl")
    parser.add_argument(
        "--write-log", type=Path, help="write the (converted) events to this log instead of Kafka"
    )
    parser.add_argument("--window", type=int, default=10_000, help="events re-ordered by timestamp in memory")
    parser.add_argument("--max-list-len", type=int, default=10, help="kuairand: items per list")
    parser.add_argument(
        "--gap-ms", type=int, default=60_000, help="kuairand: a longer pause starts a new list"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _source(args: argparse.Namespace, bar: tqdm, worker: bool = False) -> Iterator[Item]:
    """The items to replay; ``worker``: a JSON Lines log is parsed in a worker process."""
    if args.format == "kuairand":
        from simulator.kuairand import KuaiRandOptions, iter_kuairand

        opts = KuaiRandOptions(max_list_len=args.max_list_len, gap_ms=args.gap_ms)
        yield from iter_kuairand(args.log, opts)
        return
    if worker:
        yield from read_in_worker(args.log, args.window, bar.update)
        return
    yield from read_in_order(args.log, args.window, bar.update)


@contextlib.contextmanager
def rare_gc(threshold0: int = 20_000) -> Iterator[None]:
    """Run CPython's cyclic GC less often while replaying. Replay keeps ``--window`` decoded
    events (tens of thousands of tracked objects) and the producer's in-flight records alive,
    and at the default threshold (700) the collector rescanned them so often that it took 8-12 us
    of the ~100 us of CPU per event (benchmarks/replay.py; 1-2.5 us with this). Nothing replay
    builds needs early collection, and cycles are still collected. Thresholds are restored."""
    old = gc.get_threshold()
    gc.set_threshold(max(threshold0, old[0]), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not args.log.is_file():
        print(f"no such file: {args.log}")
        return 2
    size = os.path.getsize(args.log) if args.format == "jsonl" else None
    unit = dict(unit="B", unit_scale=True) if size is not None else dict(unit="event")
    t0 = time.perf_counter()
    with rare_gc(), tqdm(total=size, desc="replay", disable=args.no_progress, **unit) as bar:
        on_item = None if size is not None else (lambda _: bar.update(1))
        try:
            if args.write_log is not None:
                with LogWriter(args.write_log) as writer:
                    stats = replay(_source(args, bar), writer.write, None, on_item)
                print(f"wrote {args.write_log}: " + stats.summary())
                return 0
            sender = KafkaSender(settings)
            try:
                stats = replay(_source(args, bar, worker=True), sender, Pacer(args.speed), on_item)
            finally:
                sender.close()
        except ValueError as e:  # e.g. a CSV without the KuaiRand columns
            print(f"error: {e}")
            return 2
    stats.delivery_errors = sender.errors
    elapsed = time.perf_counter() - t0
    print(f"{stats.summary()} to {settings.kafka_bootstrap} in {elapsed:.1f} s")
    return 1 if stats.delivery_errors else 0
