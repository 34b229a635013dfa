"""base/kafka_acls.py: the ACL plan names the principals of the settings; ``paperec topics
acl-plan`` prints it; and the SASL password can come from a file (kafka_password_file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from base import kafka as kafka_clients
from base.kafka_acls import ADMIN, ADMIN_PRINCIPAL, REPLAY, ROLES, SERVICE_ROLES, acl_plan, principal
from base.settings import Settings
from paperec.cli import main


def test_principals_come_from_the_settings_with_todays_names_as_defaults() -> None:
    assert {r: principal(Settings(), r) for r in ROLES} == {r: f"paperec-{r}" for r in ROLES}
    assert principal(Settings(), ADMIN) == ADMIN_PRINCIPAL
    s = Settings(topic_prefix="p.", kafka_learner_principal="svc-learner", kafka_serving_principal="svc-rank")
    plan = acl_plan(s)
    writers = {e.principal for e in plan if e.name == "p.actor-snapshots" and e.operation == "WRITE"}
    assert writers == {"svc-learner"}
    assert {e.principal for e in plan if e.role == "serving"} == {"svc-rank"}
    # every entry names its role's principal, and every service role has some
    assert all(e.principal == principal(s, e.role) for e in plan)
    assert {e.role for e in plan} == set(SERVICE_ROLES)
    with pytest.raises(ValueError, match="unknown Kafka role"):
        principal(s, "operator")


def test_recorded_traffic_writes_the_three_events_and_nothing_else() -> None:
    replay = {
        (e.resource, e.name, e.operation) for e in acl_plan(Settings(topic_prefix="p.")) if e.role == REPLAY
    }
    assert replay == {("topic", f"p.{t}", "WRITE") for t in ("impressions", "clicks", "dwells")}


def test_topics_acl_plan_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["topics", "acl-plan", "--topic-prefix", "q.", "--kafka-feedback-principal", "app-clients"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "User:app-clients\tWRITE\ttopic:q.clicks" in lines
    assert "User:paperec-learner\tWRITE\ttopic:q.actor-snapshots" in lines
    assert len(lines) == len(acl_plan(Settings(topic_prefix="q.")))


SASL = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_username="paperec-learner")


def test_the_password_can_come_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "kafka-password"
    path.write_text("from-the-file\nsecond line ignored\n")
    s = SASL.replace(kafka_password_file=str(path))
    kafka_clients.check_security(s)  # a file is a password
    assert kafka_clients.connection_options(s)["sasl_plain_password"] == "from-the-file"
    faust_auth = kafka_clients.faust_broker_options(s)["broker_credentials"]
    assert faust_auth.password == "from-the-file"
    # a path is no secret: public_dict shows it; the password itself is never there
    assert s.public_dict()["kafka_password_file"] == str(path)
    assert "from-the-file" not in str(s.public_dict())
    assert (
        Settings.from_env({"PAPEREC_KAFKA_PASSWORD_FILE": str(path)}).kafka_sasl_password() == "from-the-file"
    )


@pytest.mark.parametrize(
    ("password", "content", "error"),
    [
        ("also-given", "from-the-file", "not both"),
        ("", "", "holds no password"),
        ("", None, "cannot read"),
    ],
)
def test_a_bad_password_file_is_refused_before_connecting(
    tmp_path: Path, password: str, content: str | None, error: str
) -> None:
    path = tmp_path / "kafka-password"
    if content is not None:
        path.write_text(content)
    s = SASL.replace(kafka_password=password, kafka_password_file=str(path))
    with pytest.raises(ValueError, match=error):
        kafka_clients.check_security(s)
    with pytest.raises(ValueError, match="PAPEREC_KAFKA_PASSWORD_FILE"):
        s.kafka_sasl_password()
