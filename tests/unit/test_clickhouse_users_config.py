"""The ClickHouse users (docs/security.md) as configured, without a server: the dev stack's users
file from the settings (paperec/devstack/clickhouse.py) and the compose deployment's
(deploy/clickhouse/users.d/paperec.xml) give the same users the same restrictions, and no
password is ever in the repository or in printed settings. tests/integration/test_clickhouse_users.py
runs the dev stack's file on a real server."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import pytest

from base.metrics_store import credentials
from base.settings import Settings
from paperec.devstack.clickhouse import PROFILES, dev_users, render_users
from paperec.devstack.process import DevstackError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_USERS = ROOT / "deploy/clickhouse/users.d/paperec.xml"
THREE = Settings(
    clickhouse_admin_user="paperec_admin",
    clickhouse_admin_password="pa",
    clickhouse_user="paperec_writer",
    clickhouse_password="pw",
    clickhouse_dashboard_user="paperec_dashboard",
    clickhouse_dashboard_password="pd",
)


def _profile_settings(profile: ElementTree.Element) -> dict[str, str]:
    """A profile's plain settings (not inheritance, not constraints)."""
    return {e.tag: (e.text or "") for e in profile if e.tag not in {"profile", "constraints"}}


def test_each_command_uses_its_own_user() -> None:
    assert credentials(THREE, "writer") == ("paperec_writer", "pw")
    assert credentials(THREE, "dashboard") == ("paperec_dashboard", "pd")
    assert credentials(THREE, "admin") == ("paperec_admin", "pa")


def test_the_passwords_are_masked_in_printed_settings() -> None:
    shown = THREE.public_dict()
    for field in ("clickhouse_password", "clickhouse_dashboard_password", "clickhouse_admin_password"):
        assert shown[field] == "<set>", field
    assert shown["clickhouse_dashboard_user"] == "paperec_dashboard"
    assert Settings().public_dict()["clickhouse_admin_password"] == ""  # unset stays visibly unset


def test_by_default_the_dev_stack_has_one_user_for_every_role() -> None:
    (user,) = dev_users(Settings())
    assert (user.name, user.password, user.profile) == ("default", "", "admin")


def test_three_named_users_get_three_profiles() -> None:
    users = {u.name: u for u in dev_users(THREE)}
    assert {n: (u.profile, u.password) for n, u in users.items()} == {
        "paperec_admin": ("admin", "pa"),
        "paperec_writer": ("writer", "pw"),
        "paperec_dashboard": ("dashboard", "pd"),
    }
    root = ElementTree.fromstring(render_users(dev_users(THREE), "metrics"))
    for name in ("paperec_writer", "paperec_dashboard"):
        user = root.find(f"users/{name}")
        assert user is not None
        assert [d.text for d in user.iterfind("allow_databases/database")] == ["metrics"]
        assert [ip.text for ip in user.iterfind("networks/ip")] == ["127.0.0.1", "::1"]
    assert root.find("users/paperec_admin/allow_databases") is None
    assert root.findtext("users/paperec_writer/password") == "pw"


def test_a_user_named_for_two_roles_keeps_the_stronger_profile() -> None:
    shared = THREE.replace(clickhouse_dashboard_user="paperec_writer", clickhouse_dashboard_password="pw")
    assert [(u.name, u.profile) for u in dev_users(shared)] == [
        ("paperec_admin", "admin"),
        ("paperec_writer", "writer"),
    ]


def test_conflicting_or_unsafe_user_settings_are_refused() -> None:
    with pytest.raises(DevstackError, match="different passwords"):
        dev_users(THREE.replace(clickhouse_dashboard_user="paperec_writer"))
    with pytest.raises(DevstackError, match="PAPEREC_CLICKHOUSE_DASHBOARD_USER"):
        dev_users(THREE.replace(clickhouse_dashboard_user="x><admin"))


def test_passwords_are_escaped_in_the_users_file() -> None:
    root = ElementTree.fromstring(render_users(dev_users(THREE.replace(clickhouse_password="a<b&c")), "m"))
    assert root.findtext("users/paperec_writer/password") == "a<b&c"


def test_the_deployment_users_match_the_dev_stack_profiles() -> None:
    root = ElementTree.parse(DEPLOY_USERS).getroot()
    dev = ElementTree.fromstring(render_users(dev_users(THREE), "paperec"))
    for role in ("writer", "dashboard"):
        name = f"paperec_{role}"
        user = root.find(f"users/{name}")
        assert user is not None, name
        deployed = root.find(f"profiles/{user.findtext('profile')}")
        assert deployed is not None, name
        # the same restrictions as the dev stack (which the integration test runs)
        dev_profile = dev.find(f"profiles/{role}")
        assert dev_profile is not None and PROFILES[role]
        assert _profile_settings(deployed) == _profile_settings(dev_profile), name
        # ClickHouse refuses <grants> next to <allow_databases> on one user (restart loop)
        assert user.find("grants") is None or user.find("allow_databases") is None, name
        assert [q.text for q in user.iterfind("grants/query")] == [
            {"writer": "GRANT SELECT, INSERT ON paperec.*", "dashboard": "GRANT SELECT ON paperec.*"}[role]
        ]
    dashboard = root.find("profiles/paperec_dashboard")
    assert dashboard is not None
    # readonly=1 with the one setting Grafana's plugin sends made changeable, nothing else
    assert [c.tag for c in dashboard.iterfind("constraints/*")] == ["max_execution_time"]
    assert dashboard.find("constraints/max_execution_time/changeable_in_readonly") is not None
    assert "readonly" not in {c.tag for c in dashboard.iterfind("constraints/*")}


def test_no_password_is_written_in_the_deployment_users_file() -> None:
    root = ElementTree.parse(DEPLOY_USERS).getroot()
    passwords = list(root.iter("password")) + list(root.iter("password_sha256_hex"))
    assert len(passwords) == 2
    for pw in passwords:
        assert not (pw.text or "").strip(), "a password literal in deploy/clickhouse/users.d"
        assert pw.get("from_env", "").startswith("PAPEREC_CLICKHOUSE_"), pw.attrib
