"""One settings module: every endpoint, port, topic name and directory of paperec.

Each field is read, in increasing priority, from its default, from the environment variable
``PAPEREC_<FIELD_NAME_UPPER>`` and from the CLI flag ``--<field-name-with-dashes>``. Defaults
are loopback addresses and non-default ports, so the dev stack never collides with a system
Kafka or ClickHouse.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "PAPEREC_"

# Topic suffixes, behind one configurable prefix (see Settings.topic).
TOPIC_IMPRESSIONS = "impressions"
TOPIC_CLICKS = "clicks"
TOPIC_DWELLS = "dwells"
TOPIC_TRANSITIONS = "transitions"
TOPIC_SNAPSHOTS = "actor-snapshots"
TOPIC_DEAD_LETTER = "dead-letter"
ALL_TOPICS = (
    TOPIC_IMPRESSIONS,
    TOPIC_CLICKS,
    TOPIC_DWELLS,
    TOPIC_TRANSITIONS,
    TOPIC_SNAPSHOTS,
    TOPIC_DEAD_LETTER,
)
# The join reads these by request_id: they must be co-partitioned (same partition count).
CO_PARTITIONED_TOPICS = (TOPIC_IMPRESSIONS, TOPIC_CLICKS, TOPIC_DWELLS)

DEV_HMAC_KEY = "paperec-dev-key-not-for-production"

# --- Streams (streams/): internal topics of the stream join, behind the same prefix. ``list-outcomes``
# (stage 1 -> stage 2, keyed by user_id) and the changelogs of the two state tables (compacted). The
# changelogs are co-partitioned with the topic their table is keyed like (see topic_plan).
TOPIC_LIST_OUTCOMES = "list-outcomes"
TOPIC_JOIN_CHANGELOG = "streams-join-changelog"
TOPIC_LINK_CHANGELOG = "streams-link-changelog"
STREAMS_TOPICS = (TOPIC_LIST_OUTCOMES, TOPIC_JOIN_CHANGELOG, TOPIC_LINK_CHANGELOG)
ALL_TOPICS = (*ALL_TOPICS, *STREAMS_TOPICS)  # type: ignore[assignment]  # extends the tuple above
# --- end Streams

# --- Rollout: the control topic of the guarded rollout (schemas.RolloutDecision, one partition,
# compacted, every record keyed b"rollout": the latest record is the whole serving state).
TOPIC_ROLLOUT = "rollout"
ALL_TOPICS = (*ALL_TOPICS, TOPIC_ROLLOUT)  # type: ignore[assignment]  # extends the tuple above
# --- end Rollout


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    # --- Kafka
    kafka_bootstrap: str = _opt("127.0.0.1:19092", "Kafka bootstrap servers (host:port[,host:port])")
    kafka_controller_port: int = _opt(19093, "dev stack: KRaft controller port on loopback")
    topic_prefix: str = _opt("paperec.", "prefix of every topic name")
    event_partitions: int = _opt(4, "partitions of impressions/clicks/dwells (co-partitioned)")
    transition_partitions: int = _opt(4, "partitions of the transitions topic")
    event_retention_ms: int = _opt(7 * 24 * 3600 * 1000, "retention of event and transition topics")
    dead_letter_retention_ms: int = _opt(30 * 24 * 3600 * 1000, "retention of the dead-letter topic")
    max_message_bytes: int = _opt(16 * 1024 * 1024, "max message size of the snapshot topic (bytes)")
    replication_factor: int = _opt(1, "replication factor of created topics")
    min_insync_replicas: int = _opt(
        1,
        "min.insync.replicas of created topics: replicas that must have an acks=all write "
        "(2 with replication_factor 3: one broker may fail without losing acknowledged records)",
    )
    kafka_brokers: int = _opt(
        1,
        "dev stack: KRaft nodes (broker+controller each) on loopback; node i listens on "
        "kafka port + 2(i-1), its controller on kafka_controller_port + 2(i-1)",
    )
    # Kafka security (base/kafka.py hands these to every client; docs/security.md). One
    # principal per service: each process gets its own username/password from its environment.
    kafka_security_protocol: str = _opt(
        "PLAINTEXT",
        "Kafka security protocol: PLAINTEXT (no authentication, no encryption: local development "
        "only), SASL_PLAINTEXT, SASL_SSL or SSL",
    )
    kafka_sasl_mechanism: str = _opt("SCRAM-SHA-512", "Kafka SASL mechanism (with SASL_*): SCRAM-SHA-512")
    kafka_username: str = _opt("", "Kafka SASL username: this service's own principal (with SASL_*)")
    # A secret: prefer the environment to the flag (argv is visible in `ps`).
    kafka_password: str = _opt("", "Kafka SASL password of kafka_username (with SASL_*)")
    kafka_password_file: str = _opt(
        "", "Kafka SASL: file holding kafka_password (first line; e.g. a mounted secret); instead of it"
    )
    kafka_ssl_cafile: str = _opt("", "Kafka TLS: CA bundle of the brokers' certificates (SSL, SASL_SSL)")
    kafka_ssl_certfile: str = _opt("", "Kafka TLS: client certificate, PEM (SSL with client authentication)")
    kafka_ssl_keyfile: str = _opt("", "Kafka TLS: private key of kafka_ssl_certfile, PEM")
    # The principals the ACLs name (base/kafka_acls.py, `paperec topics acls`): one per service.
    kafka_serving_principal: str = _opt(
        "paperec-serving", "Kafka ACLs: username of the serving nodes (write impressions, read snapshots)"
    )
    kafka_streams_principal: str = _opt(
        "paperec-streams", "Kafka ACLs: username of the streams worker (reads events, writes transitions)"
    )
    kafka_learner_principal: str = _opt(
        "paperec-learner", "Kafka ACLs: username of the learner (reads transitions, alone writes snapshots)"
    )
    kafka_feedback_principal: str = _opt(
        "paperec-feedback", "Kafka ACLs: username of the clients sending feedback (write clicks, dwells)"
    )
    kafka_replay_principal: str = _opt(
        "paperec-replay", "Kafka ACLs: username of recorded traffic (`paperec replay`: writes the 3 events)"
    )
    kafka_rollout_principal: str = _opt(
        "paperec-rollout",
        "Kafka ACLs: username of the rollout controller (reads list outcomes, alone writes the "
        "control topic)",
    )
    # --- ClickHouse
    clickhouse_host: str = _opt("127.0.0.1", "ClickHouse host (native protocol)")
    clickhouse_port: int = _opt(19000, "ClickHouse native TCP port")
    clickhouse_http_port: int = _opt(18123, "ClickHouse HTTP port (dev stack, dashboards)")
    clickhouse_database: str = _opt("paperec", "ClickHouse database of the metric tables")
    # Three users, one per kind of access (docs/security.md): which one a command uses is fixed
    # in code (base.metrics_store.client's role). The defaults name the dev stack's one loopback
    # user `default` (no password, local development only) for all three; a deployment names three.
    clickhouse_user: str = _opt(
        "default", "ClickHouse user the services write metrics as (streams, learner, serve): a writer user"
    )
    clickhouse_password: str = _opt("", "ClickHouse password of clickhouse_user")
    clickhouse_dashboard_user: str = _opt(
        "default", "ClickHouse user `paperec dashboard` reads as: a read-only user"
    )
    clickhouse_dashboard_password: str = _opt("", "ClickHouse password of clickhouse_dashboard_user")
    clickhouse_admin_user: str = _opt(
        "default", "ClickHouse user that creates the database and tables (`paperec metrics init`)"
    )
    clickhouse_admin_password: str = _opt("", "ClickHouse password of clickhouse_admin_user")
    # --- Security
    snapshot_hmac_key: str = _opt(
        DEV_HMAC_KEY, "HMAC key that signs and verifies actor snapshots (one key, id snapshot_hmac_key_id)"
    )
    snapshot_hmac_keys: str = _opt(
        "",
        "snapshot keys accepted, 'id:secret,id:secret' (key rotation); when set, replaces snapshot_hmac_key",
    )
    snapshot_hmac_key_id: str = _opt("default", "id of the key the learner signs snapshots with")
    dev_mode: bool = _opt(False, "allow the built-in dev snapshot key (dev stack, demo, tests only)")
    # --- Local state
    # Relative by default, for the dev stack in a checkout; a deployment sets an absolute path
    # (the image: /var/lib/paperec), since the services' working directory need not be writable.
    state_dir: str = _opt(
        ".paperec",
        "local state: the dev stack (jars, data, logs) and the services' (streams tables, learner "
        "checkpoints, serving snapshots); relative = under the working directory, so deployments set "
        "an absolute path",
    )
    log_level: str = _opt("INFO", "logging level")

    # --- Serving (actor_service, `paperec serve`)
    serve_host: str = _opt("127.0.0.1", "serve: HTTP listen address")
    serve_port: int = _opt(18080, "serve: HTTP listen port")
    serve_node_id: str = _opt("", "serve: node name in metrics (default: <hostname>:<port>)")
    serve_max_items: int = _opt(1000, "serve: most candidate items per /rank request (<= 1000)")
    serve_max_body_bytes: int = _opt(4 * 1024 * 1024, "serve: largest accepted request body (bytes)")
    serve_cold_start: str = _opt("random", "serve: before any snapshot: 'random' (seeded model) or 'refuse'")
    serve_cold_start_seed: int = _opt(0, "serve: seed of the cold-start model (same on every node)")
    serve_cold_start_config: str = _opt("", "serve: cold-start model config as JSON (empty = defaults)")
    serve_noise_std: float = _opt(
        0.1,
        "serve: exploration noise std on the weight logits of the cold-start model and of snapshots "
        "whose header records none (a snapshot's header value wins; 0 = exploit only)",
    )
    serve_torch_threads: int = _opt(1, "serve: torch intra-op threads of the scoring worker")
    serve_max_batch: int = _opt(16, "serve: most concurrent lists scored as one batch (1 = no batching)")
    serve_max_in_flight: int = _opt(32, "serve: most /rank requests in the node at once (more: 503 at once)")
    # Admission bounds the expected wait, not the count (actor_service/overload.py): set this to
    # your p99 latency SLO minus the unloaded /rank p99, and the deadline to the SLO. The defaults
    # only guard against collapse (a queue that grows without bound), they are no SLO: on a loaded
    # 2-core machine 200 candidates cost 20-50 ms a list, so 500 ms still admits 10-25 at once
    # (and a 10x cost spike during a snapshot swap) and sheds only a flood; the deadline, 4x the
    # budget for a wrong cost estimate, stays well below clients' 5-10 s timeouts.
    serve_max_queue_wait_ms: float = _opt(
        500.0,
        "serve: admit a /rank request only while in-flight requests x recent scoring cost per list "
        "<= this (more: 503 at once)",
    )
    serve_request_deadline_ms: int = _opt(
        2000, "serve: a /rank request still queued this long after arrival is shed with 503 (0 = never)"
    )
    serve_startup_timeout_s: float = _opt(30.0, "serve: longest wait for the snapshot topic on start")
    serve_snapshot_dir: str = _opt(
        "",
        "serve: where the node keeps its last verified snapshot (default: <state_dir>/serve/<prefix>/<node>)",
    )
    serve_impression_buffer: int = _opt(10_000, "serve: impressions buffered while Kafka is slow or down")
    serve_impression_buffer_bytes: int = _opt(
        64 * 1024 * 1024, "serve: bytes of impressions buffered while Kafka is slow or down"
    )
    serve_metrics_interval_s: float = _opt(5.0, "serve: seconds between metric batches to ClickHouse")
    serve_metrics_clickhouse: bool = _opt(True, "serve: write serving metrics to ClickHouse")
    # A secret: prefer the environment or the file to the flag (argv is visible in `ps`).
    serve_auth_token: str = _opt(
        "",
        "serve: bearer token required on /rank and /metrics (empty = no authentication; "
        "/healthz, /readyz stay open)",
    )
    serve_auth_token_file: str = _opt(
        "", "serve: file holding the bearer token (first line; e.g. a mounted secret); instead of the token"
    )
    # --- end Serving

    # --- Streams (streams/, `paperec streams`)
    # 10 s + 2 s: clicks come within seconds of an impression, and the window bounds freshness
    # (click -> served snapshot, benchmarks/freshness.py); raise it for long-form content.
    join_window_ms: int = _opt(10_000, "streams: feedback window after an impression (event time, ms)")
    join_lateness_ms: int = _opt(2_000, "streams: allowed lateness: the window is emitted this much later")
    join_closed_retention_ms: int = _opt(
        120_000, "streams: how long a closed list is remembered, to tell late feedback from unknown (ms)"
    )
    session_gap_ms: int = _opt(30 * 60 * 1000, "streams: gap between two lists of a user that ends a session")
    streams_idle_ms: int = _opt(5_000, "streams: an input idle this long advances its watermark by wall time")
    streams_max_future_ms: int = _opt(60_000, "streams: event times further ahead of wall time are clamped")
    streams_outage_grace_ms: int = _opt(
        30_000,
        "streams: after the broker did not answer (> 5 s), the join's watermarks stay put this long "
        "(ms), so events the producers buffered meanwhile are joined, not late; 0: no hold",
    )
    streams_tick_ms: int = _opt(200, "streams: how often windows and sessions are checked for closing (ms)")
    streams_max_batch: int = _opt(5_000, "streams: most input records processed as one batch")
    streams_max_input_skew_ms: int = _opt(
        60_000, "streams: an input running this far ahead (event time) of the others is paused"
    )
    streams_commit_interval_s: float = _opt(
        1.0, "streams: seconds between offset commits and between state (changelog) flushes"
    )
    streams_session_timeout_s: float = _opt(
        10.0, "streams: Kafka group session timeout: a dead worker's partitions move after this long"
    )
    streams_web_port: int = _opt(0, "streams: Faust web server port (0 = web server disabled)")
    streams_metrics_interval_s: float = _opt(10.0, "streams: seconds between stream health samples")
    streams_metrics_clickhouse: bool = _opt(True, "streams: write outcomes and stream health to ClickHouse")
    streams_create_topics: bool = _opt(True, "streams: create missing topics (as `topics create`) on start")
    # --- end Streams

    # --- Guarded rollout (actor_service/arms.py, rollout/, `paperec rollout`; docs/rollout.md)
    rollout: str = _opt(
        "direct",
        "serve: 'direct' (every verified snapshot serves everyone at once) or 'guarded' (follow the "
        "rollout controller's decisions on the control topic: holdout, canary, rollback)",
    )
    holdout_share: float = _opt(
        0.0, "serve: share of users (stable hash of user id) always served fixed global weights, in [0, 1)"
    )
    holdout_salt: str = _opt(
        "paperec", "serve: salt of the user hash that assigns the holdout and canary arms"
    )
    holdout_weights: str = _opt(
        "",
        "serve: the holdout's fixed weights, comma floats, one per objective (empty = the incumbent "
        "snapshot header's global_weights, else uniform)",
    )
    canary_share: float = _opt(
        0.2, "rollout: share of non-holdout users a candidate snapshot serves as canary"
    )
    rollout_max_drop: float = _opt(
        0.05,
        "rollout: guard-rail: largest relative drop per objective a candidate may cause "
        "(0.05: a 5 percent drop)",
    )
    rollout_alpha: float = _opt(
        0.05,
        "rollout: bound on the false-decision rate of a canary's always-valid test (all objectives, "
        "rollback and promotion together)",
    )
    rollout_min_lists: int = _opt(200, "rollout: lists per arm needed before a candidate may be promoted")
    rollout_max_lists: int = _opt(
        20_000, "rollout: lists per arm at which a canary still undecided is rolled back"
    )
    rollout_ope_lists: int = _opt(
        2_000, "rollout: recent logged lists the off-policy estimate of a new snapshot uses (0 = no gate)"
    )
    rollout_port: int = _opt(18095, "rollout: HTTP port of the controller's /metrics and /healthz")
    # --- end Guarded rollout

    # --- Learner service (learner/, `paperec learner`)
    learner_checkpoint_dir: str = _opt(
        "", "learner: checkpoint directory (default: <state_dir>/learner/<topic_prefix>)"
    )
    # --- end Learner service

    # ---------------------------------------------------------------- derived values
    def topic(self, suffix: str) -> str:
        """Full topic name for one of the TOPIC_* suffixes."""
        return f"{self.topic_prefix}{suffix}"

    # --- Streams
    @property
    def streams_app_id(self) -> str:
        """Faust app id (= consumer group) of the streams worker: one per topic prefix."""
        return f"{self.topic_prefix}streams"

    @property
    def streams_link_app_id(self) -> str:
        """Faust app id (= consumer group) of the streams worker's stage 2 (linking)."""
        return f"{self.topic_prefix}streams-link"

    # --- end Streams
    # --- Learner service
    @property
    def learner_group_id(self) -> str:
        """Consumer group of the learner (its committed offsets): one per topic prefix."""
        return f"{self.topic_prefix}learner"

    @property
    def learner_checkpoint_path(self) -> Path:
        if self.learner_checkpoint_dir:
            return Path(self.learner_checkpoint_dir).resolve()
        return self.state_path / "learner" / (self.topic_prefix.strip(".") or "default")

    # --- end Learner service
    @property
    def rollout_group_id(self) -> str:
        """Consumer group of the rollout controller, if it uses one: one per topic prefix."""
        return f"{self.topic_prefix}rollout"

    def serve_bearer_token(self) -> str:
        """The token /rank and /metrics require ("" = none): serve_auth_token, or the first line
        of serve_auth_token_file (read on each call: servers and clients call it once at start)."""
        if self.serve_auth_token and self.serve_auth_token_file:
            raise ValueError("set serve_auth_token or serve_auth_token_file, not both")
        if not self.serve_auth_token_file:
            return self.serve_auth_token
        path = self.serve_auth_token_file
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"serve_auth_token_file: cannot read {path}: {exc}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ValueError(f"serve_auth_token_file: {path} holds no token")
        return token

    def kafka_sasl_password(self) -> str:
        """kafka_password, or the first line of kafka_password_file (read on each call: the
        once per client built)."""
        if self.kafka_password and self.kafka_password_file:
            raise ValueError(f"set {ENV_PREFIX}KAFKA_PASSWORD or {ENV_PREFIX}KAFKA_PASSWORD_FILE, not both")
        if not self.kafka_password_file:
            return self.kafka_password
        path = self.kafka_password_file
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"{ENV_PREFIX}KAFKA_PASSWORD_FILE: cannot read {path}: {exc}") from None
        password = lines[0].strip() if lines else ""
        if not password:
            raise ValueError(f"{ENV_PREFIX}KAFKA_PASSWORD_FILE: {path} holds no password")
        return password

    def serve_auth_headers(self) -> dict[str, str]:
        """HTTP headers a client of /rank and /metrics sends: the bearer token when one is set."""
        token = self.serve_bearer_token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def serve_snapshot_path(self, node_id: str) -> Path:
        """The node's snapshot directory: one per node, so nodes sharing a state_dir never share it."""
        if self.serve_snapshot_dir:
            return Path(self.serve_snapshot_dir).resolve()
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in node_id) or "node"
        return self.state_path / "serve" / (self.topic_prefix.strip(".") or "default") / safe

    @property
    def kafka_host(self) -> str:
        return self.kafka_bootstrap.split(",")[0].rsplit(":", 1)[0]

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).resolve()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then PAPEREC_* variables, then explicit overrides (e.g. parsed CLI flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one ``--flag`` per field; unset flags fall back to the environment, then defaults."""
        group = parser.add_argument_group("settings (flag > PAPEREC_* env > default)")
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            env_name = ENV_PREFIX + f.name.upper()
            default_shown = "<dev key>" if f.name == "snapshot_hmac_key" else f.default
            group.add_argument(
                flag,
                dest=f"settings_{f.name}",
                type=_type_of(f),
                default=None,
                metavar=env_name,
                help=f"{f.metadata.get('help', '')} (default: {default_shown})",
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
        overrides = {f.name: getattr(args, f"settings_{f.name}", None) for f in fields(cls)}
        return cls.from_env(env, **overrides)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def public_dict(self) -> dict[str, Any]:
        """All fields, secrets masked: safe to log or print."""
        out = dataclasses.asdict(self)
        out["snapshot_hmac_key"] = "<set>" if self.snapshot_hmac_key != DEV_HMAC_KEY else "<dev key>"
        if self.snapshot_hmac_keys:  # ids only, never the secrets
            out["snapshot_hmac_keys"] = ",".join(
                f"{e.split(':', 1)[0]}:<set>" for e in self.snapshot_hmac_keys.split(",")
            )
        for name in ("clickhouse_password", "clickhouse_dashboard_password", "clickhouse_admin_password"):
            out[name] = "<set>" if getattr(self, name) else ""
        out["kafka_password"] = "<set>" if self.kafka_password else ""
        out["serve_auth_token"] = "<set>" if self.serve_auth_token else ""
        return out


def _type_of(f: dataclasses.Field[Any]) -> type:
    return {"int": int, "float": float, "str": str, "bool": _parse_bool}.get(str(f.type), str)  # type: ignore[return-value]


def _parse_bool(raw: str) -> bool:
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _coerce(f: dataclasses.Field[Any], raw: str) -> Any:
    try:
        return _type_of(f)(raw)
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{f.name.upper()}: {exc}") from None


def markdown_table() -> str:
    """The configuration table of the README: one row per setting."""
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for f in fields(Settings):
        default = "<dev key>" if f.name == "snapshot_hmac_key" else f.default
        rows.append(
            f"| `--{f.name.replace('_', '-')}` | `{ENV_PREFIX}{f.name.upper()}` | `{default}` "
            f"| {f.metadata.get('help', '')} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--markdown"]:
        print(markdown_table())
    else:
        print("usage: python -m base.settings --markdown", file=sys.stderr)
        sys.exit(2)
