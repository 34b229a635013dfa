#!/usr/bin/env bash
# Everything `make test` and `make demo` need besides Python 3.11+, on a bare Debian:
#   1. a headless Java runtime (17+: the Kafka broker) and Maven (fetches the broker's jars once),
#      installed from Debian packages with apt-get when missing: as root it installs them, otherwise
#      it stops with the `apt-get install` line to run (ClickHouse is installed the same way, by
#      `paperec devstack up`; see paperec/devstack/clickhouse.py);
#   2. .venv (python3-venv from apt-get likewise) with paperec and its dev extras.
# Idempotent and cheap on reruns: nothing is installed when present, and the pip install is
# skipped while pyproject.toml is unchanged (its hash is kept in .venv) and paperec still imports.
#
# Sourcing this file only defines the functions (tests/unit/test_bootstrap.py calls them with a
# PATH of its own and a stand-in apt-get); running it does the set-up.
set -euo pipefail

MIN_JAVA=17
# First one Debian offers wins: bookworm has 17 and 21, trixie 21 and 25; older releases
# (bullseye: only 11 and 17 from updates) are covered by 17. Not default-jre-headless: on
# bullseye and Ubuntu 22.04 that is Java 11, too old for Kafka 4.
JRE_PACKAGES=(openjdk-17-jre-headless openjdk-21-jre-headless openjdk-25-jre-headless)
JRE_FALLBACK=${JRE_PACKAGES[0]}  # named in messages when apt-cache cannot tell
MAVEN_PACKAGE=maven

# Slim Debian images drop /usr/share/man; the JRE's postinst links its man pages there and fails
# without the directory (debuerreotype/docker-debian-artifacts#24), so it is created first.
MAN1_DIR=/usr/share/man/man1

# The effective user id (a function, so a test can stand in for a user who is not root).
bootstrap_euid() {
    echo "$EUID"
}

# Major version of the `java` on PATH ("1.8.0_392" -> 8, "17.0.15" -> 17); empty when there is none
# or its `-version` output is unreadable.
java_major() {
    command -v java >/dev/null || return 0
    local out
    out=$(java -version 2>&1) || true
    if [[ $out =~ version\ \"1\.([0-9]+) ]]; then
        echo "${BASH_REMATCH[1]}"
    elif [[ $out =~ version\ \"([0-9]+) ]]; then
        echo "${BASH_REMATCH[1]}"
    fi
}

# The JRE package to install: the first of JRE_PACKAGES this machine's apt sources offer.
jre_package() {
    local pkg
    if command -v apt-cache >/dev/null; then
        for pkg in "${JRE_PACKAGES[@]}"; do
            if [[ $(apt-cache policy "$pkg" 2>/dev/null) =~ Candidate:\ [^\(] ]]; then
                echo "$pkg"
                return 0
            fi
        done
    fi
    echo "$JRE_FALLBACK"
}

# What is missing, one word a line: "java" (none, or older than MIN_JAVA) and/or "maven".
missing_tools() {
    local major
    major=$(java_major)
    if [[ -z $major ]] || ((major < MIN_JAVA)); then
        echo java
    fi
    command -v mvn >/dev/null || echo maven
}

# apt-get update (once per run: a fresh image has no package lists) and install "$@".
APT_UPDATED=0
apt_install() {
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/paperec-apt.XXXXXX")
    export DEBIAN_FRONTEND=noninteractive
    if ((APT_UPDATED == 0)); then
        apt-get update -q >"$log" 2>&1 || { tail -n 20 "$log" >&2; echo "bootstrap: apt-get update failed" >&2; return 1; }
        APT_UPDATED=1
    fi
    mkdir -p "$MAN1_DIR"
    if ! apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "bootstrap: apt-get install $* failed (log: $log)" >&2
        return 1
    fi
    rm -f "$log"
}

# Java 17+ and Maven on PATH, or status 1 with the command that installs them. Explicit returns
# throughout: a caller's `|| exit 1` switches off `set -e` inside the function.
ensure_java_maven() {
    local missing have pkg packages=()
    local why="the dev stack's Kafka broker needs Java $MIN_JAVA+ and Maven (to fetch its jars once)"
    missing=$(missing_tools)
    if [[ -z $missing ]]; then
        return 0
    fi
    if [[ $missing == *java* ]]; then
        have=$(java_major)
        if [[ -n $have ]]; then
            echo "bootstrap: $(command -v java) is Java $have, too old" >&2
        fi
        packages+=("$(jre_package)")
    fi
    if [[ $missing == *maven* ]]; then
        packages+=("$MAVEN_PACKAGE")
    fi
    if [[ $(bootstrap_euid) != 0 ]] || ! command -v apt-get >/dev/null; then
        local how="not running as root"
        command -v apt-get >/dev/null || how="apt-get is not available"
        echo "bootstrap: $why; missing: ${missing//$'\n'/, }. Not installing them ($how); run" >&2
        echo "    sudo apt-get install -y --no-install-recommends ${packages[*]}" >&2
        echo "  (or install Java $MIN_JAVA+ and Maven some other way, with java and mvn on PATH), then rerun." >&2
        return 1
    fi
    echo "bootstrap: $why; installing ${packages[*]} with apt-get (one-time)"
    apt_install "${packages[@]}" || return 1
    missing=$(missing_tools)
    if [[ -n $missing ]]; then
        echo "bootstrap: installed ${packages[*]}, but still missing: ${missing//$'\n'/, }" \
            "(java on PATH: $(command -v java || echo none))" >&2
        return 1
    fi
    for pkg in "${packages[@]}"; do
        echo "bootstrap: installed $pkg"
    done
    return 0
}

ensure_venv() {
    local python=${PYTHON:-python3} venv=.venv
    local stamp=$venv/.paperec-pyproject.sha256
    if [[ ! -x $venv/bin/python ]]; then
        command -v "$python" >/dev/null || { echo "bootstrap: $python not found (need Python >= 3.11)" >&2; exit 1; }
        echo "bootstrap: creating $venv with $("$python" --version)"
        if ! "$python" -m venv "$venv"; then
            rm -rf "$venv"
            # Debian/Ubuntu split ensurepip out of the interpreter package.
            if [[ $(bootstrap_euid) == 0 ]] && command -v apt-get >/dev/null; then
                echo "bootstrap: installing python3-venv with apt-get"
                apt_install python3-venv || exit 1
                "$python" -m venv "$venv"
            else
                echo "bootstrap: '$python -m venv' failed; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2
                exit 1
            fi
        fi
    fi

    local want have
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    have=$(cat "$stamp" 2>/dev/null || true)
    if [[ $want == "$have" ]] && $venv/bin/python -c 'import paperec' 2>/dev/null && [[ -x $venv/bin/paperec ]]; then
        return 0
    fi
    local log=$venv/.paperec-install.log
    echo "bootstrap: installing paperec[dev] into $venv (pyproject.toml changed or first run; log: $log)"
    if ! $venv/bin/python -m pip install --disable-pip-version-check -e '.[dev]' >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "bootstrap: pip install failed (full log: $log)" >&2
        exit 1
    fi
    echo "$want" >"$stamp"
}

main() {
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    ensure_java_maven || exit 1
    ensure_venv
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
