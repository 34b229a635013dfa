"""ClickHouse server on loopback, with its own config, data and logs under the state dir.

The distro package's service start does not work in our containers (no init system), so the
server runs as a plain background process with a config written here; ``/etc`` is not touched.
The config opens only the native TCP and HTTP ports: the stock config's interserver port (9009)
and any TLS/MySQL ports are simply absent, so they cannot collide with anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from base.settings import ENV_PREFIX, Settings
from paperec.devstack.process import DevstackError, Port, Service, quiet_loggers, tail, tcp_accepts

log = logging.getLogger(__name__)

APT_PACKAGES = ["clickhouse-server", "clickhouse-client"]
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


class ClickHouse(Service):
    name = "clickhouse"
    ready_timeout_s = 60.0

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.xml"

    @property
    def marker(self) -> str:
        return str(self.config_file)

    @property
    def host(self) -> str:
        return self.settings.clickhouse_host

    @property
    def address(self) -> str:
        s = self.settings
        return f"{self.host}:{s.clickhouse_port} (http :{s.clickhouse_http_port})"

    def ports(self) -> list[Port]:
        s = self.settings
        return [
            Port(self.host, s.clickhouse_port, "ClickHouse native TCP", "clickhouse_port"),
            Port(self.host, s.clickhouse_http_port, "ClickHouse HTTP", "clickhouse_http_port"),
        ]

    def log_files(self) -> list[Path]:
        return [self.stdout_log, self.log_dir / "error.log"]

    # ------------------------------------------------------------------ prepare
    def prepare(self) -> None:
        if find_server() is None:
            self.install()
        self.write_config()

    def install(self) -> None:
        """apt-get install the distro's ClickHouse (Debian 12: 18.16.1)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        apt_log = self.log_dir / "apt.log"
        if shutil.which("apt-get") is None:
            raise DevstackError(
                "clickhouse: `clickhouse-server` is not installed and apt-get is not available to "
                "install it. Install ClickHouse so that `clickhouse-server` (or `clickhouse`) is on PATH "
                "(https://clickhouse.com/docs/install), or point PAPEREC_CLICKHOUSE_HOST/PORT at a "
                "running server and use `paperec devstack up --only kafka`."
            )
        if os.geteuid() != 0:
            raise DevstackError(
                "clickhouse: `clickhouse-server` is not installed and installing it needs root: run "
                f"`sudo apt-get install -y {' '.join(APT_PACKAGES)}`, then rerun `paperec devstack up`."
            )
        log.info(
            "clickhouse: installing %s with apt-get (one-time; log: %s)", " ".join(APT_PACKAGES), apt_log
        )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        with apt_log.open("w") as out, _no_service_autostart():
            for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "-q", *APT_PACKAGES]):
                out.write(f"$ {' '.join(cmd)}\n")
                out.flush()
                done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
                if done.returncode != 0:
                    raise DevstackError(
                        f"clickhouse: `{' '.join(cmd)}` failed (exit {done.returncode}):\n{tail(apt_log)}"
                    )
        if find_server() is None:
            raise DevstackError(f"clickhouse: installed {APT_PACKAGES} but found no server binary")

    def write_config(self) -> None:
        """(Re)write config.xml and users.xml from the current settings."""
        for d in (self.config_dir, self.data_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            render_config(
                host=self.host,
                tcp_port=self.settings.clickhouse_port,
                http_port=self.settings.clickhouse_http_port,
                data_dir=self.data_dir,
                log_dir=self.log_dir,
            )
        )
        users = self.config_dir / "users.xml"
        users.write_text(render_users(dev_users(self.settings), self.settings.clickhouse_database))
        users.chmod(0o600)  # it holds the passwords given by the environment

    # ------------------------------------------------------------------ run
    def command(self) -> list[str]:
        server = find_server()
        if server is None:
            raise DevstackError("clickhouse: server binary disappeared")
        return [*server, f"--config-file={self.config_file}"]

    def probe(self) -> bool:
        if not tcp_accepts(self.host, self.settings.clickhouse_port):
            return False
        from clickhouse_driver import Client  # deferred: keeps `devstack --help` fast

        client = Client(
            host=self.host,
            port=self.settings.clickhouse_port,
            user=self.settings.clickhouse_admin_user,
            password=self.settings.clickhouse_admin_password,
            connect_timeout=2,
            send_receive_timeout=5,
        )
        with quiet_loggers("clickhouse_driver"):
            try:
                return bool(client.execute("SELECT 1") == [(1,)])
            except Exception:
                return False
            finally:
                client.disconnect()


def find_server() -> list[str] | None:
    """The server command: Debian ships /usr/sbin/clickhouse-server (not on a user's PATH),
    upstream packages a multi-call `clickhouse` binary."""
    for name in ("clickhouse-server", "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"):
        path = shutil.which(name)
        if path:
            return [path]
    multi = shutil.which("clickhouse")
    return [multi, "server"] if multi else None


@contextlib.contextmanager
def _no_service_autostart() -> Iterator[None]:
    """Keep the package's postinst from starting a system ClickHouse on 9000/8123/9009.

    Its `invoke-rc.d clickhouse-server start` would either leave a second server running or,
    with no init system, fail the install. A policy-rc.d exiting 101 makes invoke-rc.d skip the
    start (what Docker images ship); it is only added if absent and removed afterwards.
    """
    if POLICY_RC_D.exists():
        yield
        return
    POLICY_RC_D.write_text("#!/bin/sh\n# temporary, by paperec devstack: no service starts\nexit 101\n")
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink(missing_ok=True)


def render_config(*, host: str, tcp_port: int, http_port: int, data_dir: Path, log_dir: Path) -> str:
    # Works with 18.16 (Debian 12) and current releases (which still accept the <yandex> root).
    return f"""\
<?xml version="1.0"?>
<!-- Written by `paperec devstack up` on every start; edit the settings, not this file. -->
<yandex>
    <logger>
        <level>information</level>
        <log>{log_dir}/server.log</log>
        <errorlog>{log_dir}/error.log</errorlog>
        <size>50M</size>
        <count>2</count>
    </logger>
    <!-- Only these two ports: no interserver_http_port (stock 9009), no TLS or MySQL ports. -->
    <listen_host>{escape(host)}</listen_host>
    <tcp_port>{tcp_port}</tcp_port>
    <http_port>{http_port}</http_port>
    <path>{data_dir}/</path>
    <tmp_path>{data_dir}/tmp/</tmp_path>
    <user_files_path>{data_dir}/user_files/</user_files_path>
    <format_schema_path>{data_dir}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <!-- Deterministic toDate()/toStartOfMinute() buckets whatever the machine's zone. -->
    <timezone>UTC</timezone>
    <max_concurrent_queries>100</max_concurrent_queries>
    <!-- Small caches (stock: 5 GiB marks, 8 GiB uncompressed): a dev server on a small box. -->
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mlock_executable>false</mlock_executable>
</yandex>
"""


@dataclass(frozen=True)
class DevUser:
    """One user of the dev server: its name, password and profile (what it may do)."""

    name: str
    password: str
    profile: str  # a key of PROFILES
    setting: str  # the setting that names it, for error messages


# What each kind of user may do, as users.xml profiles that ClickHouse 18.16 (Debian 12) and
# current releases read alike (no <constraints>, no <grants>: 18.16 rejects the first at login and
# has no access control for the second). Together with <allow_databases> (the metrics database;
# `system` stays readable) on the writer and the dashboard user:
# - admin: everything (the database, tables, migrations: `paperec metrics init`);
# - writer: INSERT and SELECT, no DDL (allow_ddl=0): the services;
# - dashboard: readonly=1, SELECT only: no INSERT, no DDL, no SET and no table functions such as
#   file() or url() (readonly=2 would allow those). `paperec dashboard` sends no settings with its
#   queries, so it runs under readonly=1; Grafana's plugin does (max_execution_time), which is why
#   the compose users file adds a constraint letting exactly that one change (deploy/clickhouse).
PROFILES: dict[str, str] = {
    "admin": "",
    "writer": "<allow_ddl>0</allow_ddl>",
    "dashboard": "<readonly>1</readonly>",
}
_ROLES = (  # most privileged first: a user named for several roles gets the first one's profile
    ("admin", "clickhouse_admin_user", "clickhouse_admin_password"),
    ("writer", "clickhouse_user", "clickhouse_password"),
    ("dashboard", "clickhouse_dashboard_user", "clickhouse_dashboard_password"),
)


def dev_users(settings: Settings) -> list[DevUser]:
    """The dev server's users, from the settings: one per distinct configured user name. With the
    defaults that is one, ``default`` without a password, for all three roles (loopback only:
    local development). Name three users (and give them passwords in the environment) to get
    three profiles, as a deployment has (docs/security.md)."""
    users: dict[str, DevUser] = {}
    for profile, user_field, password_field in _ROLES:
        name, password = getattr(settings, user_field), getattr(settings, password_field)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):  # it becomes an XML element name
            raise DevstackError(
                f"clickhouse: user name {name!r} ({ENV_PREFIX}{user_field.upper()}) must match "
                "[A-Za-z_][A-Za-z0-9_.-]*"
            )
        known = users.get(name)
        if known is None:
            users[name] = DevUser(name, password, profile, user_field)
        elif known.password != password:
            raise DevstackError(
                f"clickhouse: {ENV_PREFIX}{user_field.upper()} and {ENV_PREFIX}{known.setting.upper()} "
                f"name the same user {name!r} with different passwords"
            )
    return list(users.values())


def render_users(users: list[DevUser], database: str) -> str:
    # The passwords are plaintext in this file: it lives in the git-ignored state dir, mode 600,
    # and only ever holds what the environment gave (empty by default: loopback-only dev users).
    entries = "".join(
        f"""
        <{u.name}>
            <password>{escape(u.password)}</password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>{u.profile}</profile>
            <quota>default</quota>{_allow_database(u, database)}
        </{u.name}>"""
        for u in users
    )
    # Each profile inherits the server's default one (its memory limit), then restricts.
    profiles = "".join(
        f"""
        <{name}><profile>default</profile>{restrictions}</{name}>"""
        for name, restrictions in PROFILES.items()
    )
    return f"""\
<?xml version="1.0"?>
<!-- Written by `paperec devstack up`: loopback-only users, credentials from the settings. -->
<yandex>
    <profiles>
        <!-- the server's own default profile (config.xml <default_profile>) -->
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
        </default>{profiles}
    </profiles>
    <users>{entries}
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""


def _allow_database(user: DevUser, database: str) -> str:
    if user.profile == "admin":
        return ""
    return f"\n            <allow_databases><database>{escape(database)}</database></allow_databases>"
