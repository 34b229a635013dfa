"""The streams Faust app of a stage, built from the settings, and the worker that runs it.

``create_app(settings, stage)`` is used by ``run_worker`` (``paperec streams``: flags > PAPEREC_*
env > defaults) and by ``streams.app`` (the module ``faust -A streams.app worker`` loads, env >
defaults). It builds the Faust app (``faust_app``), the stage's table (``planned_table``), the
stage over them (``join_stage``, ``link_stage``) and wires them together (``wire_stage``,
``route_revocations``, ``report_every``, ``watch_link_process``).

The agents do not iterate over their stream: each is declared on its stage's input topics so
that Faust subscribes to them and assigns them with the table, while the records reach the stage
in batches through its ``BatchSink`` (streams.batching). An agent that were a few lines over its
typed stream (``async for record in stream``, or ``stream.take(n, within=...)``) is what the
faust examples do, but it would lose the throughput: Faust's per-message path measured ~4-7 k
records/s here with ``async for`` and ~7-10 k/s with ``take`` on a bare topic, against ~150 k/s
for a bare aiokafka consumer, while the join must sustain 20 k events/s (docs/streams.md, "Why the
input records are delivered in batches"). So the agent body only runs the stage's loop, and the
stage calls the pure state classes (streams.join, streams.link) step by step.

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

from faust.types import TP

from base import kafka as kafka_clients
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
from streams.faust_io import BatchingApp, FaustStageIO, PlannedTable, crashed
from streams.join import JoinConfig, RequestJoin
from streams.link import LinkConfig, UserLinker
from streams.metrics import StreamMetrics
from streams.stage import JoinStage, LinkStage, Stage
from streams.stage_process import StageProcess, child_process

log = logging.getLogger(__name__)

STAGE_JOIN = "join"
STAGE_LINK = "link"
STAGE_ALL = "all"
"""Stage 1 in this process, stage 2 in a child process (``StreamsApp.link_process``)."""
STAGES = (STAGE_ALL, STAGE_JOIN, STAGE_LINK)

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
    app = faust_app(settings, stage)
    metrics = StreamMetrics.to_clickhouse(settings, source=f"streams:{app_id_of(settings, stage)}")
    make_stage = link_stage if stage == STAGE_LINK else join_stage
    stages: list[Stage] = [make_stage(app, settings, metrics)]
    if stage == STAGE_ALL:  # this process runs stage 1; stage 2 gets a process of its own
        link_settings = settings.replace(streams_create_topics=False)
        app.link_process = StageProcess(
            STAGE_LINK, child_process(STAGE_LINK, run_worker, link_settings, STAGE_LINK, True)
        )
        watch_link_process(app, app.link_process, metrics)
    route_revocations(app, stages)
    report_every(settings.streams_metrics_interval_s, app, stages, metrics)
    return StreamsWorker(app, stages, metrics)


def faust_app(settings: Settings, stage: str) -> StreamsApp:
    """The Faust app (consumer group, producer, commit policy) of ``stage``, not started."""
    s = settings
    app_id = app_id_of(s, stage)
    datadir = s.state_path / "streams" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    web_port = (s.streams_web_port or 6066) + (1 if stage == STAGE_LINK else 0)  # both on one host
    app = StreamsApp(
        app_id,
        **kafka_clients.faust_broker_options(s),
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
    return app


def planned_table(app: StreamsApp, settings: Settings, name: str, changelog: str) -> PlannedTable:
    """A stage's table: raw bytes, changelog topic ``changelog`` (planned name, unprefixed),
    partitions written explicitly by the stage (see streams.stage)."""
    table = PlannedTable(
        app,
        name=name,
        changelog_name=settings.topic(changelog),
        key_type=bytes,
        value_type=bytes,
        partitions=settings.event_partitions,
        use_partitioner=True,  # we write changelog partitions explicitly (see stage.py)
        extra_topic_configs=streams_changelog_configs(),
        recovery_buffer_size=10_000,
    )
    app.tables.add(table)
    return table


def stage_options(settings: Settings, metrics: StreamMetrics) -> dict[str, Any]:
    """The settings both stages take alike."""
    return {
        "metrics": metrics,
        "dead_letter_topic": settings.topic(TOPIC_DEAD_LETTER),
        "tick_s": settings.streams_tick_ms / 1000,
        "max_batch": settings.streams_max_batch,
        "flush_interval_s": settings.streams_commit_interval_s,  # changelog writes coalesced per commit
    }


def join_stage(app: StreamsApp, settings: Settings, metrics: StreamMetrics) -> JoinStage:
    """Stage 1 on ``app``, with its table and agent."""
    s = settings
    table = planned_table(app, s, "join", TOPIC_JOIN_CHANGELOG)
    stage = JoinStage(
        RequestJoin(JoinConfig.from_settings(s)),
        impressions=s.topic(TOPIC_IMPRESSIONS),
        clicks=s.topic(TOPIC_CLICKS),
        dwells=s.topic(TOPIC_DWELLS),
        outcomes=s.topic(TOPIC_LIST_OUTCOMES),
        max_input_skew_ms=s.streams_max_input_skew_ms,
        io=FaustStageIO(app, table),
        max_message_bytes=4 * EVENT_MAX_MESSAGE_BYTES,
        **stage_options(s, metrics),
    )
    wire_stage(app, stage, table)
    return stage


def link_stage(app: StreamsApp, settings: Settings, metrics: StreamMetrics) -> LinkStage:
    """Stage 2 on ``app``, with its table and agent."""
    s = settings
    table = planned_table(app, s, "link", TOPIC_LINK_CHANGELOG)
    stage = LinkStage(
        UserLinker(LinkConfig.from_settings(s)),
        outcomes=s.topic(TOPIC_LIST_OUTCOMES),
        transitions=s.topic(TOPIC_TRANSITIONS),
        io=FaustStageIO(app, table),
        max_message_bytes=EVENT_MAX_MESSAGE_BYTES,
        **stage_options(s, metrics),
    )
    wire_stage(app, stage, table)
    return stage


def wire_stage(app: StreamsApp, stage: Stage, table: PlannedTable) -> None:
    """Declare the stage's agent on its input topics (so Faust subscribes and assigns them with
    the table), route their records to the stage's batch sink, and rebuild the stage's state
    after each recovery of its table. Why the agent does not read its stream: see the module's
    docstring."""
    topic = app.topic(
        *stage.input_topics, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    app.register_batch_sink(stage.input_topics, stage.sink)

    async def recovered() -> None:
        await stage.on_recover()
        gc.freeze()  # start-up objects and the restored state: long-lived, out of the GC's scans

    table.on_recover(recovered)

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


def route_revocations(app: StreamsApp, stages: list[Stage]) -> None:
    """On a rebalance, each stage drops the state of the input partitions it lost."""

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        for st in stages:
            parts = {tp.partition for tp in revoked if tp.topic in st.input_topics}
            if parts:
                await st.on_revoked(parts)


def report_every(interval_s: float, app: StreamsApp, stages: list[Stage], metrics: StreamMetrics) -> None:
    """Every ``interval_s``: the stages' gauges and counters to the metrics, and a log line."""

    @app.timer(interval_s)
    async def report() -> None:
        states = "; ".join(st.sample() for st in stages)
        metrics.flush()
        totals = ", ".join(
            f"{n}[{label}]={v}" if label else f"{n}={v}" for (n, label), v in sorted(metrics.totals.items())
        )
        log.info("%s | totals: %s", states, totals)


def watch_link_process(app: StreamsApp, link_process: StageProcess, metrics: StreamMetrics) -> None:
    """Every second: start stage 2's process again (after its backoff) if it died."""

    @app.timer(1.0)
    async def watch() -> None:
        # Stage 2 died (e.g. a delivery failed during a broker outage): start it again after
        # a backoff. It restores its state from its own changelog and committed offsets, so
        # stage 1 need not stop (docs/streams.md, "Processes").
        if app.should_stop:
            return  # shutting down: on_stop stops the child
        if link_process.restart_if_dead():
            metrics.count("process_restarts", STAGE_LINK)


def run_worker(settings: Settings, stage: str, quiet: bool = False) -> int:
    """Run the Faust worker of ``stage`` until it stops; its exit status (1 if it crashed)."""
    from faust.worker import Worker

    worker = create_app(settings, stage)
    ours = ("join_", "session_", "link_", "streams_")
    config = {k: v for k, v in settings.public_dict().items() if k.startswith(ours)}
    log.info(
        "streams worker %s (stage %s) on %s: %s",
        app_id_of(settings, stage),
        stage,
        settings.kafka_bootstrap,
        config,
    )
    faust_worker = Worker(
        worker.app, loglevel=settings.log_level.lower(), quiet=quiet, redirect_stdouts=False
    )
    try:
        faust_worker.execute_from_commandline()
    except SystemExit as exc:
        return 1 if crashed(worker.app) else int(exc.code or 0)
    finally:
        worker.metrics.close()
    return 0
