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

from faust.types import TP

from paperec.settings import (
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
from paperec.topics import EVENT_MAX_MESSAGE_BYTES, create_topics, streams_changelog_configs
from streams.batching import BatchingApp
from streams.join import JoinConfig, RequestJoin
from streams.link import LinkConfig, UserLinker
from streams.metrics import StreamMetrics
from streams.publisher import BatchPublisher
from streams.stage import JoinStage, LinkStage, Stage

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
    """The Faust app; provisions the planned topics before Faust declares its own."""

    settings: Settings

    async def on_first_start(self) -> None:
        gc.set_threshold(*GC_THRESHOLDS)
        if self.settings.streams_create_topics:
            problems = await asyncio.to_thread(create_topics, self.settings)
            for p in problems:
                log.warning("topic plan: %s", p)
        await super().on_first_start()


@dataclass
class StreamsWorker:
    app: StreamsApp
    join: JoinStage
    link: LinkStage
    metrics: StreamMetrics

    @property
    def stages(self) -> list[Stage]:
        return [self.join, self.link]


def create_app(settings: Settings) -> StreamsWorker:
    s = settings
    app_id = s.streams_app_id
    datadir = s.state_path / "streams" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
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
        web_port=s.streams_web_port or 6066,
        web_bind="127.0.0.1",
        broker_commit_interval=s.streams_commit_interval_s,
        broker_session_timeout=s.streams_session_timeout_s,
        broker_heartbeat_interval=min(3.0, s.streams_session_timeout_s / 4),
        consumer_auto_offset_reset="earliest",
        # Per partition and fetch. A fetch response holds at most 50 MB (aiokafka's
        # fetch_max_bytes), filled partition by partition in a fixed order: with larger values the
        # click and dwell partitions fill it and the impressions starve. (A record larger than
        # this is still fetched, alone.)
        consumer_max_fetch_size=1024 * 1024,
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
        t = app.Table(
            name,
            key_type=bytes,
            value_type=bytes,
            partitions=s.event_partitions,
            use_partitioner=True,  # we write changelog partitions explicitly (see stage.py)
            extra_topic_configs=streams_changelog_configs(),
            recovery_buffer_size=10_000,
        )
        assert t.changelog_topic.get_topic_name() == s.topic(planned), "changelog name out of plan"
        return t

    common = {
        "app": app,
        "publisher": publisher,
        "metrics": metrics,
        "dead_letter_topic": s.topic(TOPIC_DEAD_LETTER),
        "tick_s": s.streams_tick_ms / 1000,
        "max_batch": s.streams_max_batch,
    }
    join = JoinStage(
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
    link = LinkStage(
        UserLinker(LinkConfig.from_settings(s)),
        outcomes=s.topic(TOPIC_LIST_OUTCOMES),
        transitions=s.topic(TOPIC_TRANSITIONS),
        table=table("link", TOPIC_LINK_CHANGELOG),
        max_message_bytes=EVENT_MAX_MESSAGE_BYTES,
        **common,
    )
    join.link = link  # stage 1 hands outcomes of co-located partitions over in-process
    for stage in (join, link):
        _wire(app, stage)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        for stage in (join, link):
            parts = {tp.partition for tp in revoked if tp.topic in stage.input_topics}
            if parts:
                await stage.on_revoked(parts)

    @app.timer(s.streams_metrics_interval_s)
    async def report() -> None:
        states = "; ".join(stage.sample() for stage in (join, link))
        metrics.flush()
        totals = ", ".join(
            f"{n}[{label}]={v}" if label else f"{n}={v}" for (n, label), v in sorted(metrics.totals.items())
        )
        log.info("%s | totals: %s", states, totals)

    return StreamsWorker(app, join, link, metrics)


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
