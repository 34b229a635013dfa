"""``paperec devstack up | down | status | acls``: the local Kafka + ClickHouse dev stack.

All are idempotent: ``up`` on a running stack only reports it, ``down`` on a stopped one
does nothing. Exit codes: 0 ok (``status``: all selected services up), 1 error, 3 ``status``
found a service down.

``--brokers 3`` (``PAPEREC_KAFKA_BROKERS``) starts a replicated cluster of three KRaft nodes
(paperec/devstack/kafka.py); ``down`` and ``status`` act on every node the cluster was formatted
with, whatever ``--brokers`` says.

``PAPEREC_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT`` (or ``--kafka-security-protocol``) secures the
broker (docs/security.md, "Kafka"): SCRAM users per service, written to
``<state_dir>/kafka/credentials/<role>.env``, and ACLs for the topic prefix; ``acls`` creates
them for another prefix (a demo run's, a test's).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from base.settings import ENV_PREFIX, Settings
from paperec.devstack.clickhouse import ClickHouse
from paperec.devstack.kafka import Kafka, kafka_nodes, recorded_brokers
from paperec.devstack.process import DevstackError, Service, pid_alive, port_in_use

log = logging.getLogger(__name__)

SERVICES: dict[str, type[Service]] = {"kafka": Kafka, "clickhouse": ClickHouse}
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_UP = 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["up", "down", "status", "acls"],
        help="what to do (acls: a secured broker's ACLs for --topic-prefix)",
    )
    parser.add_argument("--only", choices=list(SERVICES), help="act on one service (default: all)")
    parser.add_argument(
        "--wipe",
        action="store_true",
        help="with down: also delete data, logs and configs (keeps Kafka's jar cache)",
    )
    parser.add_argument(
        "--brokers",
        type=int,
        default=None,
        help="Kafka nodes on loopback (= --kafka-brokers; 3: replication factor 3, "
        "min.insync.replicas 2); down/status: every node the cluster was formatted with",
    )


def selected_services(settings: Settings, only: str | None, action: str) -> list[Service]:
    """The services ``action`` acts on: every Kafka node (``up``: the configured count; the
    others: as many as were formatted, so none is left running), then ClickHouse."""
    brokers, recorded = settings.kafka_brokers, recorded_brokers(settings)
    if action in ("down", "status"):
        brokers = max(brokers, recorded)
    elif action == "up" and only in (None, "kafka") and recorded not in (0, brokers):
        # Also when its nodes run: `up` must not report one of three as "the" broker.
        raise DevstackError(
            f"kafka: the dev cluster was formatted with {recorded} node(s), {brokers} are configured: "
            f"`paperec devstack up --brokers {recorded}`, or wipe it first: "
            "`paperec devstack down --only kafka --wipe`"
        )
    out: list[Service] = []
    if only in (None, "kafka"):
        out.extend(kafka_nodes(settings.replace(kafka_brokers=brokers)))
    if only in (None, "clickhouse"):
        out.append(ClickHouse(settings))
    return out


def run(args: argparse.Namespace, settings: Settings) -> int:
    brokers = getattr(args, "brokers", None)  # absent in a Namespace built by a caller
    if brokers is not None:
        settings = settings.replace(kafka_brokers=brokers)
    if args.wipe and args.action != "down":
        print("paperec devstack: --wipe only goes with `down`", file=sys.stderr)
        return EXIT_ERROR
    try:
        services = selected_services(settings, args.only, args.action)
        if args.action == "status":
            return status(services)
        if args.action == "acls":
            return acls(Kafka(settings))
        # Serialise up/down: two concurrent `up`s would both see free ports and race.
        with state_lock(settings.state_path):
            if args.action == "up":
                return up(services)
            return down(services, wipe=args.wipe)
    except DevstackError as exc:
        print(f"paperec devstack {args.action}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def up(services: Sequence[Service]) -> int:
    started_at = time.monotonic()
    _check_distinct_ports(services)
    to_start: list[Service] = []
    for svc in services:
        pid = svc.running_pid()
        if pid is None:
            svc.check_ports()  # all ports of all services, before anything is started
            to_start.append(svc)
        elif svc.probe():
            print(f"{svc.name}: already running (pid {pid}, {svc.address})")
        else:
            log.info("%s: pid %d runs but does not answer yet; waiting for it", svc.name, pid)
            svc.wait_ready(pid)
    for svc in to_start:
        svc.prepare()
    # Start all, then wait for all: the JVM and ClickHouse boot in parallel.
    spawned = [(svc, svc.spawn()) for svc in to_start]
    errors = []
    for svc, pid in spawned:
        try:
            svc.wait_ready(pid)
            print(f"{svc.name}: started (pid {pid}, {svc.address})")
        except DevstackError as exc:
            errors.append(str(exc))
    if errors:
        raise DevstackError("\n".join(errors))
    if spawned:
        log.info("devstack up in %.1f s", time.monotonic() - started_at)
    nodes = [svc for svc in services if isinstance(svc, Kafka)]
    if len(nodes) > 1:
        rf, min_isr = nodes[0].replication
        print(
            f"kafka: {len(nodes)} nodes; clients: {ENV_PREFIX}KAFKA_BOOTSTRAP={nodes[0].bootstrap} "
            f"{ENV_PREFIX}REPLICATION_FACTOR={rf} {ENV_PREFIX}MIN_INSYNC_REPLICAS={min_isr}"
        )
    return EXIT_OK


def acls(kafka: Kafka) -> int:
    """Create the services' ACLs for the settings' topic prefix on the secured dev broker."""
    if not kafka.secured:
        raise DevstackError(
            f"acls: the broker is secured only with {ENV_PREFIX}KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT "
            "(a PLAINTEXT broker has no authorizer)"
        )
    count = kafka.apply_acls()
    print(
        f"kafka: {count} ACLs for topic prefix {kafka.settings.topic_prefix!r}; each service's "
        f"credentials: {kafka.credentials_dir}/<role>.env"
    )
    return EXIT_OK


def down(services: Sequence[Service], *, wipe: bool) -> int:
    # All at once: Kafka nodes stopped one by one would leave the last waiting for a controller
    # quorum that is already gone (its controlled shutdown then runs into the SIGKILL timeout).
    with ThreadPoolExecutor(max_workers=max(1, len(services))) as pool:
        stopped = list(pool.map(lambda svc: svc.stop(), services))
    for svc, was_running in zip(services, stopped, strict=True):
        print(f"{svc.name}: {'stopped' if was_running else 'not running'}")
        if wipe:
            svc.wipe()
            print(f"{svc.name}: wiped {svc.root} (kept: {', '.join(svc.keep_on_wipe) or 'nothing'})")
    return EXIT_OK


def status(services: Sequence[Service]) -> int:
    all_up = True
    print(f"{'SERVICE':<11} {'STATE':<13} {'PID':<8} {'ADDRESS':<40} DATA")
    for svc in services:
        pid = svc.running_pid()
        note = ""
        if pid is None:
            state = "down"
            taken = [p.port for p in svc.ports() if port_in_use(p.host, p.port)]
            if taken:
                note = f"  (port {', '.join(map(str, taken))} held by another process)"
        else:
            state = "up" if svc.probe() else "not-answering"
        all_up = all_up and state == "up"
        pid_text = str(pid) if pid is not None and pid_alive(pid) else "-"
        print(f"{svc.name:<11} {state:<13} {pid_text:<8} {svc.address:<40} {svc.data_dir}{note}")
    return EXIT_OK if all_up else EXIT_NOT_UP


def _check_distinct_ports(services: Sequence[Service]) -> None:
    seen: dict[int, str] = {}
    for port in (p for svc in services for p in svc.ports()):
        if port.port in seen:
            raise DevstackError(
                f"port {port.port} is configured twice: for {seen[port.port]} and for {port.purpose} "
                f"({ENV_PREFIX}{port.setting.upper()}); give each its own port."
            )
        seen[port.port] = f"{port.purpose} ({ENV_PREFIX}{port.setting.upper()})"


@contextlib.contextmanager
def state_lock(state_path: Path) -> Iterator[None]:
    state_path.mkdir(parents=True, exist_ok=True)
    with (state_path / ".devstack.lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another `paperec devstack` is running on %s; waiting for it", state_path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m paperec.devstack``: ``paperec devstack``."""
    from base import command

    return command.main("python -m paperec.devstack", sys.modules[__name__], argv, description=__doc__)
