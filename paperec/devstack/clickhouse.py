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
from pathlib import Path
from xml.sax.saxutils import escape

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
        (self.config_dir / "users.xml").write_text(
            render_users(self.settings.clickhouse_user, self.settings.clickhouse_password)
        )

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
            user=self.settings.clickhouse_user,
            password=self.settings.clickhouse_password,
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


def render_users(user: str, password: str) -> str:
    # The user name becomes an XML element name.
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", user):
        raise DevstackError(
            f"clickhouse: user name {user!r} (PAPEREC_CLICKHOUSE_USER) must match [A-Za-z0-9_.-]+"
        )
    users = {"default": ""} if user != "default" else {}
    users[user] = password  # the configured user gets the configured password
    entries = "".join(
        f"""
        <{name}>
            <password>{escape(pw)}</password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </{name}>"""
        for name, pw in users.items()
    )
    return f"""\
<?xml version="1.0"?>
<!-- Written by `paperec devstack up`: loopback-only users, credentials from the settings. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
        </default>
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
