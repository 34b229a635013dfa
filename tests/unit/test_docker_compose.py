"""docker-compose.yml cannot run here (no Docker engine); check its structure and that it agrees
with the settings module, the CLI and the Dockerfile, so a deployment reads the same configuration
as the local CLI: every command parses, every service's state is on a volume, the services run
as a non-root user on a read-only root filesystem, and secrets come only from the environment."""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import fields
from pathlib import Path, PurePosixPath
from typing import Any
from xml.etree import ElementTree

import pytest
import yaml

from base.settings import ENV_PREFIX, Settings
from paperec.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
# The services built from this repository's image (the others are third-party images).
PAPEREC_SERVICES = ("init", "streams", "learner", "actor-1", "actor-2", "simulator")
# The long-running services and what each keeps under its state directory.
STATEFUL_SERVICES = ("streams", "learner", "actor-1", "actor-2", "simulator")
SUBSTITUTION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _runtime_stage() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile's last stage, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stage: list[tuple[str, str]] = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            stage = []
        stage.append((instruction.upper(), rest.strip()))
    return stage


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, rest in _runtime_stage():
        if instruction == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def _image_user() -> str:
    users = [rest for instruction, rest in _runtime_stage() if instruction == "USER"]
    assert users, "the image must not run as root: no USER in the Dockerfile's last stage"
    return users[-1].split(":")[0]


def _secret_fields() -> set[str]:
    """The settings public_dict masks: set each text field in turn, see which ones it hides."""
    secret = set()
    for f in fields(Settings):
        if f.type not in ("str", str):
            continue
        try:
            s = Settings().replace(**{f.name: "id:value"})
        except ValueError:  # a field that validates its value (a choice, a path) is no secret
            continue
        if s.public_dict()[f.name] != dataclasses.asdict(s)[f.name]:
            secret.add(f.name)
    return secret


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


def test_every_paperec_command_parses_with_the_cli() -> None:
    """Each paperec command of the compose file is accepted by the real parser (a flag that does
    not exist would only fail at `docker compose up`)."""
    services = _compose()["services"]
    checked = 0
    for name in PAPEREC_SERVICES:
        cmd = services[name]["command"]
        shell = cmd[:2] == ["sh", "-c"]
        invocations = [shlex.split(part) for part in cmd[2].split("&&")] if shell else [cmd]
        for argv in invocations:
            assert argv[0] == "paperec", (name, argv)
            build_parser(argv[1:]).parse_args(argv[1:])  # SystemExit(2) on an unknown flag
            checked += 1
    assert checked >= len(PAPEREC_SERVICES)


def test_paperec_services_run_as_non_root_with_read_only_code() -> None:
    assert _image_user() not in {"root", "0"}
    services = _compose()["services"]
    for name in PAPEREC_SERVICES:
        svc = services[name]
        assert str(svc.get("user", _image_user())).split(":")[0] not in {"root", "0"}, name
        # read-only root filesystem: the installed code cannot change, state goes to the volume
        assert svc.get("read_only") is True, name


def test_every_service_keeps_its_state_on_a_volume() -> None:
    compose = _compose()
    services, declared = compose["services"], set(compose["volumes"])
    image_state = _image_env()["PAPEREC_STATE_DIR"]
    assert PurePosixPath(image_state).is_absolute(), "the image's PAPEREC_STATE_DIR must be absolute"
    # the image creates it for its user (a new named volume copies the ownership)
    assert re.search(rf"-o {_image_user()}\b.*{re.escape(image_state)}", (ROOT / "Dockerfile").read_text())
    assert any(i == "VOLUME" and image_state in rest for i, rest in _runtime_stage())
    used: set[str] = set()
    node_ids: set[str] = set()
    for name in STATEFUL_SERVICES:
        svc = services[name]
        env = {**_image_env(), **{k: str(v) for k, v in svc["environment"].items() if "${" not in str(v)}}
        settings = Settings.from_env(env)
        mounts = {}
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert source in declared, f"{name}: volume {source} is not declared"
            mounts[PurePosixPath(target)] = source
            used.add(source)

        def on_volume(path: Path, name: str = name, mounts: dict[PurePosixPath, str] = mounts) -> bool:
            p = PurePosixPath(path)
            return any(p == m or m in p.parents for m in mounts)

        assert on_volume(settings.state_path), f"{name}: {settings.state_path} is not on a volume"
        if name == "learner":
            assert on_volume(settings.learner_checkpoint_path), name
        if name.startswith("actor-"):
            # a fixed node id: the snapshot directory is named after it
            node_id = env.get("PAPEREC_SERVE_NODE_ID", "")
            assert node_id and node_id not in node_ids, f"{name}: set a unique PAPEREC_SERVE_NODE_ID"
            node_ids.add(node_id)
            assert on_volume(settings.serve_snapshot_path(node_id)), name
    assert declared - {"kafka-data", "clickhouse-data"} <= used, "declared volumes no service mounts"


def _secret_value_problem(value: str) -> str | None:
    """Why a secret's value in the compose file leaks it (None: it is substituted from the
    environment, with no default other than empty)."""
    m = re.fullmatch(r"\$\{[A-Za-z0-9_]+(?::?([-?])(.*))?\}", value)
    if m is None:
        return "a literal value"
    if m.group(1) == "-" and m.group(2):
        return "a default value"
    return None


@pytest.mark.parametrize(
    ("value", "leaks"),
    [
        ("literal", True),
        ("${X:-secret}", True),
        ("${X-secret}", True),
        ("${X:?set X}", False),
        ("${X:-}", False),
    ],
)
def test_the_secret_check_tells_substitutions_from_values(value: str, leaks: bool) -> None:
    assert (_secret_value_problem(value) is not None) == leaks


def test_secrets_come_only_from_the_environment() -> None:
    secrets = {ENV_PREFIX + name.upper() for name in _secret_fields()}
    assert {"PAPEREC_SNAPSHOT_HMAC_KEY", "PAPEREC_CLICKHOUSE_PASSWORD"} <= secrets
    compose = _compose()
    for name in PAPEREC_SERVICES:
        for var, value in compose["services"][name]["environment"].items():
            problem = _secret_value_problem(str(value)) if var in secrets else None
            assert problem is None, f"{name}: {var} has {problem} in docker-compose.yml"
    # Every substituted variable is documented in .env.example, without a value for the secrets;
    # .env itself (the real values) stays out of git and out of the image's build context.
    substituted = set(SUBSTITUTION.findall((ROOT / "docker-compose.yml").read_text()))
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert substituted <= set(example), substituted - set(example)
    assert all(example[var] == "" for var in secrets & set(example)), "a secret has a value in .env.example"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


# --- ClickHouse users and Grafana (docs/security.md "ClickHouse")
CLICKHOUSE_USERS_XML = ROOT / "deploy/clickhouse/users.d/paperec.xml"


def _required(value: str, var: str) -> bool:
    """``value`` is ``${var:?...}``: compose refuses to start without it."""
    return re.fullmatch(rf"\$\{{{var}:\?[^}}]+\}}", value) is not None


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def test_clickhouse_users_come_from_the_mounted_users_file_with_env_passwords() -> None:
    compose = _compose()
    ch = compose["services"]["clickhouse"]
    mounts = _mounts(ch)
    for kind in ("users.d", "config.d"):
        source = mounts[f"/etc/clickhouse-server/{kind}/paperec.xml"]
        ElementTree.parse(ROOT / source)  # exists and is well-formed (ClickHouse refuses a bad one)
    assert mounts["/etc/clickhouse-server/users.d/paperec.xml"] == "./" + str(
        CLICKHOUSE_USERS_XML.relative_to(ROOT)
    )
    users = ElementTree.parse(CLICKHOUSE_USERS_XML).getroot()
    env = ch["environment"]
    # every password the users file reads (from_env) is in the server's environment, required
    for password in users.iter("password"):
        var = password.get("from_env", "")
        assert _required(str(env.get(var, "")), var), f"clickhouse: {var} must be ${{{var}:?...}}"
    # the admin is the image's own user, replacing the password-less `default`
    assert env["CLICKHOUSE_USER"] not in {"", "default"}
    assert _required(env["CLICKHOUSE_PASSWORD"], "PAPEREC_CLICKHOUSE_ADMIN_PASSWORD")
    # the health check needs no credentials (no password-less user is left to run it)
    assert "/ping" in " ".join(ch["healthcheck"]["test"])

    services = compose["services"]
    writer = compose["x-paperec-env"]["PAPEREC_CLICKHOUSE_USER"]
    writer_password = users.find(f"users/{writer}/password")
    assert writer_password is not None, f"the services' user {writer} is not in users.d"
    assert writer_password.get("from_env") == "PAPEREC_CLICKHOUSE_PASSWORD"
    # only `init` (metrics init: DDL) has the admin credentials, and the same admin as the server's
    init_env = services["init"]["environment"]
    assert init_env["PAPEREC_CLICKHOUSE_ADMIN_USER"] == env["CLICKHOUSE_USER"]
    assert _required(init_env["PAPEREC_CLICKHOUSE_ADMIN_PASSWORD"], "PAPEREC_CLICKHOUSE_ADMIN_PASSWORD")
    for name in PAPEREC_SERVICES:
        svc_env = services[name]["environment"]
        assert svc_env["PAPEREC_CLICKHOUSE_USER"] == writer, name
        assert _required(str(svc_env["PAPEREC_CLICKHOUSE_PASSWORD"]), "PAPEREC_CLICKHOUSE_PASSWORD"), name
        assert "PAPEREC_CLICKHOUSE_DASHBOARD_PASSWORD" not in svc_env, name
        if name != "init":
            assert "PAPEREC_CLICKHOUSE_ADMIN_PASSWORD" not in svc_env, f"{name} must not get the admin"


def test_grafana_has_no_anonymous_access_and_reads_as_the_dashboard_user() -> None:
    grafana = _compose()["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    assert env.get("GF_USERS_ALLOW_SIGN_UP") == "false"
    assert _required(env["GF_SECURITY_ADMIN_PASSWORD"], "GRAFANA_ADMIN_PASSWORD")
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/clickhouse.yml").read_text())
    (source,) = ds["datasources"]
    user = source["jsonData"]["username"]
    users = ElementTree.parse(CLICKHOUSE_USERS_XML).getroot()
    profile = users.findtext(f"users/{user}/profile")
    assert users.findtext(f"profiles/{profile}/readonly") == "1", f"Grafana's user {user} is not read-only"
    # the password: Grafana expands $VAR from its environment, which compose fills, required
    var = source["secureJsonData"]["password"].strip("${}")
    password = users.find(f"users/{user}/password")
    assert password is not None and var == password.get("from_env")
    assert _required(env[var], var)
    assert "password" not in source["jsonData"]  # jsonData is stored and shown in clear
