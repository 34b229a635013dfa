"""Learner service throughput: training while ingesting vs the bare training step, and snapshots.

In one process, the training loop (sample a batch from the replay buffer, ``Trainer.step``)
runs in alternating blocks of at least ``--block-s`` seconds: bare (the ingestion thread paused
and idle) and ingesting (the ingestion thread decoding + featurizing an endless stream of encoded
transitions into the same buffer: in memory by default, or from a topic on the dev broker through
the real consumer with ``--kafka``). Pairs of adjacent blocks see the same machine load, so the
headline is the median over pairs of (steps/s while ingesting) / (steps/s bare); target >= 0.8.
Also: transitions ingested/s while training, the ingestion rate alone, and the time to publish a
snapshot (encode = serving copy + safetensors + signature; send = until the broker's ack, with
``--kafka``).

    .venv/bin/python benchmarks/learner.py                       # default model, CPU or CUDA
    .venv/bin/python benchmarks/learner.py --torch-threads 1 --kafka
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and this module (learner.py) would
# shadow the ``learner`` package: drop the folder before importing it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402

import torch  # noqa: E402

from base.settings import TOPIC_SNAPSHOTS, TOPIC_TRANSITIONS, Settings  # noqa: E402
from base.topics import delete_prefixed_topics  # noqa: E402
from learner.devtools import ListDeadLetters, MemorySource, encoded, produce, synthetic_transitions  # noqa: E402
from learner.ingest import ChunkSource, Ingestor, PreparingSource, RecordSource  # noqa: E402
from learner.ingest_process import ProcessSource  # noqa: E402
from learner.kafka_io import KafkaSource  # noqa: E402
from learner.publisher import PublishResult, SnapshotPublisher  # noqa: E402
from learner.replay_buffer import ReplayBuffer  # noqa: E402
from learner.training import PAPERecConfig, Trainer  # noqa: E402
from model.ranker import RankerConfig  # noqa: E402
from model.runtime import default_device, training_threads  # noqa: E402
from model.snapshot import encode_snapshot  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_for(trainer: Trainer, buffer: ReplayBuffer, batch_size: int, seconds: float) -> float:
    """Steps/s of the training loop over ``seconds``."""
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 2:
        trainer.step(buffer.sample(batch_size).batch)
        steps += 1
    sync(trainer.device)
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="", help='"cpu", "cuda"; default: CUDA when available')
    p.add_argument(
        "--model", default="default", choices=["default", "tiny"], help="RankerConfig() or .tiny()"
    )
    p.add_argument("--batch-size", type=int, default=256, help="lists per training step")
    p.add_argument("--pairs", type=int, default=10, help="pairs of blocks (bare, ingesting)")
    p.add_argument("--block-s", type=float, default=3.0, help="seconds per block (at least 2 steps)")
    p.add_argument("--records", type=int, default=2000, help="distinct transitions generated (then cycled)")
    p.add_argument("--ingest-chunk", type=int, default=256, help="records per decode/featurize chunk")
    p.add_argument("--ingest-max-rate", type=float, default=0.0, help="ingestion cap, records/s (0 = none)")
    p.add_argument(
        "--ingest-nice", type=int, default=10, help="niceness of the ingestion thread (service default)"
    )
    p.add_argument(
        "--ingest-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decode + featurize in a worker process, as the service does by default",
    )
    p.add_argument(
        "--torch-threads", type=int, default=0, help="torch intra-op threads (0 = the service's auto choice)"
    )
    p.add_argument(
        "--kafka", action="store_true", help="ingest from, and publish snapshots to, the dev broker"
    )
    p.add_argument("--kafka-copies", type=int, default=10, help="--kafka: copies of --records produced")
    p.add_argument("--snapshots", type=int, default=5, help="snapshots timed")
    args = p.parse_args()
    device = default_device(args.device)
    torch.set_num_threads(training_threads(args.torch_threads, device, args.ingest_process))
    ranker = RankerConfig() if args.model == "default" else RankerConfig.tiny()
    trainer = Trainer(PAPERecConfig(ranker=ranker, device=str(device)))
    buffer = ReplayBuffer(ranker, 20_000, device=device)

    gen_start = time.perf_counter()
    transitions = synthetic_transitions(ranker, args.records, seed=0)
    values, ids = encoded(transitions), [t.transition_id for t in transitions]
    print(
        f"generated {len(values)} transitions ({sum(map(len, values)) / len(values) / 1e3:.1f} kB each) "
        f"in {time.perf_counter() - gen_start:.1f} s"
    )

    settings = Settings.from_env().replace(topic_prefix=f"paperec.bench.{uuid.uuid4().hex[:8]}.")
    if args.kafka:
        from base.topics import create_topics

        assert not create_topics(settings), "could not create the benchmark topics"
        # distinct ids per copy (dedup must not skip them); enough for the prefill and the blocks
        rounds = args.kafka_copies
        copies = [
            v.replace(b'"' + i.encode() + b'"', b'"' + i.encode() + b"~%d" % r + b'"', 1)
            for r in range(rounds)
            for v, i in zip(values, ids, strict=True)
        ]
        produce(settings, settings.topic(TOPIC_TRANSITIONS), copies)
        print(f"kafka: {len(copies)} records on {settings.topic(TOPIC_TRANSITIONS)}")

    def factory() -> Callable[[dict[int, int] | None], RecordSource]:
        """Picklable source factories (a ProcessSource builds its source in the worker)."""
        if args.kafka:
            group = f"{settings.topic_prefix}bench-{uuid.uuid4().hex[:6]}"
            return partial(KafkaSource, settings, settings.topic(TOPIC_TRANSITIONS), group)
        return partial(MemorySource, values, ids, True, "mem")

    def source(start: dict[int, int] | None = None) -> RecordSource:
        return factory()(start)

    # prefill (and the ingestion rate alone)
    prefill = source()
    ingestor = Ingestor(
        PreparingSource(prefill, ranker), buffer, ranker, ListDeadLetters(), chunk_size=args.ingest_chunk
    )
    start = time.perf_counter()
    while len(buffer) < min(args.records, buffer.capacity):
        ingestor.ingest(prefill.poll(1.0, args.ingest_chunk))
    alone = ingestor.stats.records / (time.perf_counter() - start)
    ingestor.close()
    train_for(trainer, buffer, args.batch_size, 2.0)  # warm up

    prefilled, positions = ingestor.stats.records, dict(ingestor.positions)
    busy_source: ChunkSource = (  # on from where the prefill stopped
        ProcessSource(factory(), ranker, positions, chunk_size=args.ingest_chunk, nice=args.ingest_nice)
        if args.ingest_process
        else PreparingSource(source(positions), ranker, buffer.unseen)
    )

    def pause() -> None:
        ingestor.pause()
        if isinstance(busy_source, ProcessSource):  # the worker stops once its prefetch queue is full
            busy_source.wait_full()

    ingestor = Ingestor(
        busy_source,
        buffer,
        ranker,
        ListDeadLetters(),
        chunk_size=args.ingest_chunk,
        max_rate=args.ingest_max_rate,
        nice=args.ingest_nice,
    )
    ingestor.start()
    pause()
    bare: list[float] = []
    busy: list[float] = []
    ingested, ingest_time = 0, 0.0
    available = len(values) * args.kafka_copies - prefilled if args.kafka else None
    for r in range(args.pairs):
        b = train_for(trainer, buffer, args.batch_size, args.block_s)
        records, t0 = ingestor.stats.records, time.perf_counter()
        ingestor.resume()
        i = train_for(trainer, buffer, args.batch_size, args.block_s)
        pause()
        n, dt = ingestor.stats.records - records, time.perf_counter() - t0
        if available is not None and ingested + n >= available:  # the topic ran dry during the block
            print("kafka source drained: this pair is dropped; raise --kafka-copies for more pairs")
            break
        bare.append(b)
        busy.append(i)
        ingested, ingest_time = ingested + n, ingest_time + dt
        print(
            f"pair {r + 1}: bare {b:.3f} steps/s | while ingesting {i:.3f} steps/s ({i / b:.2f}x), "
            f"{n / dt:.0f} transitions/s ingested"
        )
    ingestor.stop()
    ingestor.close()

    # snapshots
    encode_s, send_s = [], []
    key = settings.snapshot_hmac_key.encode()
    for v in range(1, args.snapshots + 1):
        t0 = time.perf_counter()
        encode_snapshot(
            trainer.actor_model(),
            snapshot_version=v,
            training_step=v,
            watermark_ms=0,
            exploration=trainer.cfg.exploration(),
            key=key,
            max_message_bytes=settings.max_message_bytes,
        )
        encode_s.append(time.perf_counter() - t0)
    size = len(
        encode_snapshot(
            trainer.actor_model(),
            snapshot_version=1,
            training_step=1,
            watermark_ms=0,
            exploration=trainer.cfg.exploration(),
            key=key,
            max_message_bytes=settings.max_message_bytes,
        )[1]
    )
    if args.kafka:
        results: list[PublishResult] = []
        pub = SnapshotPublisher(
            settings,
            settings.topic(TOPIC_SNAPSHOTS),
            key,
            settings.max_message_bytes,
            1,
            results.append,
            exploration=trainer.cfg.exploration(),
        )
        for _ in range(args.snapshots):
            pub.publish(trainer.actor_model, training_step=trainer.num_steps, watermark_ms=0)
            pub.wait_idle(60)
        pub.close()
        send_s = [r.send_s for r in results if r.ok]
        delete_prefixed_topics(settings)

    med_bare, med_busy = statistics.median(bare), statistics.median(busy)
    rate = ingested / ingest_time
    ratio = statistics.median(b / a for a, b in zip(bare, busy, strict=True))
    print()
    print(
        f"device={device} threads={torch.get_num_threads()} model={args.model} "
        f"(d_model={ranker.d_model}, list_len={ranker.max_list_len}) batch={args.batch_size} "
        f"source={'kafka' if args.kafka else 'memory'} pairs={args.pairs}x2x{args.block_s:.0f}s "
        f"ingest_max_rate={args.ingest_max_rate or 'none'} ingest_nice={args.ingest_nice} "
        f"ingest_process={args.ingest_process}"
    )
    print(f"training steps/s, bare:            {med_bare:.3f} ({med_bare * args.batch_size:.0f} lists/s)")
    print(f"training steps/s, while ingesting: {med_busy:.3f}")
    print(f"ratio (median of per-round ratios): {ratio:.2f} ({'meets' if ratio >= 0.8 else 'MISSES'} >= 0.8)")
    print(f"transitions ingested/s while training: {rate:.0f}")
    print(f"transitions ingested/s alone (prefill): {alone:.0f}")
    print(
        f"snapshot: {size / 1e6:.2f} MB, encode median {1e3 * statistics.median(encode_s):.0f} ms"
        + (f", send+ack median {1e3 * statistics.median(send_s):.0f} ms" if send_s else "")
    )


if __name__ == "__main__":
    main()
