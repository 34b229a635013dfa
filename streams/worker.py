"""The streams Faust app: two tables, two agents, built from the settings.

``create_app(settings)`` is used by ``paperec streams`` (flags > PAPEREC_* env > defaults) and by
``streams.app`` (the module ``faust -A streams.app worker`` loads, env > defaults).

Processing guarantee: at-least-once (Faust's ``processing_guarantee="at_least_once"``) plus
deterministic transition ids; see docs/streams.md for the argument and for why Faust's
exactly-once mode is not used.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP

from base.settings import (
    TOPIC_CLICKS,
    TOPIC_DEAD_LETTER,
    TOPIC_DWELLS,
    TOPIC_IMPRESSIONS,
    TOPIC_JOIN_CHANGELOG,
    TOPIC_LINK_CHANGELOG,
    TOPIC_LIST_OUTCOMES,
    TOPIC_TRANSITIONS,
    Settings,
)
from base.topics import EVENT_MAX_MESSAGE_BYTES, create_topics, streams_changelog_configs
from streams.batching import BatchingApp
from streams.join import JoinConfig, RequestJoin
from streams.link import LinkConfig, UserLinker
from streams.metrics import StreamMetrics
from streams.publisher import BatchPublisher
from streams.stage import JoinStage, LinkStage, Stage
from streams.stage_process import STAGE_ALL, STAGE_LINK, STAGES, StageProcess

log = logging.getLogger(__name__)

BATCH_BYTES = 512 * 1024
MAX_REQUEST_BYTES = 64 * 1024 * 1024
GC_THRESHOLDS = (50_000, 20, 100)
"""Python's cyclic garbage collector, tuned for the worker. With the defaults (700, 10, 10) it
scanned the long-lived state (open windows, chains, Faust's own objects) again and again while
records were parsed: a third of the worker's CPU. The stages' objects are freed by reference
counting (they make no cycles); a young collection every 50 000 new objects and the long-lived
objects frozen after each recovery (``gc.freeze``) cut that to a few percent."""


class StreamsApp(BatchingApp):
    """The Faust app of one stage (or of the join with its link process); provisions the planned
    topics before Faust declares its own."""

    settings: Settings
    link_process: StageProcess | None = None  # stage 2's process, started and restarted by stage 1

    async def on_first_start(self) -> None:
        gc.set_threshold(*GC_THRESHOLDS)
        if self.settings.streams_create_topics:
            problems = await asyncio.to_thread(create_topics, self.settings)
            for p in problems:
                log.warning("topic plan: %s", p)
        if self.link_process is not None:
            self.link_process.start()
        await super().on_first_start()

    async def on_stop(self) -> None:
        if self.link_process is not None:
            await asyncio.to_thread(self.link_process.stop)
        await super().on_stop()


FETCH_MAX_BYTES = 50 * 1024 * 1024
"""Most bytes one fetch response holds (aiokafka's default ``fetch_max_bytes``)."""


def partition_fetch_bytes(event_partitions: int) -> int:
    """Bytes per partition and fetch (aiokafka's ``max_partition_fetch_bytes``), 1-4 MiB.

    Large, because the join's rate while catching up is bounded by how fast the impressions
    (large records) arrive: one fetch is in flight per broker, so with 1 MiB per partition the
    join waited for impressions and ran at ~18 k events/s instead of ~28 k (docs/streams.md,
    "Benchmark"). Not larger than a fair share of a fetch response over the three inputs'
    partitions: the response is filled partition by partition in a fixed order, so beyond that
    the click and dwell partitions fill it and the impressions starve. (A record larger than
    this is still fetched, alone.)"""
    share = FETCH_MAX_BYTES // (3 * max(1, event_partitions))
    return max(1024 * 1024, min(4 * 1024 * 1024, share))


class PlannedTable(faust.Table):
    """A Faust table whose changelog topic has the planned name (base.topics), whatever the
    app id: the link stage's app has an id (consumer group) of its own."""

    def __init__(self, *args: Any, changelog_name: str, **kwargs: Any) -> None:
        self._planned_changelog = changelog_name
        super().__init__(*args, **kwargs)

    def _changelog_topic_name(self) -> str:
        return self._planned_changelog


@dataclass
class StreamsWorker:
    app: StreamsApp
    stages: list[Stage]
    metrics: StreamMetrics


def app_id_of(settings: Settings, stage: str) -> str:
    """The Faust app id (= consumer group) of a stage: the join's is ``streams_app_id``."""
    return settings.streams_link_app_id if stage == STAGE_LINK else settings.streams_app_id


def create_app(settings: Settings, stage: str = STAGE_ALL) -> StreamsWorker:
    """The Faust app of ``stage``: ``join`` (stage 1), ``link`` (stage 2), or ``all``: stage 1 in
    this process, which starts stage 2 in a process of its own (on another core) and stops with
    it (docs/streams.md, "Processes")."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    s = settings
    app_id = app_id_of(s, stage)
    datadir = s.state_path / "streams" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    web_port = (s.streams_web_port or 6066) + (1 if stage == STAGE_LINK else 0)  # both on one host
    app = StreamsApp(
        app_id,
        broker=[f"kafka://{hp}" for hp in s.kafka_bootstrap.split(",")],
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=s.event_partitions,
        topic_replication_factor=s.replication_factor,
        table_standby_replicas=0,
        datadir=str(datadir),
        web_enabled=s.streams_web_port > 0,
        web_port=web_port,
        web_bind="127.0.0.1",
        broker_commit_interval=s.streams_commit_interval_s,
        broker_session_timeout=s.streams_session_timeout_s,
        broker_heartbeat_interval=min(3.0, s.streams_session_timeout_s / 4),
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=partition_fetch_bytes(s.event_partitions),
        producer_max_batch_size=BATCH_BYTES,
        producer_max_request_size=MAX_REQUEST_BYTES,
        producer_acks=-1,
        stream_wait_empty=False,
        # A crashed agent takes the worker down: restarting from the changelog is the only
        # way back to a state consistent with the committed offsets.
        agent_supervisor="mode.supervisors.CrashingSupervisor",
    )
    app.settings = s
    metrics = StreamMetrics.to_clickhouse(s, source=f"streams:{app_id}")

    def publisher() -> BatchPublisher:
        return BatchPublisher(lambda: app.producer._ensure_producer())  # type: ignore[attr-defined]

    def table(name: str, planned: str) -> Any:
        return app.tables.add(
            PlannedTable(
                app,
                name=name,
                changelog_name=s.topic(planned),
                key_type=bytes,
                value_type=bytes,
                partitions=s.event_partitions,
                use_partitioner=True,  # we write changelog partitions explicitly (see stage.py)
                extra_topic_configs=streams_changelog_configs(),
                recovery_buffer_size=10_000,
            )
        )

    common = {
        "app": app,
        "publisher": publisher,
        "metrics": metrics,
        "dead_letter_topic": s.topic(TOPIC_DEAD_LETTER),
        "tick_s": s.streams_tick_ms / 1000,
        "max_batch": s.streams_max_batch,
        "flush_interval_s": s.streams_commit_interval_s,  # changelog writes coalesced per commit
    }
    stages: list[Stage] = []
    if stage != STAGE_LINK:
        stages.append(
            JoinStage(
                RequestJoin(JoinConfig.from_settings(s)),
                impressions=s.topic(TOPIC_IMPRESSIONS),
                clicks=s.topic(TOPIC_CLICKS),
                dwells=s.topic(TOPIC_DWELLS),
                outcomes=s.topic(TOPIC_LIST_OUTCOMES),
                table=table("join", TOPIC_JOIN_CHANGELOG),
                max_message_bytes=4 * EVENT_MAX_MESSAGE_BYTES,
                max_input_skew_ms=s.streams_max_input_skew_ms,
                **common,
            )
        )
    if stage == STAGE_ALL:  # this process runs stage 1; stage 2 gets a process of its own
        app.link_process = StageProcess(s.replace(streams_create_topics=False), STAGE_LINK)
    if stage == STAGE_LINK:
        stages.append(
            LinkStage(
                UserLinker(LinkConfig.from_settings(s)),
                outcomes=s.topic(TOPIC_LIST_OUTCOMES),
                transitions=s.topic(TOPIC_TRANSITIONS),
                table=table("link", TOPIC_LINK_CHANGELOG),
                max_message_bytes=EVENT_MAX_MESSAGE_BYTES,
                **common,
            )
        )
    for st in stages:
        _wire(app, st)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        for st in stages:
            parts = {tp.partition for tp in revoked if tp.topic in st.input_topics}
            if parts:
                await st.on_revoked(parts)

    @app.timer(s.streams_metrics_interval_s)
    async def report() -> None:
        states = "; ".join(st.sample() for st in stages)
        metrics.flush()
        totals = ", ".join(
            f"{n}[{label}]={v}" if label else f"{n}={v}" for (n, label), v in sorted(metrics.totals.items())
        )
        log.info("%s | totals: %s", states, totals)

    if app.link_process is not None:
        link_process = app.link_process

        @app.timer(1.0)
        async def watch_link_process() -> None:
            # Stage 2 died (e.g. a delivery failed during a broker outage): start it again after
            # a backoff. It restores its state from its own changelog and committed offsets, so
            # stage 1 need not stop (docs/streams.md, "Processes").
            if app.should_stop:
                return  # shutting down: on_stop stops the child
            if link_process.restart_if_dead():
                metrics.count("process_restarts", STAGE_LINK)

    return StreamsWorker(app, stages, metrics)


def _wire(app: StreamsApp, stage: Stage) -> None:
    """Declare the stage's agent on its input topics (so Faust subscribes and assigns them with
    the table) and route their records to the stage's batch sink."""
    topic = app.topic(
        *stage.input_topics, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    app.register_batch_sink(stage.input_topics, stage.sink)

    async def recovered() -> None:
        await stage.on_recover()
        gc.freeze()  # start-up objects and the restored state: long-lived, out of the GC's scans

    stage.table.on_recover(recovered)

    async def agent(stream: Any) -> None:
        try:
            await stage.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "%s stage failed; stopping the worker (state is rebuilt from the changelog)", stage.name
            )
            raise

    agent.__name__ = agent.__qualname__ = f"{stage.name}_agent"
    app.agent(topic, name=f"{stage.name}", concurrency=1)(agent)
