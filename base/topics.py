"""``paperec topics``: provision and check every Kafka topic of the system (and its ACLs).

The plan (names, partitions, configs) is a pure function of the settings, so it is unit-tested
without a broker; ``create`` applies it idempotently and then *checks* the result on the broker:
co-partitioning of the join inputs is read back from the broker, not assumed from the plan.
``acls`` creates the services' ACLs on a secured broker (base/kafka_acls.py, docs/security.md).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from base import kafka as kafka_clients
from base.settings import (
    CO_PARTITIONED_TOPICS,
    TOPIC_CLICKS,
    TOPIC_DEAD_LETTER,
    TOPIC_DWELLS,
    TOPIC_IMPRESSIONS,
    TOPIC_JOIN_CHANGELOG,
    TOPIC_LINK_CHANGELOG,
    TOPIC_LIST_OUTCOMES,
    TOPIC_ROLLOUT,
    TOPIC_SNAPSHOTS,
    TOPIC_TRANSITIONS,
    Settings,
)

log = logging.getLogger(__name__)

# Impressions carry per-item features of up to 1000 items: allow 4 MiB per event message.
EVENT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


def topic_plan(settings: Settings) -> list[TopicSpec]:
    """Every topic the system uses, with its partition count and configs."""

    def delete_policy(retention_ms: int) -> dict[str, str]:
        return {
            "cleanup.policy": "delete",
            "retention.ms": str(retention_ms),
            "max.message.bytes": str(EVENT_MAX_MESSAGE_BYTES),
        }

    rf = settings.replication_factor
    specs = [
        # Join inputs, keyed by request_id: co-partitioned (same count) so a request's impression,
        # clicks and dwells land in the same partition number of each topic.
        *(
            TopicSpec(
                settings.topic(t), settings.event_partitions, rf, delete_policy(settings.event_retention_ms)
            )
            for t in (TOPIC_IMPRESSIONS, TOPIC_CLICKS, TOPIC_DWELLS)
        ),
        TopicSpec(
            settings.topic(TOPIC_TRANSITIONS),
            settings.transition_partitions,
            rf,
            delete_policy(settings.event_retention_ms),
        ),
        # One key per actor: compaction keeps the latest snapshot forever, so a serving node that
        # starts later still finds it. One partition keeps snapshot order total.
        TopicSpec(
            settings.topic(TOPIC_SNAPSHOTS),
            1,
            rf,
            {
                "cleanup.policy": "compact",
                "retention.ms": "-1",
                "max.message.bytes": str(settings.max_message_bytes),
                "segment.ms": str(10 * 60 * 1000),
                "min.cleanable.dirty.ratio": "0.1",
            },
        ),
        # The guarded rollout's control topic: one key, compacted, so the latest decision (the
        # whole serving state) is kept forever and a node that restarts applies it; one partition
        # keeps decisions in order.
        TopicSpec(
            settings.topic(TOPIC_ROLLOUT),
            1,
            rf,
            {
                "cleanup.policy": "compact",
                "retention.ms": "-1",
                "segment.ms": str(10 * 60 * 1000),
                "min.cleanable.dirty.ratio": "0.1",
            },
        ),
        TopicSpec(
            settings.topic(TOPIC_DEAD_LETTER),
            1,
            rf,
            delete_policy(settings.dead_letter_retention_ms),
        ),
    ]
    specs.extend(streams_topic_specs(settings))  # --- Streams: internal topics of the stream join
    return [replicated(spec, settings) for spec in specs]


def replicated(spec: TopicSpec, settings: Settings) -> TopicSpec:
    """``spec`` with the settings' ``min.insync.replicas``: with acks=all (every producer,
    base/kafka.py) a write is acknowledged once that many replicas have it, so a topic of
    replication factor 3 and min.insync.replicas 2 loses no acknowledged record when a broker
    dies, and refuses writes rather than keep them on a single replica."""
    rf, isr = settings.replication_factor, settings.min_insync_replicas
    if not 1 <= isr <= rf:
        raise ValueError(
            f"min_insync_replicas={isr} with replication_factor={rf}: need 1 <= min_insync_replicas "
            "<= replication_factor (else every acks=all write fails)"
        )
    return TopicSpec(
        spec.name, spec.partitions, spec.replication_factor, {**spec.configs, "min.insync.replicas": str(isr)}
    )


# --- Streams: internal topics of the stream join (streams/). All have event_partitions partitions:
# the join's changelog is written to the partition number of the input record it came from, and
# list-outcomes and the link changelog are keyed by user_id, so each changelog partition is
# co-partitioned with the topic its table is keyed like and recovery restores exactly the keys of
# the input partitions a worker owns.
STREAMS_STATE_MAX_MESSAGE_BYTES = 4 * EVENT_MAX_MESSAGE_BYTES


def streams_changelog_configs() -> dict[str, str]:
    """Configs of the streams state changelogs (also passed to Faust, which may create them)."""
    return {
        "cleanup.policy": "compact",
        "max.message.bytes": str(STREAMS_STATE_MAX_MESSAGE_BYTES),
        "min.cleanable.dirty.ratio": "0.2",
        "segment.ms": str(60 * 60 * 1000),
    }


def streams_topic_specs(settings: Settings) -> list[TopicSpec]:
    rf = settings.replication_factor
    n = settings.event_partitions
    outcomes = {
        "cleanup.policy": "delete",
        "retention.ms": str(settings.event_retention_ms),
        "max.message.bytes": str(STREAMS_STATE_MAX_MESSAGE_BYTES),
    }
    return [
        TopicSpec(settings.topic(TOPIC_LIST_OUTCOMES), n, rf, outcomes),
        TopicSpec(settings.topic(TOPIC_JOIN_CHANGELOG), n, rf, streams_changelog_configs()),
        TopicSpec(settings.topic(TOPIC_LINK_CHANGELOG), n, rf, streams_changelog_configs()),
    ]


# --- end Streams


def check_copartitioned(partition_counts: dict[str, int], settings: Settings) -> list[str]:
    """Problems with the join inputs' partition counts (empty list when co-partitioned)."""
    names = [settings.topic(t) for t in CO_PARTITIONED_TOPICS]
    missing = [n for n in names if n not in partition_counts]
    if missing:
        return [f"topic {n} does not exist" for n in missing]
    counts = {n: partition_counts[n] for n in names}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{n}={c}" for n, c in counts.items())
        return [f"join inputs are not co-partitioned (partition counts {detail}); they must be equal"]
    return []


def _admin(settings: Settings) -> KafkaAdminClient:
    return kafka_clients.admin(settings, client_id="paperec-topics")


def partition_counts(admin: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    return {name: len(replicas) for name, replicas in replica_counts(admin, names).items()}


def replica_counts(admin: KafkaAdminClient, names: list[str]) -> dict[str, list[int]]:
    """Each existing topic's replica count per partition (by partition number)."""
    existing = set(admin.list_topics())
    wanted = [n for n in names if n in existing]
    if not wanted:
        return {}
    return {
        d["name"]: [
            len(p["replica_nodes"]) for p in sorted(d["partitions"], key=lambda p: p["partition_index"])
        ]
        for d in admin.describe_topics(wanted)
    }


def topic_configs(admin: KafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """Configs of each topic as the broker reports them (all keys, not only overrides)."""
    out: dict[str, dict[str, str]] = {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    result = admin.describe_configs(resources, config_filter="all")
    for by_name in result.values():
        for name, configs in by_name.items():
            out[name] = {k: str(v.get("value") if isinstance(v, dict) else v) for k, v in configs.items()}
    return out


def create_topics(settings: Settings) -> list[str]:
    """Create missing topics, then verify partitions, configs and co-partitioning.

    Returns the list of problems found (empty when everything matches the plan).
    """
    plan = topic_plan(settings)
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        to_create = {
            s.name: {
                "num_partitions": s.partitions,
                "replication_factor": s.replication_factor,
                "configs": s.configs,
            }
            for s in plan
            if s.name not in existing
        }
        if to_create:
            admin.create_topics(to_create, wait_for_metadata=True)
            log.info("created topics: %s", ", ".join(sorted(to_create)))
        return verify_topics(admin, settings)
    finally:
        admin.close()


def verify_topics(admin: KafkaAdminClient, settings: Settings) -> list[str]:
    plan = topic_plan(settings)
    names = [s.name for s in plan]
    replicas = replica_counts(admin, names)
    counts = {name: len(per_partition) for name, per_partition in replicas.items()}
    problems = check_copartitioned(counts, settings)
    configs = topic_configs(admin, [n for n in names if n in counts])
    for spec in plan:
        if spec.name not in counts:
            problems.append(f"topic {spec.name} does not exist")
            continue
        if counts[spec.name] != spec.partitions:
            problems.append(
                f"topic {spec.name} has {counts[spec.name]} partitions, planned {spec.partitions}"
            )
        if set(replicas[spec.name]) != {spec.replication_factor}:
            problems.append(
                f"topic {spec.name} has replication factor {sorted(set(replicas[spec.name]))}, "
                f"planned {spec.replication_factor}"
            )
        actual = configs.get(spec.name, {})
        for key, value in spec.configs.items():
            if actual.get(key) != value:
                problems.append(f"topic {spec.name}: {key}={actual.get(key)!r}, planned {value!r}")
    return problems


def delete_prefixed_topics(settings: Settings) -> list[str]:
    """Delete every topic behind ``settings.topic_prefix`` (benchmark and test clean-up)."""
    admin = _admin(settings)
    try:
        doomed = [t for t in admin.list_topics() if t.startswith(settings.topic_prefix)]
        if doomed:
            admin.delete_topics(doomed)
        return doomed
    finally:
        admin.close()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["create", "check", "plan", "acls", "acl-plan"],
        help="create: provision and verify; acls: create the services' ACLs for the topic prefix "
        "(as the admin principal: --kafka-username and its password); acl-plan: print them",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action in ("acls", "acl-plan"):
        from base.kafka_acls import run_acls

        return run_acls(settings, dry_run=args.action == "acl-plan")
    if args.action == "plan":
        for spec in topic_plan(settings):
            print(f"{spec.name}\tpartitions={spec.partitions}\t{spec.configs}")
        return 0
    if args.action == "create":
        problems = create_topics(settings)
    else:
        admin = _admin(settings)
        try:
            problems = verify_topics(admin, settings)
        finally:
            admin.close()
    for p in problems:
        print(f"problem: {p}")
    if not problems:
        print(f"all {len(topic_plan(settings))} topics present and as planned on {settings.kafka_bootstrap}")
    return 1 if problems else 0
