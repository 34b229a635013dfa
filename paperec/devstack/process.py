"""Process plumbing shared by the dev-stack services: PID files, ports, start, readiness, stop.

Linux only (reads ``/proc``), like the rest of the dev stack. Each server runs detached in its
own session, so it outlives the ``paperec devstack up`` that started it and a Ctrl-C in the
terminal does not reach it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from base.settings import ENV_PREFIX, Settings

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.5
LOG_TAIL_LINES = 40


class DevstackError(RuntimeError):
    """A failure whose message is meant for the user; the CLI prints it without a traceback."""


@dataclass(frozen=True)
class Port:
    """One port a server binds, and the setting that moves it."""

    host: str
    port: int
    purpose: str  # e.g. "Kafka broker listener"
    setting: str  # Settings field name
    value_template: str = "{port}"  # how the setting spells a port, e.g. "127.0.0.1:{port}"

    def hint(self) -> str:
        env = ENV_PREFIX + self.setting.upper()
        flag = "--" + self.setting.replace("_", "-")
        example = self.value_template.format(port=free_port_near(self.host, self.port))
        return (
            f"port {self.port} on {self.host} ({self.purpose}) is already in use by another process. "
            f"Stop that process (`ss -ltnp 'sport = :{self.port}'` shows it) or choose another port: "
            f"set {env}={example} (or pass {flag} {example}) for every paperec command."
        )


# ------------------------------------------------------------------------------------ helpers
def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process (zombies count as dead)."""
    # Reap it if it happens to be our own child, else it would linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return _kill0(pid)
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in {"Z", "X"}


def _kill0(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pids_with_marker(marker: str) -> list[int]:
    """Live processes whose command line mentions ``marker`` (a path unique to one server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        if any(marker in arg for arg in cmdline(pid)) and pid_alive(pid):
            found.append(pid)
    return sorted(found)


def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def port_in_use(host: str, port: int) -> bool:
    """True if binding ``host:port`` fails, i.e. something (on that or a wildcard address) holds it."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Same option the servers set: a port in TIME_WAIT from our previous run is reusable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError:
            return True
    return False


def free_port_near(host: str, port: int) -> int:
    """A currently free port a little above ``port`` (only a suggestion for error messages)."""
    for candidate in range(port + 10000 if port < 50000 else port - 10000, 65536):
        if not port_in_use(host, candidate):
            return candidate
    return port


def tcp_accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def terminate(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait up to ``timeout`` for a clean shutdown, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if _wait_dead(pid, timeout):
        return
    log.warning("pid %d ignored SIGTERM for %.0f s; sending SIGKILL", pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_dead(pid, 10.0):
        raise DevstackError(f"pid {pid} survived SIGKILL")


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"  ({path} not found)"
    return "\n".join("  " + line for line in text.splitlines()[-lines:]) or f"  ({path} is empty)"


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Silence client libraries while polling a server that is not up yet (they log each refusal)."""
    loggers = [logging.getLogger(name) for name in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)


# ------------------------------------------------------------------------------------ service
class Service(ABC):
    """One server of the dev stack, with its state under ``<state_dir>/<name>/``."""

    name: str
    ready_timeout_s: float
    keep_on_wipe: tuple[str, ...] = ()  # entries of root that `down --wipe` keeps

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.state_path / self.name
        self.pid_file = self.root / f"{self.name}.pid"
        self.data_dir = self.root / "data"
        self.log_dir = self.root / "logs"
        self.config_dir = self.root / "config"
        self.stdout_log = self.log_dir / "stdout.log"

    # -- to implement
    @property
    @abstractmethod
    def address(self) -> str:
        """Human-readable address(es), for status lines."""

    @abstractmethod
    def ports(self) -> list[Port]:
        """Every port the server binds (all are checked before start)."""

    @abstractmethod
    def prepare(self) -> None:
        """Install or download what is missing, write configs, initialise storage."""

    @abstractmethod
    def command(self) -> list[str]:
        """The server's command line; must contain ``marker`` so orphans can be found."""

    @abstractmethod
    def probe(self) -> bool:
        """True if the server answers a real client request."""

    @property
    @abstractmethod
    def marker(self) -> str:
        """A string found only in this server's command line (its config path)."""

    def log_files(self) -> Sequence[Path]:
        return [self.stdout_log]

    # -- lifecycle
    def running_pid(self) -> int | None:
        """PID of this server if it runs: from the PID file, else found by its command line."""
        pid = self._pid_from_file()
        if pid is not None:
            return pid
        # The PID file can be gone (deleted state dir, crash between spawn and write): adopt the
        # server rather than starting a second one that would fail on its ports.
        orphans = pids_with_marker(self.marker)
        if orphans:
            self._write_pid(orphans[0])
            return orphans[0]
        return None

    def _pid_from_file(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        # A recycled PID belongs to some other program: only trust it if the command line matches.
        if pid_alive(pid) and any(self.marker in arg for arg in cmdline(pid)):
            return pid
        log.debug("%s: stale PID file %s (pid %d)", self.name, self.pid_file, pid)
        self.pid_file.unlink(missing_ok=True)
        return None

    def _write_pid(self, pid: int) -> None:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{pid}\n")

    def check_ports(self) -> None:
        for port in self.ports():
            if not is_loopback(port.host):
                raise DevstackError(
                    f"{self.name}: the dev stack only listens on loopback, but {port.purpose} is "
                    f"configured on {port.host!r} ({ENV_PREFIX}{port.setting.upper()}); "
                    "use 127.0.0.1, or point paperec at your own server and skip `devstack up`."
                )
            if port_in_use(port.host, port.port):
                raise DevstackError(f"{self.name}: {port.hint()}")

    def spawn(self) -> int:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        log.debug("%s: starting %s", self.name, " ".join(cmd))
        with self.stdout_log.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # detached: survives this CLI and the terminal's Ctrl-C
            )
        self._write_pid(proc.pid)
        return proc.pid

    def wait_ready(self, pid: int) -> None:
        """Poll until the server answers; on death or timeout stop it and show its logs."""
        started = time.monotonic()
        deadline = started + self.ready_timeout_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                self.pid_file.unlink(missing_ok=True)
                raise DevstackError(f"{self.name}: server exited during start-up.\n{self._logs()}")
            if self.probe():
                log.info(
                    "%s: up (pid %d, %s) after %.1f s",
                    self.name,
                    pid,
                    self.address,
                    time.monotonic() - started,
                )
                return
            time.sleep(POLL_INTERVAL_S)
        # A half-started server would block the next `up` on its ports: do not leave it behind.
        terminate(pid)
        self.pid_file.unlink(missing_ok=True)
        raise DevstackError(
            f"{self.name}: not answering after {self.ready_timeout_s:.0f} s; stopped it.\n{self._logs()}"
        )

    def _logs(self) -> str:
        return "\n".join(f"last lines of {path}:\n{tail(path)}" for path in self.log_files())

    def stop(self) -> bool:
        """Stop the server (and any orphan of it). Returns False if nothing was running."""
        pids = set(pids_with_marker(self.marker))
        pid = self._pid_from_file()
        if pid is not None:
            pids.add(pid)
        for p in sorted(pids):
            log.info("%s: stopping pid %d", self.name, p)
            terminate(p)
        self.pid_file.unlink(missing_ok=True)
        return bool(pids)

    def wipe(self) -> None:
        """Delete data, logs and configs (call after stop)."""
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.name in self.keep_on_wipe:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
