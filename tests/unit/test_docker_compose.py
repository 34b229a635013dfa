"""docker-compose.yml cannot run here (no Docker engine); check its structure and that it agrees
with the settings module, so a deployment reads the same configuration as the local CLI."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from base.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_present() -> None:
    services = _compose()["services"]
    assert {
        "kafka",
        "clickhouse",
        "grafana",
        "init",
        "streams",
        "learner",
        "actor-1",
        "actor-2",
        "simulator",
    } <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_paperec_env_names_are_settings_fields_and_endpoints_match() -> None:
    compose = _compose()
    env = compose["x-paperec-env"]
    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    assert set(env) <= known, set(env) - known
    settings = Settings.from_env({k: str(v) for k, v in env.items() if "${" not in str(v)})
    kafka_env = compose["services"]["kafka"]["environment"]
    assert kafka_env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{settings.kafka_bootstrap}"
    assert settings.clickhouse_host in compose["services"]
    # the broker must accept the largest snapshot message the topic plan allows
    assert int(kafka_env["KAFKA_MESSAGE_MAX_BYTES"]) >= settings.max_message_bytes


def test_paperec_services_share_one_image_and_env() -> None:
    services = _compose()["services"]
    for name in ("init", "streams", "learner", "actor-1", "actor-2", "simulator"):
        svc = services[name]
        assert svc["build"] == "." and svc["image"] == "paperec:latest", name
        assert svc["environment"]["PAPEREC_KAFKA_BOOTSTRAP"] == "kafka:9092", name


def test_grafana_provisioning_files_exist() -> None:
    grafana = _compose()["services"]["grafana"]
    for volume in grafana["volumes"]:
        host_path = volume.split(":")[0]
        assert (ROOT / host_path).is_dir(), host_path
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/clickhouse.yml").read_text())
    assert ds["datasources"][0]["type"] == "grafana-clickhouse-datasource"
    assert ds["datasources"][0]["jsonData"]["port"] == 9000
