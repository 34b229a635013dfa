"""The Kafka ACLs of the services, and ``paperec topics acls`` that creates them on a broker.

One principal per service role (docs/security.md, "Kafka"); its SASL username comes from the
settings (``kafka_<role>_principal``, defaults ``paperec-<role>``). :func:`acl_plan` is a pure
function of the settings (topic prefix, consumer groups, principals), unit-tested without a
broker; :func:`apply_acls` creates the plan with Kafka's admin API (``CreateAcls``) as the
admin principal (a super user), on the dev stack's secured broker, a test's private one, or a
production cluster alike. ACLs are literal: no prefix patterns, so a topic created later is never
reachable by accident; each topic prefix (a deployment, a demo run) is granted on its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from base.settings import (
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

ADMIN, SERVING, STREAMS, LEARNER = "admin", "serving", "streams", "learner"
FEEDBACK, REPLAY, ROLLOUT = "feedback", "replay", "rollout"
# `feedback` is the clients' (clicks and dwells); `replay` publishes recorded traffic (all three
# events: `paperec replay`, the compose simulator); `rollout` is the rollout controller's (`paperec
# rollout`: reads list outcomes and snapshots, alone writes the control topic); `admin` is the
# operator's (a super user on the broker, `super.users`: creates topics and ACLs, needs no ACL
# itself). A dev stack secured before `rollout` existed has no user for it: wipe its Kafka once.
ROLES = (ADMIN, SERVING, STREAMS, LEARNER, FEEDBACK, REPLAY, ROLLOUT)
SERVICE_ROLES = ROLES[1:]
# The admin's name is only the broker's business (its `super.users`); the dev stack and compose
# both use this one.
ADMIN_PRINCIPAL = "paperec-admin"
# Faust's leader-election topic of an app (faust/assignor/leader_assignor.py), created by the
# streams worker itself when it first starts.
FAUST_LEADER_TOPIC = "{app_id}-__assignor-__leader"


class AclError(RuntimeError):
    """The broker refused or did not apply the ACLs."""


def principal(settings: Settings, role: str) -> str:
    """The SASL username (Kafka principal ``User:<name>``) of ``role``."""
    if role == ADMIN:
        return ADMIN_PRINCIPAL
    if role not in SERVICE_ROLES:
        raise ValueError(f"unknown Kafka role {role!r}: one of {', '.join(ROLES)}")
    name: str = getattr(settings, f"kafka_{role}_principal")
    return name


@dataclass(frozen=True)
class AclEntry:
    """One ALLOW rule: ``role`` (as ``principal``) may ``operation`` the ``resource`` (topic,
    group) ``name`` (literal)."""

    role: str
    resource: str
    name: str
    operation: str
    principal: str


def acl_plan(settings: Settings) -> list[AclEntry]:
    """Every ACL of the services for ``settings``' topic prefix: least privilege per principal.
    READ and WRITE imply DESCRIBE (metadata, offsets); WRITE on a topic implies the idempotent
    producer's IDEMPOTENT_WRITE (Kafka >= 3.0). No transactions are used. The admin principal is a
    super user and needs none."""
    s = settings

    def entry(role: str, resource: str, name: str, operation: str) -> AclEntry:
        return AclEntry(role, resource, name, operation, principal(s, role))

    def topics(role: str, operation: str, *suffixes: str) -> list[AclEntry]:
        return [entry(role, "topic", s.topic(x), operation) for x in suffixes]

    leaders = [FAUST_LEADER_TOPIC.format(app_id=a) for a in (s.streams_app_id, s.streams_link_app_id)]
    return [
        # serving: logs impressions, reads snapshots and the rollout's decisions (as no group:
        # every node reads every one)
        *topics(SERVING, "WRITE", TOPIC_IMPRESSIONS),
        *topics(SERVING, "READ", TOPIC_SNAPSHOTS, TOPIC_ROLLOUT),
        # clients: their feedback only
        *topics(FEEDBACK, "WRITE", TOPIC_CLICKS, TOPIC_DWELLS),
        # recorded traffic: the three events (the impressions a node would have logged)
        *topics(REPLAY, "WRITE", TOPIC_IMPRESSIONS, TOPIC_CLICKS, TOPIC_DWELLS),
        # streams: reads the events, writes its own topics (and reads back its changelogs and
        # list-outcomes, stage 2's input), in its two consumer groups
        *topics(STREAMS, "READ", TOPIC_IMPRESSIONS, TOPIC_CLICKS, TOPIC_DWELLS),
        *(
            entry(STREAMS, "topic", s.topic(x), op)
            for x in (TOPIC_LIST_OUTCOMES, TOPIC_JOIN_CHANGELOG, TOPIC_LINK_CHANGELOG)
            for op in ("READ", "WRITE")
        ),
        *topics(STREAMS, "WRITE", TOPIC_TRANSITIONS, TOPIC_DEAD_LETTER),
        *(entry(STREAMS, "topic", name, op) for name in leaders for op in ("CREATE", "READ", "WRITE")),
        entry(STREAMS, "group", s.streams_app_id, "READ"),
        entry(STREAMS, "group", s.streams_link_app_id, "READ"),
        # learner: reads transitions in its group, alone writes snapshots (and reads them back
        # for its version scan), writes dead letters; follows the rollout's decisions (no group)
        *topics(LEARNER, "READ", TOPIC_TRANSITIONS, TOPIC_SNAPSHOTS, TOPIC_ROLLOUT),
        *topics(LEARNER, "WRITE", TOPIC_SNAPSHOTS, TOPIC_DEAD_LETTER),
        entry(LEARNER, "group", s.learner_group_id, "READ"),
        # rollout controller: reads list outcomes per arm and the snapshots it decides on, alone
        # writes the control topic and reads it back (its state after a restart)
        *topics(ROLLOUT, "READ", TOPIC_LIST_OUTCOMES, TOPIC_SNAPSHOTS, TOPIC_ROLLOUT),
        *topics(ROLLOUT, "WRITE", TOPIC_ROLLOUT),
        entry(ROLLOUT, "group", s.rollout_group_id, "READ"),
    ]


def apply_acls(admin_settings: Settings, plan: list[AclEntry], timeout_s: float = 15.0) -> int:
    """Create ``plan``'s ACLs as the principal of ``admin_settings`` (a super user; idempotent:
    the broker keeps one copy of an ACL created twice) and wait until the broker enforces them.
    Returns how many were sent; raises AclError on any failure."""
    from kafka.admin import (
        ACL,
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourcePatternFilter,
        ResourceType,
    )
    from kafka.errors import KafkaError

    from base import kafka as kafka_clients

    acls = [
        ACL(
            principal=f"User:{e.principal}",
            host="*",
            operation=ACLOperation[e.operation],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                ResourceType[e.resource.upper()], e.name, ACLResourcePatternType.LITERAL
            ),
        )
        for e in plan
    ]

    def key(acl: Any) -> tuple[str, int, str, int]:
        pattern = acl.resource_pattern
        return (acl.principal, int(pattern.resource_type), pattern.resource_name, int(acl.operation))

    every = ACLFilter(
        principal=None,
        host=None,
        operation=ACLOperation.ANY,
        permission_type=ACLPermissionType.ALLOW,
        resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.LITERAL),
    )
    try:
        admin = kafka_clients.admin(admin_settings, client_id="paperec-acls", request_timeout_ms=10_000)
    except KafkaError as exc:
        raise AclError(f"kafka: no admin connection to {admin_settings.kafka_bootstrap}: {exc!r}") from exc
    try:
        result = admin.create_acls(acls)
        if result["failed"]:
            # e.g. SecurityDisabledError: a broker without an authorizer
            raise AclError(f"kafka: {len(result['failed'])} ACLs not created: {result['failed'][:3]}")
        # The controller commits them; the broker's authorizer applies them a moment later, from
        # the metadata log. It answers DescribeAcls from the same state it authorizes with.
        wanted = {key(a) for a in acls}
        deadline = time.monotonic() + timeout_s
        while True:
            described, _ = admin.describe_acls(every)
            if wanted <= {key(a) for a in described}:
                break
            if time.monotonic() > deadline:
                raise AclError(f"kafka: ACLs created but not in force after {timeout_s:.0f} s")
            time.sleep(0.1)
    except KafkaError as exc:  # not the super user (ClusterAuthorizationFailed), no authorizer ...
        raise AclError(f"kafka: creating ACLs as {admin_settings.kafka_username!r} failed: {exc!r}") from exc
    finally:
        admin.close()
    return len(acls)


def render_plan(plan: list[AclEntry]) -> str:
    """One line per ACL, as ``kafka-acls.sh --list`` would group them: principal, operation,
    resource."""
    return "\n".join(f"User:{e.principal}\t{e.operation}\t{e.resource}:{e.name}" for e in plan)


def run_acls(settings: Settings, *, dry_run: bool) -> int:
    """``paperec topics acls``: the plan printed (``dry_run``) or created as the admin principal
    of ``settings`` (its ``kafka_username`` and password, from the environment or a file)."""
    plan = acl_plan(settings)
    if dry_run:
        print(render_plan(plan))
        return 0
    try:
        count = apply_acls(settings, plan)
    except AclError as exc:
        print(f"problem: {exc}")
        return 1
    principals = sorted({e.principal for e in plan})
    print(
        f"{count} ACLs for topic prefix {settings.topic_prefix!r} in force on {settings.kafka_bootstrap} "
        f"(principals: {', '.join(principals)})"
    )
    return 0
