"""docker-compose.yml cannot run here (no Docker engine); check its structure and that it agrees
with the settings module, the CLI and the Dockerfile, so a deployment reads the same configuration
as the local CLI: every command parses, every service's state is on a volume, the services run
as a non-root user on a read-only root filesystem, and secrets come only from the environment."""

from __future__ import annotations

import dataclasses
import re
import secrets
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path, PurePosixPath
from typing import Any
from xml.etree import ElementTree

import pytest
import yaml

from base import kafka as kafka_clients
from base.kafka_acls import (
    ADMIN,
    ADMIN_PRINCIPAL,
    LEARNER,
    REPLAY,
    ROLLOUT,
    SERVING,
    STREAMS,
    acl_plan,
    principal,
)
from base.settings import (
    ENV_PREFIX,
    TOPIC_CLICKS,
    TOPIC_DWELLS,
    TOPIC_IMPRESSIONS,
    TOPIC_LIST_OUTCOMES,
    TOPIC_ROLLOUT,
    TOPIC_SNAPSHOTS,
    TOPIC_TRANSITIONS,
    Settings,
)
from paperec.cli import build_parser
from paperec.devstack.kafka import render_server_properties, secure_server_properties

ROOT = Path(__file__).resolve().parents[2]
# The services built from this repository's image (the others are third-party images).
PAPEREC_SERVICES = ("init", "streams", "learner", "actor-1", "actor-2", "rollout", "simulator")
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
        "rollout",
        "simulator",
    } <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert _broker_properties()["process.roles"] == "broker,controller"


def test_paperec_env_names_are_settings_fields_and_endpoints_match() -> None:
    compose = _compose()
    env = compose["x-paperec-env"]
    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    assert set(env) <= known, set(env) - known
    settings = Settings.from_env({k: str(v) for k, v in env.items() if "${" not in str(v)})
    broker = _broker_properties()
    assert (
        broker["advertised.listeners"] == f"{settings.kafka_security_protocol}://{settings.kafka_bootstrap}"
    )
    assert settings.clickhouse_host in compose["services"]
    # the broker must accept the largest snapshot message the topic plan allows
    assert int(broker["message.max.bytes"]) >= settings.max_message_bytes


def test_paperec_services_share_one_image_and_env() -> None:
    services = _compose()["services"]
    for name in PAPEREC_SERVICES:
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


# --- Kafka: SASL, ACLs, one principal per service (docs/security.md "Kafka")
KAFKA_DIR = ROOT / "deploy/kafka"
# The role (base/kafka_acls.py) each paperec service authenticates as.
ROLE_OF_SERVICE = {
    "init": ADMIN,
    "streams": STREAMS,
    "learner": LEARNER,
    "actor-1": SERVING,
    "actor-2": SERVING,
    "rollout": ROLLOUT,
    "simulator": REPLAY,
}
# What each role must be allowed, from what its command does (resource, name suffix, operation);
# a group name is the settings' (a property of the prefix).
ROLE_NEEDS: dict[str, Callable[[Settings], set[tuple[str, str, str]]]] = {
    SERVING: lambda s: {
        ("topic", s.topic(TOPIC_IMPRESSIONS), "WRITE"),
        ("topic", s.topic(TOPIC_SNAPSHOTS), "READ"),
    },
    STREAMS: lambda s: {
        *(("topic", s.topic(t), "READ") for t in (TOPIC_IMPRESSIONS, TOPIC_CLICKS, TOPIC_DWELLS)),
        ("topic", s.topic(TOPIC_TRANSITIONS), "WRITE"),
        ("group", s.streams_app_id, "READ"),
        ("group", s.streams_link_app_id, "READ"),
    },
    LEARNER: lambda s: {
        ("topic", s.topic(TOPIC_TRANSITIONS), "READ"),
        ("topic", s.topic(TOPIC_SNAPSHOTS), "WRITE"),
        ("group", s.learner_group_id, "READ"),
    },
    REPLAY: lambda s: {
        ("topic", s.topic(t), "WRITE") for t in (TOPIC_IMPRESSIONS, TOPIC_CLICKS, TOPIC_DWELLS)
    },
    ROLLOUT: lambda s: {
        *(("topic", s.topic(t), "READ") for t in (TOPIC_LIST_OUTCOMES, TOPIC_SNAPSHOTS, TOPIC_ROLLOUT)),
        ("topic", s.topic(TOPIC_ROLLOUT), "WRITE"),
    },
}


def _broker_properties() -> dict[str, str]:
    """The broker's server.properties, as mounted into the kafka service."""
    kafka = _compose()["services"]["kafka"]
    (source,) = [s for t, s in _mounts(kafka).items() if t == "/etc/paperec/kafka"]
    return _properties((ROOT / source / "server.properties").read_text())


def _properties(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def _service_settings(name: str) -> Settings:
    """The settings a paperec service reads, its password replaced by a placeholder."""
    env = {k: str(v) for k, v in _compose()["services"][name]["environment"].items() if "${" not in str(v)}
    return Settings.from_env({**_image_env(), **env, "PAPEREC_KAFKA_PASSWORD": "placeholder-only"})


def _substituted(value: str) -> str:
    """The variable a required ``${VAR:?...}`` substitutes."""
    m = re.fullmatch(r"\$\{([A-Za-z0-9_]+):\?[^}]+\}", value)
    assert m is not None, f"{value!r} is not a required substitution"
    return m.group(1)


def _start_script_users() -> dict[str, str]:
    """user -> the environment variable of its password, for every SCRAM user start.sh creates."""
    text = (KAFKA_DIR / "start.sh").read_text()
    return dict(re.findall(r'--add-scram "\$\(scram (\S+) "\$(\w+)"\)"', text))


def test_the_broker_takes_only_sasl_scram_and_denies_what_no_acl_allows() -> None:
    compose = _compose()
    kafka = compose["services"]["kafka"]
    assert kafka["entrypoint"] == ["/bin/sh", "/etc/paperec/kafka/start.sh"]
    broker = _broker_properties()
    protocols = dict(item.split(":") for item in broker["listener.security.protocol.map"].split(","))
    listeners = [item.split("://")[0] for item in broker["listeners"].split(",")]
    client_listeners = [
        name for name in listeners if name not in broker["controller.listener.names"].split(",")
    ]
    assert client_listeners and all(protocols[name] == "SASL_PLAINTEXT" for name in client_listeners)
    assert "PLAINTEXT" not in protocols.values()  # no unauthenticated listener, controller included
    assert broker["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert broker["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert broker["allow.everyone.if.no.acl.found"] == "false"
    # the same security settings as the dev stack's secured broker (which the integration tests run)
    dev = _properties(
        secure_server_properties(
            render_server_properties(
                host="h", port=1, controller_port=2, log_dir=Path("/d"), max_message_bytes=1
            ),
            host="h",
            port=1,
            controller_port=2,
            admin_user=ADMIN_PRINCIPAL,
            admin_password="x",
            controller_password="y",
        )
    )
    for key in (
        "sasl.enabled.mechanisms",
        "sasl.mechanism.inter.broker.protocol",
        "sasl.mechanism.controller.protocol",
        "listener.name.controller.sasl.enabled.mechanisms",
        "authorizer.class.name",
        "allow.everyone.if.no.acl.found",
        "super.users",
        "inter.broker.listener.name",
    ):
        assert broker[key] == dev[key], key
    # every client of the compose network speaks SASL with the supported mechanism
    env = compose["x-paperec-env"]
    assert env["PAPEREC_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert env["PAPEREC_KAFKA_SASL_MECHANISM"] in kafka_clients.SASL_MECHANISMS


def test_each_paperec_service_has_its_own_principal_with_the_acls_its_role_needs() -> None:
    compose = _compose()
    services, kafka_env = compose["services"], compose["services"]["kafka"]["environment"]
    assert set(ROLE_OF_SERVICE) == set(PAPEREC_SERVICES)
    users = _start_script_users()
    super_users = _broker_properties()["super.users"].split(";")
    seen: dict[str, tuple[str, str]] = {}  # role -> (username, password variable)
    for name, role in ROLE_OF_SERVICE.items():
        env = services[name]["environment"]
        s = _service_settings(name)
        kafka_clients.check_security(s)  # a complete SASL configuration
        password_var = _substituted(str(env["PAPEREC_KAFKA_PASSWORD"]))
        assert s.kafka_username == principal(s, role), f"{name}: not the {role} principal of the settings"
        assert seen.setdefault(role, (s.kafka_username, password_var)) == (s.kafka_username, password_var), (
            name
        )
        # the broker creates this user, with the same password, when it formats its storage
        assert users.get(s.kafka_username) == password_var, f"{name}: start.sh creates no {s.kafka_username}"
        assert _substituted(str(kafka_env[password_var])) == password_var
        if role == ADMIN:
            assert f"User:{s.kafka_username}" in super_users
            continue
        assert f"User:{s.kafka_username}" not in super_users, f"{name} must not be a super user"
        granted = {(e.resource, e.name, e.operation) for e in acl_plan(s) if e.principal == s.kafka_username}
        missing = ROLE_NEEDS[role](s) - granted
        assert not missing, f"{name} ({s.kafka_username}) lacks ACLs: {sorted(missing)}"
    # distinct principals and passwords per role: no two services share a login
    assert len({u for u, _ in seen.values()}) == len({p for _, p in seen.values()}) == len(seen)
    # only init gets the admin's password
    admin_var = seen[ADMIN][1]
    for name in PAPEREC_SERVICES:
        values = [str(v) for v in services[name]["environment"].values()]
        assert (name == "init") == any(admin_var in v for v in values), name


def test_init_creates_topics_then_the_acls_as_the_admin_and_streams_does_not_create_topics() -> None:
    services = _compose()["services"]
    steps = [part.strip() for part in services["init"]["command"][2].split("&&")]
    assert steps.index("paperec topics create") < steps.index("paperec topics acls")
    assert _service_settings("init").kafka_username == ADMIN_PRINCIPAL
    assert _service_settings("streams").streams_create_topics is False


def _fake_kafka_home(tmp_path: Path) -> Path:
    """A KAFKA_HOME whose tools record their arguments (no Java needed)."""
    home = tmp_path / "kafka"
    (home / "bin").mkdir(parents=True)
    for tool in ("kafka-storage.sh", "kafka-server-start.sh"):
        script = home / "bin" / tool
        script.write_text(
            f'#!/bin/sh\n[ "$1" = random-uuid ] && echo test-cluster-id && exit 0\n'
            f'for a in "$@"; do printf "%s\\n" "$a"; done > "{tmp_path}/{tool}.args"\n'
        )
        script.chmod(0o755)
    return home


def _run_start_script(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    home = _fake_kafka_home(tmp_path)
    full = {
        "PATH": "/usr/bin:/bin",
        "KAFKA_HOME": str(home),
        "PAPEREC_KAFKA_CONF_DIR": str(tmp_path / "conf"),
        **env,
    }
    return subprocess.run(["sh", str(KAFKA_DIR / "start.sh")], env=full, capture_output=True, text=True)


def test_the_start_script_formats_with_every_scram_user_and_starts_the_broker(tmp_path: Path) -> None:
    passwords = {var: secrets.token_urlsafe(24) for var in _compose()["services"]["kafka"]["environment"]}
    done = _run_start_script(tmp_path, passwords)
    assert done.returncode == 0, done.stderr
    conf = tmp_path / "conf" / "server.properties"
    fmt = (tmp_path / "kafka-storage.sh.args").read_text().splitlines()
    assert fmt[:2] == ["format", "--ignore-formatted"] and fmt[fmt.index("--config") + 1] == str(conf)
    assert fmt[fmt.index("--cluster-id") + 1] == "test-cluster-id"
    scram = {a for a in fmt if a.startswith("SCRAM-SHA-512=")}
    assert scram == {
        f"SCRAM-SHA-512=[name={u},password={passwords[v]}]" for u, v in _start_script_users().items()
    }
    assert (tmp_path / "kafka-server-start.sh.args").read_text().splitlines() == [str(conf)]
    # the committed config plus the broker's own logins, readable by its user only
    props = _properties(conf.read_text())
    assert {k: v for k, v in props.items() if k in _broker_properties()} == _broker_properties()
    admin_password = passwords["PAPEREC_KAFKA_ADMIN_PASSWORD"]
    jaas = props["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    assert f'username="{ADMIN_PRINCIPAL}" password="{admin_password}";' in jaas
    assert (
        passwords["PAPEREC_KAFKA_CONTROLLER_PASSWORD"]
        in props["listener.name.controller.plain.sasl.jaas.config"]
    )
    assert conf.stat().st_mode & 0o077 == 0
    health = _properties((tmp_path / "conf" / "admin-client.properties").read_text())
    assert health["security.protocol"] == "SASL_PLAINTEXT" and admin_password in health["sasl.jaas.config"]
    assert "admin-client.properties" in " ".join(_compose()["services"]["kafka"]["healthcheck"]["test"])


@pytest.mark.parametrize("bad", ["", "short", "has a space in it ok", 'quote"in-the-password-x'])
def test_the_start_script_refuses_a_missing_or_unsafe_password(tmp_path: Path, bad: str) -> None:
    passwords = {var: secrets.token_urlsafe(24) for var in _compose()["services"]["kafka"]["environment"]}
    done = _run_start_script(tmp_path, {**passwords, "PAPEREC_KAFKA_LEARNER_PASSWORD": bad})
    assert done.returncode == 1 and "PAPEREC_KAFKA_LEARNER_PASSWORD" in done.stderr
    assert not (tmp_path / "kafka-storage.sh.args").exists()
