"""base/kafka.py: every client factory gets the connection and security options of Settings,
the three libraries (kafka-python, aiokafka, Faust) alike; bad security settings are refused by
name; and no service builds a Kafka client around it. The ACL plan (base/kafka_acls.py)
gives each principal its own topics only."""

from __future__ import annotations

import ast
import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiokafka
import faust
import kafka
import kafka.admin
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from base import kafka as kafka_clients
from base.kafka_acls import FEEDBACK, LEARNER, ROLES, ROLLOUT, SERVING, STREAMS, acl_plan
from base.settings import Settings
from paperec.devstack.kafka import (
    env_file_lines,
    read_env_file,
    secure_server_properties,
    username,
)

ROOT = Path(__file__).resolve().parents[2]
SASL = Settings(
    kafka_bootstrap="broker-1:9093,broker-2:9093",
    kafka_security_protocol="SASL_PLAINTEXT",
    kafka_username="paperec-learner",
    kafka_password="s3cret-test-only",
)
SASL_FIELDS = {
    "security_protocol": "SASL_PLAINTEXT",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "paperec-learner",
    "sasl_plain_password": "s3cret-test-only",
}


class Recorder:
    """Stands in for a client class: records the keyword arguments it is built with."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Recorder:
        self.calls.append((args, kwargs))
        return self


FACTORIES: dict[str, tuple[Any, str, Callable[[Settings], Any]]] = {
    "kafka-python producer": (kafka, "KafkaProducer", lambda s: kafka_clients.producer(s, acks="all")),
    "kafka-python consumer": (
        kafka,
        "KafkaConsumer",
        lambda s: kafka_clients.consumer(s, "t1", group_id="g"),
    ),
    "kafka-python admin": (kafka.admin, "KafkaAdminClient", lambda s: kafka_clients.admin(s, client_id="a")),
    "aiokafka producer": (aiokafka, "AIOKafkaProducer", lambda s: kafka_clients.aio_producer(s, acks="all")),
    "aiokafka consumer": (
        aiokafka,
        "AIOKafkaConsumer",
        lambda s: kafka_clients.aio_consumer(s, "t1", group_id=None),
    ),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_every_factory_gets_the_sasl_options_and_keeps_its_own(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, attr, build = FACTORIES[name]
    recorder = Recorder()
    monkeypatch.setattr(module, attr, recorder)
    build(SASL)
    ((args, kwargs),) = recorder.calls
    assert kwargs["bootstrap_servers"] == "broker-1:9093,broker-2:9093"
    assert {k: kwargs[k] for k in SASL_FIELDS} == SASL_FIELDS
    assert "ssl_context" not in kwargs  # SASL_PLAINTEXT: no TLS
    own = {k: v for k, v in kwargs.items() if k not in SASL_FIELDS and k != "bootstrap_servers"}
    producer_own = {"acks": "all", "enable_idempotence": True}
    assert own in (producer_own, {"group_id": "g"}, {"client_id": "a"}, {"group_id": None})
    assert args in ((), ("t1",))


@pytest.mark.parametrize("name", list(FACTORIES))
def test_plaintext_passes_no_credentials(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module, attr, build = FACTORIES[name]
    recorder = Recorder()
    monkeypatch.setattr(module, attr, recorder)
    build(Settings(kafka_username="ignored", kafka_password="ignored"))
    ((_, kwargs),) = recorder.calls
    assert kwargs["security_protocol"] == "PLAINTEXT"
    assert not {k for k in kwargs if k.startswith(("sasl_", "ssl_"))}


def test_a_callers_option_wins_over_the_connection_defaults() -> None:
    options = kafka_clients.producer_options(SASL, bootstrap_servers="elsewhere:1", linger_ms=5)
    assert options["bootstrap_servers"] == "elsewhere:1" and options["linger_ms"] == 5
    assert options["sasl_plain_username"] == "paperec-learner"


PRODUCERS = {
    "kafka-python producer": (kafka, "KafkaProducer", kafka_clients.producer),
    "aiokafka producer": (aiokafka, "AIOKafkaProducer", kafka_clients.aio_producer),
}


@pytest.mark.parametrize("name", list(PRODUCERS))
def test_every_producer_factory_is_acks_all_and_idempotent(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, attr, build = PRODUCERS[name]
    recorder = Recorder()
    monkeypatch.setattr(module, attr, recorder)
    build(Settings(), linger_ms=5)  # the caller names neither: the factory sets both
    ((_, kwargs),) = recorder.calls
    assert kwargs["acks"] == "all" and kwargs["enable_idempotence"] is True
    assert kwargs["linger_ms"] == 5


@pytest.mark.parametrize("name", list(PRODUCERS))
@pytest.mark.parametrize("weaker", [{"acks": 1}, {"acks": 0}, {"enable_idempotence": False}])
def test_a_producer_with_weaker_durability_is_refused(
    name: str, weaker: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, attr, build = PRODUCERS[name]
    recorder = Recorder()
    monkeypatch.setattr(module, attr, recorder)
    with pytest.raises(ValueError, match=r"acks|idempotent"):
        build(Settings(), **weaker)
    assert recorder.calls == []


def test_producer_options_are_durable_and_accepted_by_the_real_clients() -> None:
    """aiokafka's real constructor (it connects only on start) takes the options and turns
    idempotence on, so a library upgrade renaming them fails here."""
    options = kafka_clients.producer_options(Settings(), acks=-1)
    assert options["acks"] == "all" and options["enable_idempotence"] is True

    async def build() -> aiokafka.AIOKafkaProducer:
        return kafka_clients.aio_producer(Settings(), acks=-1)

    aio = asyncio.run(build())
    assert aio._txn_manager is not None  # aiokafka's idempotent-producer state (None otherwise)


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate and key (generated now: no key is committed)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "client.pem", d / "client.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=test", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_one_verifying_context_for_kafka_python_and_aiokafka(client_cert: tuple[Path, Path]) -> None:
    cert, key = client_cert
    s = SASL.replace(
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_cafile=str(cert),
        kafka_ssl_certfile=str(cert),
        kafka_ssl_keyfile=str(key),
    )
    options = kafka_clients.connection_options(s)
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    # the brokers' certificates and names are verified, against the given CA only
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test"),),)]

    tls_only = kafka_clients.connection_options(
        Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(cert))
    )
    assert tls_only["security_protocol"] == "SSL" and isinstance(tls_only["ssl_context"], ssl.SSLContext)
    assert not {k for k in tls_only if k.startswith("sasl_")}


def faust_auth(settings: Settings) -> dict[str, Any]:
    """What Faust hands its aiokafka clients for these settings (Faust's own conversion)."""
    credentials = kafka_clients.faust_broker_options(settings).get("broker_credentials")
    return dict(credentials_to_aiokafka_auth(credentials))


def test_faust_gets_the_same_options_through_its_credentials(client_cert: tuple[Path, Path]) -> None:
    options = kafka_clients.faust_broker_options(SASL)
    assert options["broker"] == ["kafka://broker-1:9093", "kafka://broker-2:9093"]
    assert isinstance(options["broker_credentials"], faust.SASLCredentials)
    assert faust_auth(SASL) == {**SASL_FIELDS, "ssl_context": None}

    cert, _ = client_cert
    for protocol in ("SASL_SSL", "SSL"):
        s = SASL.replace(kafka_security_protocol=protocol, kafka_ssl_cafile=str(cert))
        auth, ours = faust_auth(s), kafka_clients.security_options(s)
        assert isinstance(auth.pop("ssl_context"), ssl.SSLContext)
        ours.pop("ssl_context")
        assert auth == ours  # protocol, mechanism, username, password: as kafka-python and aiokafka

    assert "broker_credentials" not in kafka_clients.faust_broker_options(Settings())  # PLAINTEXT


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"kafka_security_protocol": "SASL"}, "PAPEREC_KAFKA_SECURITY_PROTOCOL"),
        ({"kafka_sasl_mechanism": "PLAIN"}, "PAPEREC_KAFKA_SASL_MECHANISM"),
        ({"kafka_password": ""}, "PAPEREC_KAFKA_PASSWORD"),
        ({"kafka_username": ""}, "PAPEREC_KAFKA_USERNAME"),
        ({"kafka_ssl_certfile": "/c.pem"}, "PAPEREC_KAFKA_SSL_KEYFILE"),
        ({"kafka_ssl_cafile": "/ca.pem"}, "SASL_SSL"),  # TLS files, but no TLS protocol
    ],
)
def test_bad_security_settings_are_refused_by_name(changes: dict[str, str], named: str) -> None:
    s = SASL.replace(**changes)
    for build in (kafka_clients.connection_options, kafka_clients.faust_broker_options):
        with pytest.raises(ValueError, match=named):
            build(s)


def test_the_password_is_masked_and_comes_from_the_environment() -> None:
    s = Settings.from_env(
        {"PAPEREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "PAPEREC_KAFKA_PASSWORD": "from-env-secret"}
    )
    assert (s.kafka_security_protocol, s.kafka_password) == ("SASL_SSL", "from-env-secret")
    shown = s.public_dict()
    assert shown["kafka_password"] == "<set>" and "from-env-secret" not in str(shown)
    assert Settings().public_dict()["kafka_password"] == ""
    assert Settings().kafka_security_protocol == "PLAINTEXT"  # the default: local development


# ------------------------------------------------------------------------------ one place
CONSTRUCTORS = {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient", "AIOKafkaProducer", "AIOKafkaConsumer"}
CLIENT_PACKAGES = ("base", "learner", "streams", "actor_service", "paperec", "benchmarks", "simulator")


def bypasses(source: str) -> list[int]:
    """Lines that build a Kafka client with options of their own making: a constructor given
    ``bootstrap_servers``, or given no ``**options`` at all (only base/kafka.py may)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name not in CONSTRUCTORS:
            continue
        splat = any(k.arg is None for k in node.keywords)
        if not splat or any(k.arg == "bootstrap_servers" for k in node.keywords):
            lines.append(node.lineno)
    return lines


def test_no_client_is_built_around_base_kafka() -> None:
    found = {}
    for package in CLIENT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "base/kafka.py":
                continue
            lines = bypasses(path.read_text())
            if lines:
                found[rel] = lines
    assert found == {}, f"Kafka clients built around base/kafka.py (no SASL/TLS there): {found}"


def test_the_bypass_check_catches_a_bootstrap_string() -> None:
    assert bypasses("KafkaProducer(bootstrap_servers=b, acks='all')") == [1]
    assert bypasses("x = kafka.KafkaConsumer('t')") == [1]
    assert bypasses("KafkaProducer(**producer_config(settings))") == []


# ------------------------------------------------------------------------------ ACL plan
def test_acl_plan_least_privilege_per_principal() -> None:
    s = Settings(topic_prefix="p.")
    plan = {(e.role, e.resource, e.name, e.operation) for e in acl_plan(s)}
    by_role = {role: {(r, n, o) for rr, r, n, o in plan if rr == role} for role in ROLES}
    assert by_role[SERVING] == {
        ("topic", "p.impressions", "WRITE"),
        ("topic", "p.actor-snapshots", "READ"),
        ("topic", "p.rollout", "READ"),
    }
    # the rollout controller alone writes the control topic; nodes and the learner read it
    writers = {role for role, r, n, o in plan if n == "p.rollout" and o in ("WRITE", "ALL")}
    assert writers == {ROLLOUT}
    assert {role for role, r, n, o in plan if n == "p.rollout" and o == "READ"} == {SERVING, LEARNER, ROLLOUT}
    assert ("topic", "p.list-outcomes", "READ") in by_role[ROLLOUT]
    assert by_role[FEEDBACK] == {("topic", "p.clicks", "WRITE"), ("topic", "p.dwells", "WRITE")}
    # the learner alone writes snapshots
    writers = {role for role, r, n, o in plan if n == "p.actor-snapshots" and o in ("WRITE", "ALL")}
    assert writers == {LEARNER}
    assert ("group", "p.learner", "READ") in by_role[LEARNER]
    assert ("topic", "p.transitions", "READ") in by_role[LEARNER]
    # streams: reads the events, writes its own topics, in its own groups; creates nothing but
    # Faust's leader topics
    assert {("topic", f"p.{t}", "READ") for t in ("impressions", "clicks", "dwells")} <= by_role[STREAMS]
    assert not {
        (r, n, o) for r, n, o in by_role[STREAMS] if o == "WRITE" and n.endswith(("clicks", "impressions"))
    }
    assert {n for r, n, o in by_role[STREAMS] if o == "CREATE"} == {
        "p.streams-__assignor-__leader",
        "p.streams-link-__assignor-__leader",
    }
    assert {n for r, n, o in by_role[STREAMS] if r == "group"} == {"p.streams", "p.streams-link"}
    # nobody but the admin (a super user) gets cluster rights, ALL, or another prefix's topics
    assert all(r in ("topic", "group") and o != "ALL" and n.startswith("p.") for _, r, n, o in plan)


def test_credentials_files_and_broker_config(tmp_path: Path) -> None:
    path = tmp_path / "learner.env"
    path.write_text("\n".join(env_file_lines(LEARNER, "pw")) + "\n")
    env = read_env_file(path)
    assert Settings.from_env(env).kafka_username == username(LEARNER) == "paperec-learner"
    assert kafka_clients.connection_options(Settings.from_env(env))["sasl_plain_password"] == "pw"

    plain = (
        "listeners=PLAINTEXT://h:1,CONTROLLER://h:2\nadvertised.listeners=PLAINTEXT://h:1\n"
        "inter.broker.listener.name=PLAINTEXT\n"
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n"
    )
    text = secure_server_properties(
        plain,
        host="h",
        port=1,
        controller_port=2,
        admin_user="a",
        admin_password="x",
        controller_password="y",
    )
    assert "PLAINTEXT://" not in text.replace("SASL_PLAINTEXT://", "")  # no plaintext listener left
    assert "allow.everyone.if.no.acl.found=false" in text
    assert "super.users=User:a;User:paperec-controller" in text and "ANONYMOUS" not in text
