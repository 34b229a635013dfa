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
    # --- ClickHouse
    clickhouse_host: str = _opt("127.0.0.1", "ClickHouse host (native protocol)")
    clickhouse_port: int = _opt(19000, "ClickHouse native TCP port")
    clickhouse_http_port: int = _opt(18123, "ClickHouse HTTP port (dev stack, dashboards)")
    clickhouse_database: str = _opt("paperec", "ClickHouse database of the metric tables")
    clickhouse_user: str = _opt("default", "ClickHouse user")
    clickhouse_password: str = _opt("", "ClickHouse password")
    # --- Security
    snapshot_hmac_key: str = _opt(DEV_HMAC_KEY, "HMAC key that signs and verifies actor snapshots")
    # --- Local state
    state_dir: str = _opt(".paperec", "dev stack state: jar cache, data, logs, pid files")
    log_level: str = _opt("INFO", "logging level")

    # ---------------------------------------------------------------- derived values
    def topic(self, suffix: str) -> str:
        """Full topic name for one of the TOPIC_* suffixes."""
        return f"{self.topic_prefix}{suffix}"

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
        out["clickhouse_password"] = "<set>" if self.clickhouse_password else ""
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
        print("usage: python -m paperec.settings --markdown", file=sys.stderr)
        sys.exit(2)
