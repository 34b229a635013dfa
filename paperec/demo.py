"""``paperec demo``: the whole loop on the real components, in one command.

1. brings up the dev stack if needed (and takes it down again at the end if it started it),
   creates this run's topics (a fresh ``paperec.demo-<time>.`` prefix, so runs never mix) and
   the metric tables;
2. starts the streams worker, the learner, two serving nodes and the rollout controller as child
   processes; the nodes follow the controller's decisions (``rollout=guarded``: a holdout of 10%
   of users on global weights, each new snapshot a canary first; see DEMO_ROLLOUT_ENV);
3. drives simulated users through ``POST /rank`` on both nodes; their clicks and dwell times go
   back to Kafka (or, with ``--replay LOG``, publishes a recorded log instead);
4. prints live progress and ends with a summary comparing the first and the last snapshot.

Time is compressed: a simulated user answers a list at once, and the events carry wall-clock
event times, so the join window, the session gap and the snapshot cadence are set short here
(see DEMO_ENV). Ctrl-C stops everything; no process is left behind.

On a secured dev stack (``PAPEREC_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT``) each service runs as
its own principal, with the credentials the dev stack generated, and the run's topic prefix is
granted the services' ACLs first (:func:`secure_demo`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from base import kafka as kafka_clients
from base.config_flags import parse_assignments, to_flags
from base.kafka_acls import ADMIN, LEARNER, ROLLOUT, SERVING, STREAMS
from base.settings import ENV_PREFIX, TOPIC_TRANSITIONS, Settings
from paperec.demo_driver import DemoDriver, LocalStats, replay_log
from paperec.services import ServiceProcess, Supervisor

log = logging.getLogger(__name__)

# Short windows for compressed time (the simulated user answers within a few hundred ms).
DEMO_ENV = {
    "PAPEREC_JOIN_WINDOW_MS": "3000",
    "PAPEREC_JOIN_LATENESS_MS": "1000",
    "PAPEREC_SESSION_GAP_MS": "4000",
    "PAPEREC_STREAMS_IDLE_MS": "1000",
}

# The guarded rollout (docs/rollout.md): nodes serve what the controller decides, 10% of users are
# a holdout on global weights, a new snapshot serves 20% of the others as a canary first. The
# guard-rail is wider and the canary shorter than the defaults (5%, 200 lists a side): a neutral
# canary needs hundreds of lists to be shown within 25%, thousands within 5%, and the demo runs
# minutes at a few dozen lists a second.
DEMO_ROLLOUT_ENV = {
    "PAPEREC_ROLLOUT": "guarded",
    "PAPEREC_HOLDOUT_SHARE": "0.1",
    "PAPEREC_CANARY_SHARE": "0.2",
    "PAPEREC_ROLLOUT_MAX_DROP": "0.25",
    "PAPEREC_ROLLOUT_MIN_LISTS": "100",
    "PAPEREC_ROLLOUT_OPE_LISTS": "1000",
}

# A small batch and frequent snapshots: the demo is short and should show several versions.
DEMO_LEARNER_FLAGS = (
    *("--batch-size", "128", "--min-buffer", "256", "--torch-threads", "1"),
    *("--snapshot-every-steps", "40", "--snapshot-every-s", "10", "--checkpoint-every-s", "30"),
)


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


@dataclass
class DemoOptions:
    duration_s: float
    users: int
    parallel: int
    seed: int
    replay: str | None
    speed: float | None
    out: Path
    keep_devstack: bool
    learner: tuple[str, ...] = ()
    """``FIELD=VALUE`` patches of the learner's PAPERecConfig (``--learner``), e.g. reward=hybrid"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration", type=float, default=180.0, help="seconds to drive traffic (default 180)"
    )
    parser.add_argument("--users", type=int, default=300, help="simulated users (default 300)")
    parser.add_argument("--parallel", type=int, default=8, help="concurrent simulated sessions (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    parser.add_argument("--replay", metavar="LOG", help="drive the loop from a recorded log instead")
    parser.add_argument(
        "--speed", type=float, default=None, help="replay at X times real time (default: fast)"
    )
    parser.add_argument("--out", default="out/demo", help="where the summary report goes (default out/demo)")
    parser.add_argument(
        "--keep-devstack", action="store_true", help="leave a dev stack this demo started running at the end"
    )
    parser.add_argument(
        "--learner",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set a learner.training.PAPERecConfig field of the learner, e.g. reward=hybrid or "
        "policy_state=ranker (repeatable; the value is parsed as JSON, else taken as a string)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    opts = DemoOptions(
        duration_s=args.duration,
        users=args.users,
        parallel=args.parallel,
        seed=args.seed,
        replay=args.replay,
        speed=args.speed,
        out=Path(args.out),
        keep_devstack=args.keep_devstack,
        learner=tuple(args.learner),
    )
    try:
        learner_patch_flags(opts.learner)  # a bad patch fails here, before any service starts
    except ValueError as exc:
        print(f"paperec demo: {exc}")
        return 2
    return run_demo(settings, opts)


def learner_patch_flags(items: Sequence[str]) -> list[str]:
    """The ``paperec learner`` flags of ``--learner FIELD=VALUE`` patches of PAPERecConfig (the
    reward mode, the policy state ...), checked against the config (ValueError if unusable)."""
    from learner.training import PAPERecConfig

    patch = parse_assignments(PAPERecConfig, items, "--learner", exclude={"ranker"})
    dataclasses.replace(PAPERecConfig(), **patch)  # validates, e.g. an unknown reward mode
    return to_flags(SimpleNamespace(**patch), "")


def run_demo(settings: Settings, opts: DemoOptions) -> int:
    from paperec import devstack_control

    started_stack = devstack_control.ensure_up(settings)
    supervisor = Supervisor()
    try:
        settings = settings.replace(topic_prefix=f"paperec.demo-{time.strftime('%Y%m%d-%H%M%S')}.")
        settings, credentials = secure_demo(settings)
        return _run(settings, opts, supervisor, credentials)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every service")
        return 130
    finally:
        supervisor.stop_all()
        if started_stack and not opts.keep_devstack:
            devstack_control.down(settings)


def secure_demo(settings: Settings, kafka: Any = None) -> tuple[Settings, dict[str, dict[str, str]] | None]:
    """On a secured dev broker (``kafka_security_protocol`` SASL_*): grant this run's topic prefix
    the services' ACLs (as ``paperec devstack acls`` does) and return the admin principal's
    settings, for this process (it creates the run's topics, drives the traffic and reads the
    transitions count: the operator), and each service role's credentials from the dev stack's
    credentials dir. On a PLAINTEXT one: ``settings`` unchanged and no credentials.
    ``kafka``: the dev stack's broker (default: ``paperec.devstack.kafka.Kafka(settings)``)."""
    if not kafka_clients.uses_sasl(settings):
        return settings, None
    if kafka is None:
        from paperec.devstack.kafka import Kafka

        kafka = Kafka(settings)
    count = kafka.apply_acls()
    log.info("kafka: %d ACLs for the demo's topic prefix %s", count, settings.topic_prefix)
    credentials = {role: dict(kafka.credentials(role)) for role in (SERVING, STREAMS, LEARNER, ROLLOUT)}
    return kafka.client_settings(ADMIN), credentials


def demo_services(
    settings: Settings,
    opts: DemoOptions,
    log_dir: Path,
    demo_tuning: bool = True,
    kafka_credentials: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[list[ServiceProcess], list[str]]:
    """The streams worker, the learner, two serving nodes and the rollout controller for this run's
    topic prefix, with the demo's short windows, snapshot cadence and rollout settings
    (``demo_tuning``) or the library defaults.
    ``kafka_credentials`` (a secured broker): role -> that principal's ``PAPEREC_KAFKA_*``
    variables (:func:`secure_demo`); each service gets only its own role's."""
    from simulator import SimulatorConfig

    ranker = SimulatorConfig(seed=opts.seed, n_users=opts.users).ranker_config()
    env = {
        **(DEMO_ENV if demo_tuning else {}),
        **(DEMO_ROLLOUT_ENV if demo_tuning else {"PAPEREC_ROLLOUT": "guarded"}),
        "PAPEREC_TOPIC_PREFIX": settings.topic_prefix,
        # The demo runs on the dev stack: the built-in snapshot key is allowed (a key set in the
        # environment still takes precedence).
        "PAPEREC_DEV_MODE": "1",
        # A bearer token given as a flag reaches the nodes too (the driver sends it); by
        # environment, not argv, which `ps` shows.
        **({"PAPEREC_SERVE_AUTH_TOKEN": settings.serve_auth_token} if settings.serve_auth_token else {}),
        **(
            {"PAPEREC_SERVE_AUTH_TOKEN_FILE": settings.serve_auth_token_file}
            if settings.serve_auth_token_file
            else {}
        ),
    }

    def env_of(role: str) -> dict[str, str]:
        if kafka_credentials is None:
            return env
        return {
            **env,
            **kafka_credentials[role],
            # the file would win over (conflict with) the password given here
            f"{ENV_PREFIX}KAFKA_PASSWORD_FILE": "",
            # the run's topics exist already: the streams principal may not create topics
            **({f"{ENV_PREFIX}STREAMS_CREATE_TOPICS": "false"} if role == STREAMS else {}),
        }

    cold_start = json.dumps({"ranker": {k: _jsonable(v) for k, v in vars(ranker).items()}})
    learner_flags = [
        *(DEMO_LEARNER_FLAGS if demo_tuning else []),
        *("--metrics-source", "demo-learner"),
        # one checkpoint directory per run (prefix): a rerun with the same --out starts afresh
        *("--learner-checkpoint-dir", str(log_dir.parent / "checkpoints" / settings.topic_prefix.strip("."))),
        *to_flags(ranker, "ranker-"),
        *learner_patch_flags(opts.learner),
    ]
    ports = [settings.serve_port + 1, settings.serve_port + 2]
    services = [
        ServiceProcess("streams", ["streams"], env_of(STREAMS), log_dir / "streams.log"),
        ServiceProcess("learner", ["learner", *learner_flags], env_of(LEARNER), log_dir / "learner.log"),
        *(
            ServiceProcess(
                f"actor-{i + 1}",
                [
                    "serve",
                    "--serve-port",
                    str(port),
                    "--serve-node-id",
                    f"actor-{i + 1}",
                    "--serve-cold-start-config",
                    cold_start,
                    # next to the checkpoints: one per run and node, not in the shared state dir
                    "--serve-snapshot-dir",
                    str(log_dir.parent / "snapshots" / settings.topic_prefix.strip(".") / f"actor-{i + 1}"),
                ],
                env_of(SERVING),
                log_dir / f"actor-{i + 1}.log",
            )
            for i, port in enumerate(ports)
        ),
        # its /metrics next to the nodes' ports: two demos (or tests) never share one
        ServiceProcess(
            "rollout",
            ["rollout", "--rollout-port", str(settings.serve_port + 3)],
            env_of(ROLLOUT),
            log_dir / "rollout.log",
        ),
    ]
    return services, [f"http://{settings.serve_host}:{p}" for p in ports]


def _run(
    settings: Settings,
    opts: DemoOptions,
    supervisor: Supervisor,
    kafka_credentials: Mapping[str, Mapping[str, str]] | None = None,
) -> int:
    from base.metrics_store import init_tables
    from base.topics import create_topics

    print(f"paperec demo: topic prefix {settings.topic_prefix}")
    problems = create_topics(settings)
    if problems:
        print("\n".join(f"topic problem: {p}" for p in problems))
        return 1
    init_tables(settings)
    log_dir = opts.out / "logs"
    services, urls = demo_services(settings, opts, log_dir, kafka_credentials=kafka_credentials)
    for service in services:
        supervisor.start(service)
    driver = DemoDriver(settings, urls, opts.users, opts.seed, opts.parallel)
    try:
        driver.wait_ready(timeout_s=120, supervisor=supervisor)
        started = time.time()
        if opts.replay:
            stats = replay_log(settings, opts.replay, opts.speed, driver, supervisor)
            driver.drain(settings, timeout_s=30)
        else:
            stats = driver.drive(opts.duration_s, supervisor)
        # Freeze the model: stop the learner, then let both nodes load its last snapshot, so the
        # summary compares a final state (the nodes hot-load within about a second).
        learner = next(s for s in supervisor.services if s.name == "learner")
        learner.stop()
        driver.wait_nodes_agree(timeout_s=15)
        summary = driver.summary(stats, started)
    finally:
        driver.close()
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    print(render_summary(summary, settings))
    dead = [s.name for s in supervisor.dead()]
    if dead:
        print(f"services that exited early: {', '.join(dead)} (logs in {log_dir})")
        return 1
    if summary.get("rank_failures"):
        print(f"lists still refused (503) after every retry: {summary['rank_failures']} (logs in {log_dir})")
        return 1
    return 0


def render_summary(summary: dict[str, object], settings: Settings) -> str:
    lines = [
        "",
        "=== paperec demo summary ===",
        f"lists served: {summary['lists']}, events sent: {summary['events']}, "
        f"transitions: {summary['transitions']} (topic {settings.topic(TOPIC_TRANSITIONS)})",
        f"snapshot versions served at the end: {summary['served_versions']}",
        f"/rank 503s retried after Retry-After: {summary.get('rank_retries', 0)}, "
        f"lists failed after every retry: {summary.get('rank_failures', 0)}",
        "",
        "per snapshot (simulated outcome of the lists each snapshot ranked):",
        "  version  lists   CTR      dwell s / impression",
    ]
    for row in summary["per_snapshot"]:  # type: ignore[attr-defined]
        lines.append(f"  {row['version']:>7}  {row['lists']:>5}   {row['ctr']:.4f}   {row['dwell_s']:.2f}")
    cmp = summary.get("first_vs_last")
    if cmp:
        lines.append(
            f"first vs last snapshot: CTR {cmp['ctr'][0]:.4f} -> {cmp['ctr'][1]:.4f}, "  # type: ignore[index]
            f"dwell/impression {cmp['dwell_s'][0]:.2f} -> {cmp['dwell_s'][1]:.2f} s"  # type: ignore[index]
        )
    ch = summary.get("clickhouse_per_snapshot")
    if ch:
        lines.append(f"ClickHouse list_outcomes rows per snapshot version: {ch}")
    return "\n".join(lines)


__all__ = ["DEMO_ENV", "DEMO_ROLLOUT_ENV", "DemoOptions", "LocalStats", "configure", "run", "run_demo"]
