"""base.settings: defaults, PAPEREC_* parsing, flag > env > default priority, errors, topics."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from base.settings import (
    ALL_TOPICS,
    CO_PARTITIONED_TOPICS,
    DEV_HMAC_KEY,
    TOPIC_CLICKS,
    TOPIC_SNAPSHOTS,
    Settings,
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_are_loopback_on_non_default_ports() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert (s.kafka_host, s.kafka_port) == ("127.0.0.1", 19092)
    assert s.kafka_port not in (9092, 9093) and s.clickhouse_port != 9000
    assert s.clickhouse_host == "127.0.0.1"


def test_env_values_are_parsed_to_the_field_type() -> None:
    s = Settings.from_env(
        {
            "PAPEREC_KAFKA_BOOTSTRAP": "localhost:29092,localhost:29094",
            "PAPEREC_EVENT_PARTITIONS": "8",
            "PAPEREC_CLICKHOUSE_PORT": "29000",
            "PAPEREC_TOPIC_PREFIX": "x.",
            "PAPEREC_UNRELATED": "ignored",
            "KAFKA_BOOTSTRAP": "not ours",
        }
    )
    assert s.event_partitions == 8 and isinstance(s.event_partitions, int)
    assert s.clickhouse_port == 29000
    assert s.topic_prefix == "x."
    # Derived values use the first bootstrap server.
    assert (s.kafka_host, s.kafka_port) == ("localhost", 29092)


def test_flag_beats_env_beats_default() -> None:
    env = {"PAPEREC_EVENT_PARTITIONS": "8", "PAPEREC_CLICKHOUSE_PORT": "29000"}
    s = Settings.from_args(parse(["--event-partitions", "6"]), env)
    assert s.event_partitions == 6  # flag over env
    assert s.clickhouse_port == 29000  # env, no flag
    assert s.transition_partitions == Settings().transition_partitions  # neither: default


def test_explicit_none_overrides_are_ignored() -> None:
    s = Settings.from_env({"PAPEREC_TOPIC_PREFIX": "env."}, topic_prefix=None, event_partitions=2)
    assert s.topic_prefix == "env."
    assert s.event_partitions == 2


def test_bad_int_in_env_names_the_variable() -> None:
    with pytest.raises(ValueError, match="PAPEREC_CLICKHOUSE_PORT") as exc:
        Settings.from_env({"PAPEREC_CLICKHOUSE_PORT": "nine-thousand"})
    assert "nine-thousand" in str(exc.value)


def test_bad_int_flag_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(["--kafka-controller-port", "abc"])
    assert exc.value.code == 2
    assert "--kafka-controller-port" in capsys.readouterr().err


def test_cli_reports_a_bad_env_var_by_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from paperec.cli import main

    monkeypatch.setenv("PAPEREC_EVENT_PARTITIONS", "four")
    with pytest.raises(SystemExit) as exc:
        main(["devstack", "status"])
    assert exc.value.code == 2
    assert "PAPEREC_EVENT_PARTITIONS" in capsys.readouterr().err


def test_every_field_has_a_flag_named_after_its_env_var() -> None:
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    help_text = parser.format_help()
    for f in dataclasses.fields(Settings):
        assert "--" + f.name.replace("_", "-") in help_text
        assert "PAPEREC_" + f.name.upper() in help_text


def test_topic_names_use_the_prefix() -> None:
    assert Settings().topic(TOPIC_CLICKS) == "paperec.clicks"
    s = Settings.from_env({"PAPEREC_TOPIC_PREFIX": "paperec.test.ab12cd34."})
    assert s.topic(TOPIC_SNAPSHOTS) == "paperec.test.ab12cd34.actor-snapshots"
    names = [s.topic(t) for t in ALL_TOPICS]
    assert len(set(names)) == len(ALL_TOPICS)
    assert set(CO_PARTITIONED_TOPICS) <= set(ALL_TOPICS)


def test_settings_are_immutable_and_replace_returns_a_copy() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.topic_prefix = "x."  # type: ignore[misc]
    t = s.replace(topic_prefix="x.")
    assert (s.topic_prefix, t.topic_prefix) == ("paperec.", "x.")


def test_state_path_is_absolute() -> None:
    s = Settings.from_env({"PAPEREC_STATE_DIR": "rel/state"})
    assert s.state_path.is_absolute()
    assert s.state_path == (Path.cwd() / "rel/state").resolve()


def test_public_dict_masks_secrets() -> None:
    assert Settings().public_dict()["snapshot_hmac_key"] == "<dev key>"
    s = Settings.from_env({"PAPEREC_SNAPSHOT_HMAC_KEY": "s3cret", "PAPEREC_CLICKHOUSE_PASSWORD": "pw"})
    shown = s.public_dict()
    assert "s3cret" not in repr(shown) and "pw" not in shown.values()
    assert shown["snapshot_hmac_key"] == "<set>"
    assert s.snapshot_hmac_key != DEV_HMAC_KEY
