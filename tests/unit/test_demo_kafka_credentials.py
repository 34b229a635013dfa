"""``paperec demo`` on a secured dev broker: the run's prefix is granted the ACLs, the demo process
acts as the admin, and each service it starts gets only its own role's credentials."""

from __future__ import annotations

import secrets
from pathlib import Path

from base.kafka_acls import ADMIN, LEARNER, ROLLOUT, SERVING, STREAMS
from base.settings import Settings
from paperec.demo import DemoOptions, demo_services, secure_demo

ROLE_OF = {"streams": STREAMS, "learner": LEARNER, "actor-1": SERVING, "actor-2": SERVING, "rollout": ROLLOUT}
OPTS = DemoOptions(10.0, 20, 2, 0, None, None, Path("out"), False)


def role_env(role: str, password: str) -> dict[str, str]:
    return {
        "PAPEREC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "PAPEREC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "PAPEREC_KAFKA_USERNAME": f"paperec-{role}",
        "PAPEREC_KAFKA_PASSWORD": password,
    }


class FakeDevKafka:
    """Stands in for paperec.devstack.kafka.Kafka: credentials per role, ACL grants recorded."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.passwords = {r: secrets.token_hex(8) for r in (ADMIN, SERVING, STREAMS, LEARNER, ROLLOUT)}
        self.granted: list[str] = []

    def apply_acls(self) -> int:
        self.granted.append(self.settings.topic_prefix)
        return 31

    def credentials(self, role: str) -> dict[str, str]:
        return role_env(role, self.passwords[role])

    def client_settings(self, role: str) -> Settings:
        env = self.credentials(role)
        return self.settings.replace(
            kafka_username=env["PAPEREC_KAFKA_USERNAME"], kafka_password=env["PAPEREC_KAFKA_PASSWORD"]
        )


def test_each_service_gets_its_own_principal_on_a_secured_dev_broker(tmp_path: Path) -> None:
    settings = Settings(kafka_security_protocol="SASL_PLAINTEXT", topic_prefix="paperec.demo-x.")
    kafka = FakeDevKafka(settings)
    admin, credentials = secure_demo(settings, kafka)
    assert kafka.granted == ["paperec.demo-x."]  # the run's own prefix
    assert admin.kafka_username == "paperec-admin" and admin.topic_prefix == "paperec.demo-x."
    assert credentials is not None and set(credentials) == {SERVING, STREAMS, LEARNER, ROLLOUT}  # no admin

    services, _ = demo_services(admin, OPTS, tmp_path / "logs", kafka_credentials=credentials)
    assert {s.name for s in services} == set(ROLE_OF)
    for svc in services:
        role = ROLE_OF[svc.name]
        assert svc.env["PAPEREC_KAFKA_USERNAME"] == f"paperec-{role}", svc.name
        assert svc.env["PAPEREC_KAFKA_PASSWORD"] == kafka.passwords[role], svc.name
        assert kafka.passwords[ADMIN] not in svc.env.values(), f"{svc.name} got the admin's password"
        assert svc.env["PAPEREC_KAFKA_PASSWORD_FILE"] == ""  # an inherited file must not win
        assert svc.env["PAPEREC_TOPIC_PREFIX"] == "paperec.demo-x."
        # the streams principal may not create topics: the demo (admin) created them
        assert (svc.env.get("PAPEREC_STREAMS_CREATE_TOPICS") == "false") == (role == STREAMS), svc.name
        # and the settings each service builds from that environment are a complete SASL login
        child = Settings.from_env(dict(svc.env))
        assert (child.kafka_username, child.kafka_sasl_password()) == (
            f"paperec-{role}",
            kafka.passwords[role],
        )


def test_a_plaintext_dev_broker_gets_no_credentials(tmp_path: Path) -> None:
    settings = Settings(topic_prefix="paperec.demo-y.")
    kafka = FakeDevKafka(settings)
    same, credentials = secure_demo(settings, kafka)
    assert (same, credentials, kafka.granted) == (settings, None, [])
    services, _ = demo_services(same, OPTS, tmp_path / "logs")
    assert not any(k.startswith("PAPEREC_KAFKA_") for s in services for k in s.env)
