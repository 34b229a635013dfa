"""scripts/bootstrap.sh finds a missing or too old Java and a missing Maven, names the Debian
packages to install when it may not install them (not root, or no apt-get), and installs them
with apt-get when it may. Its functions run in bash with a PATH of the test's own: stand-in
``java``, ``mvn``, ``apt-cache`` and ``apt-get`` scripts (nothing is really installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bootstrap.sh"
BASH = shutil.which("bash") or "/bin/bash"
TOOLS = ("mktemp", "tail", "rm", "mkdir")  # what apt_install runs besides apt-get


class Machine:
    """A bin directory standing in for PATH, and a record of what apt-get was asked to do."""

    def __init__(self, tmp: Path) -> None:
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.apt_log = tmp / "apt-get.log"
        self.man1 = tmp / "man" / "man1"
        for tool in TOOLS:
            found = shutil.which(tool)
            assert found, tool
            (self.bin / tool).symlink_to(found)

    def script(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(f"#!{BASH}\n{body}\n")
        path.chmod(0o755)

    def java(self, version_line: str) -> None:
        self.script("java", f"echo '{version_line}' >&2")  # `java -version` writes to stderr

    def mvn(self) -> None:
        self.script("mvn", "echo 'Apache Maven 3.8.7'")

    def apt_cache(self, *offered: str) -> None:
        """``apt-cache policy PKG``: an install candidate for ``offered`` packages only."""
        cases = " ".join(offered)
        self.script(
            "apt-cache",
            f'echo "$2:"; if [[ " {cases} " == *" $2 "* ]]; then echo "  Candidate: 1.0"; '
            'else echo "  Candidate: (none)"; fi',
        )

    def apt_get(self, installs: bool = True) -> None:
        """Records its arguments; ``install`` puts Java 17 and Maven on PATH when ``installs``."""
        pool = self.bin.parent / "pool"  # what the "packages" install
        pool.mkdir()
        for name, body in (("java", "echo 'openjdk version \"17.0.15\"' >&2"), ("mvn", "echo mvn")):
            (pool / name).write_text(f"#!{BASH}\n{body}\n")
            (pool / name).chmod(0o755)
        cp = f"{shutil.which('cp')} -p {pool}/java {pool}/mvn {self.bin}/" if installs else ":"
        self.script("apt-get", f'echo "$*" >> {self.apt_log}; if [[ $1 == install ]]; then {cp}; fi')

    def run(self, call: str, root: bool = True) -> subprocess.CompletedProcess[str]:
        """``call`` after sourcing the script, as root or as a user who is not."""
        # The user is whoever the test says, whoever runs the tests: bootstrap_euid is overridden.
        euid = 0 if root else 1000
        line = f'source "{SCRIPT}"; MAN1_DIR="{self.man1}"; bootstrap_euid() {{ echo {euid}; }}; {call}'
        env = {"PATH": str(self.bin), "HOME": str(self.bin.parent), "TMPDIR": str(self.bin.parent)}
        return subprocess.run([BASH, "-c", line], env=env, capture_output=True, text=True, timeout=30)

    def apt_calls(self) -> list[str]:
        return self.apt_log.read_text().splitlines() if self.apt_log.exists() else []


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


@pytest.mark.parametrize(
    ("version_line", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', "17"),
        ('openjdk version "21" 2023-09-19', "21"),
        ('java version "1.8.0_392"', "8"),
        ('openjdk version "11.0.22" 2024-01-16', "11"),
        ('Picked up JAVA_TOOL_OPTIONS: -Xmx1g\nopenjdk version "25" 2025-09-16', "25"),
        ("no version here", ""),
    ],
)
def test_java_major_reads_the_version_line(machine: Machine, version_line: str, major: str) -> None:
    machine.java(version_line)
    assert machine.run("java_major").stdout.strip() == major


def test_not_root_without_java_or_maven_names_the_packages_and_installs_nothing(machine: Machine) -> None:
    machine.apt_cache("openjdk-17-jre-headless", "openjdk-21-jre-headless")
    machine.apt_get()
    done = machine.run("ensure_java_maven", root=False)
    assert done.returncode == 1
    assert "missing: java, maven" in done.stderr
    assert "not running as root" in done.stderr
    assert "sudo apt-get install -y --no-install-recommends openjdk-17-jre-headless maven" in done.stderr
    assert machine.apt_calls() == []


def test_a_too_old_java_is_named_and_only_the_jre_is_asked_for(machine: Machine) -> None:
    machine.java('openjdk version "11.0.22" 2024-01-16')
    machine.mvn()  # no apt-cache: the message falls back to the Java 17 package
    done = machine.run("ensure_java_maven", root=False)
    assert done.returncode == 1
    assert "is Java 11, too old" in done.stderr and "missing: java." in done.stderr
    assert "--no-install-recommends openjdk-17-jre-headless\n" in done.stderr


def test_root_without_apt_get_says_so(machine: Machine) -> None:
    done = machine.run("ensure_java_maven")
    assert done.returncode == 1
    assert "apt-get is not available" in done.stderr and "openjdk-17-jre-headless maven" in done.stderr


def test_present_tools_need_nothing(machine: Machine) -> None:
    machine.java('openjdk version "17.0.15" 2025-04-15')
    machine.mvn()
    machine.apt_get()
    done = machine.run("ensure_java_maven; echo status=$?")
    assert done.stdout.strip() == "status=0" and done.stderr == ""
    assert machine.apt_calls() == []


def test_as_root_it_installs_the_first_offered_jre_and_maven_with_apt_get(machine: Machine) -> None:
    machine.apt_cache("openjdk-21-jre-headless", "openjdk-25-jre-headless")  # as on Debian 13
    machine.apt_get()
    done = machine.run("ensure_java_maven")
    assert done.returncode == 0, done.stderr
    assert machine.apt_calls() == [
        "update -q",
        "install -y -q --no-install-recommends openjdk-21-jre-headless maven",
    ]
    assert machine.man1.is_dir()  # the JRE's postinst needs it on slim images
    assert "installed openjdk-21-jre-headless" in done.stdout and "installed maven" in done.stdout
    assert machine.run("missing_tools").stdout == ""


def test_an_install_that_leaves_java_missing_fails(machine: Machine) -> None:
    machine.apt_cache("openjdk-17-jre-headless")
    machine.apt_get(installs=False)
    done = machine.run("ensure_java_maven")
    assert done.returncode == 1
    assert "still missing: java, maven" in done.stderr
