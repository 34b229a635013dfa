"""Packaging that runs, checked without a container engine.

1. The wheel, built from exactly the sources the Dockerfile copies, holds every package and data
   file of the repository, installs into a fresh virtual environment, and every ``paperec``
   subcommand imports (from that install, not the checkout) and answers ``--help`` from outside
   the repository.
2. The services run as in the image: that install made read-only (the code directory), a
   read-only working directory, a non-root user (``nobody`` when the tests run as root), and the
   state under an absolute ``PAPEREC_STATE_DIR``: the serving node stores its snapshot, the
   learner locks its checkpoint directory and the streams worker creates its table directory
   there, and nothing is written anywhere else.

Dependencies come from the test's own virtual environment through a ``.pth`` file, so nothing
is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from actor_service.devtools import SnapshotPublisher, free_port, make_model, snapshot_record
from base.settings import Settings
from base.topics import create_topics
from paperec.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
# Top-level packages of the repository that are not part of the product.
NOT_SHIPPED = {"tests", "benchmarks"}
NOBODY = 65534  # the unprivileged uid/gid the services run as when the tests run as root
STARTUP_TIMEOUT_S = 75.0


def dockerfile_sources() -> list[str]:
    """The build context paths the Dockerfile copies (``COPY src... dest``, not ``--from``)."""
    out: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            out += [w for w in words[1:-1] if not w.startswith("--")]
    return out


def shipped_packages() -> set[str]:
    return {p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in NOT_SHIPPED}


def package_files(package: str) -> list[str]:
    """The package's files as a checkout has them (tracked or new, never ignored ones)."""
    done = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", package],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    # a file deleted in the working tree but still in the index is not in the build context
    return [f for f in done.stdout.split() if (ROOT / f).is_file()]


@dataclass
class Install:
    root: Path
    wheel: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def site(self) -> Path:
        return (
            self.venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        )


def _runnable_by_anyone(path: Path) -> bool:
    """Every directory above ``path`` and ``path`` itself are executable by others."""
    real = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in (real, *real.parents))


def base_interpreter() -> Path:
    """The interpreter of the fresh environment: this one's base, or, when the service user
    could not run it (e.g. a pyenv under root's private home), the system's of the same minor
    version (same ABI, so the compiled dependencies load)."""
    mine = Path(getattr(sys, "_base_executable", sys.executable))
    if os.geteuid() != 0 or _runnable_by_anyone(mine):
        return mine
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if system.exists() and _runnable_by_anyone(system):
        return system
    pytest.fail(f"no Python {sys.version_info[:2]} that uid {NOBODY} can run ({mine} is private)")


@contextmanager
def _searchable_by_anyone(path: Path) -> Iterator[None]:
    """As root, give others the search bit (x, not r) on ``path``'s directories that lack it, until
    the end: the services run as another user and import this environment's dependencies
    (through the .pth below), and a checkout under ``mktemp -d`` is 0700 (the README's fresh-clone
    check found it: ``No module named 'uvicorn'``). The modes are put back afterwards."""
    changed: list[tuple[Path, int]] = []
    if os.geteuid() == 0:
        for d in (path, *path.parents):
            mode = stat.S_IMODE(d.stat().st_mode)
            if not mode & stat.S_IXOTH:
                d.chmod(mode | stat.S_IXOTH)
                changed.append((d, mode))
    try:
        yield
    finally:
        for d, mode in reversed(changed):
            d.chmod(mode)


def _chmod_tree(top: Path, *, writable: bool) -> None:
    for path in [top, *top.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _tree(top: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(top)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in top.rglob("*")}


@pytest.fixture(scope="module")
def install() -> Iterator[Install]:
    # Not under pytest's tmp_path: its directories are private (0700), and the services run as
    # another user below.
    root = Path(tempfile.mkdtemp(prefix="paperec-packaging-"))
    root.chmod(0o755)
    venv = root / "venv"
    try:
        src = root / "src"
        src.mkdir()
        for name in dockerfile_sources():
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(ROOT / name, src / name)
        # The installed build backend (setuptools, wheel) builds it: no isolation, no index.
        build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        subprocess.run([*build, "--wheel-dir", str(root / "dist"), str(src)], check=True, capture_output=True)
        (wheel,) = (root / "dist").glob("paperec-*.whl")
        subprocess.run([str(base_interpreter()), "-m", "venv", "--without-pip", str(venv)], check=True)
        inst = Install(root, wheel, venv)
        # dependencies: this environment's site-packages, after the new one's (whose paperec wins)
        (inst.site / "zz_paperec_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        pip = [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(inst.python),
            "install",
            "--no-deps",
            "--no-index",
        ]
        subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
        _chmod_tree(venv, writable=False)  # the code directory, read-only as in the image
        with _searchable_by_anyone(Path(sysconfig.get_paths()["purelib"])):
            yield inst
    finally:
        if venv.exists():
            _chmod_tree(venv, writable=True)
        shutil.rmtree(root, ignore_errors=True)


# Run by the installed interpreter: every subcommand's module imports from the install and
# answers --help. One process, so torch is imported once.
PROBE = """
import contextlib, io, json, sys
from paperec.cli import COMMANDS, build_parser, command
out = {}
for name, (module, _) in COMMANDS.items():
    mod = command(module)
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
        build_parser([name]).parse_args([name, "--help"])
    out[name] = {"file": mod.__file__, "help": help_text.getvalue()}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_wheel_holds_every_package_and_runs_every_subcommand(install: Install, tmp_path: Path) -> None:
    packages = shipped_packages()
    assert packages == {
        "base",
        "model",
        "schemas",
        "streams",
        "learner",
        "actor_service",
        "rollout",
        "simulator",
        "paperec",
    }
    assert packages <= set(dockerfile_sources()), "the Dockerfile does not copy every package"
    names = set(zipfile.ZipFile(install.wheel).namelist())
    missing = [f for p in sorted(packages) for f in package_files(p) if f not in names]
    assert not missing, f"not in the wheel: {missing}"

    outside = tmp_path / "elsewhere"  # not the checkout: nothing imports from the repository
    outside.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(outside)}
    done = subprocess.run(
        [str(install.venv / "bin" / "paperec"), "--help"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in COMMANDS)

    done = subprocess.run(
        [str(install.python), "-c", PROBE], cwd=outside, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert set(result) == set(COMMANDS)
    for name, got in result.items():
        assert Path(got["file"]).is_relative_to(install.site), (name, got["file"])
        assert f"usage: paperec {name}" in got["help"] and "--state-dir" in got["help"], name


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ready: Path  # what the service creates under the state directory once it runs

    def text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def work() -> Iterator[Path]:
    """A temporary directory others can enter (pytest's tmp_path is private to its user)."""
    path = Path(tempfile.mkdtemp(prefix="paperec-readonly-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for sub in path.rglob("*"):  # the read-only working directory, made writable to remove
            if sub.is_dir() and not sub.is_symlink():
                sub.chmod(0o755)
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_services_run_as_non_root_on_read_only_code_with_state_in_state_dir(
    install: Install, settings: Settings, unique_prefix: str, work: Path
) -> None:
    s = settings.replace(topic_prefix=unique_prefix, dev_mode=True)
    assert create_topics(s) == []
    # A signed snapshot on the topic: the node verifies it and keeps a copy in its state.
    publisher = SnapshotPublisher(s)
    try:
        publisher.publish(snapshot_record(make_model(1), 1, s))
    finally:
        publisher.close()

    as_root = os.geteuid() == 0
    state, cwd, logs = work / "state", work / "cwd", work / "logs"
    for d in (state, cwd, logs):
        d.mkdir()
    if as_root:
        os.chown(state, NOBODY, NOBODY)
    cwd.chmod(0o555)  # the working directory is not writable either (the image's /app was not)
    code_before = _tree(install.venv)
    env = {
        **{k: v for k, v in os.environ.items() if k.startswith("PAPEREC_")},
        "PATH": os.environ["PATH"],
        "HOME": str(state),
        "PAPEREC_STATE_DIR": str(state),
        "PAPEREC_TOPIC_PREFIX": unique_prefix,
        "PAPEREC_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "PAPEREC_DEV_MODE": "1",
        "PAPEREC_SERVE_METRICS_CLICKHOUSE": "false",
        "PAPEREC_STREAMS_METRICS_CLICKHOUSE": "false",
    }
    prefix_dir = unique_prefix.strip(".")
    commands = {
        "serve": (
            ["serve", "--port", str(free_port()), "--serve-node-id", "ro-node"],
            state / "serve" / prefix_dir / "ro-node" / "latest.snapshot",
        ),
        "learner": (["learner"], state / "learner" / prefix_dir / ".lock"),
        "streams": (["streams", "--quiet"], state / "streams" / s.streams_app_id),
    }
    user = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if as_root else {}
    services: list[Service] = []
    try:
        for name, (argv, ready) in commands.items():
            log = logs / f"{name}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [str(install.venv / "bin" / "paperec"), *argv],
                    cwd=cwd,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    **user,  # type: ignore[call-overload]
                )
            services.append(Service(name, proc, log, ready))
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        pending = list(services)
        while pending:
            for svc in list(pending):
                assert svc.proc.poll() is None, f"{svc.name} exited ({svc.proc.returncode}):\n{svc.text()}"
                if svc.ready.exists():
                    pending.remove(svc)
            assert time.monotonic() < deadline, (
                f"never created {[str(p.ready) for p in pending]}:\n"
                + "\n".join(f"--- {p.name}\n{p.text()}" for p in pending)
            )
            time.sleep(0.5)
    finally:
        for svc in services:
            svc.proc.send_signal(signal.SIGTERM)
        for svc in services:
            try:
                svc.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                svc.proc.kill()
                svc.proc.wait()
    assert _tree(install.venv) == code_before, "a service wrote into the code directory"
    assert not any(cwd.iterdir()), "a service wrote into its working directory"
    if as_root:  # everything the services made is theirs: they ran as nobody
        foreign = [p for p in state.rglob("*") if p.lstat().st_uid != NOBODY]
        assert not foreign, foreign
