#!/usr/bin/env bash
# Create .venv (if missing) and install paperec with its dev extras into it.
# Idempotent and cheap on reruns: the install is skipped while pyproject.toml is unchanged
# (its hash is kept in .venv) and the package is still importable.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.paperec-pyproject.sha256

if [[ ! -x $VENV/bin/python ]]; then
    command -v "$PYTHON" >/dev/null || { echo "bootstrap: $PYTHON not found (need Python >= 3.11)" >&2; exit 1; }
    echo "bootstrap: creating $VENV with $("$PYTHON" --version)"
    if ! "$PYTHON" -m venv "$VENV"; then
        rm -rf "$VENV"
        # Debian/Ubuntu split ensurepip out of the interpreter package.
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
            echo "bootstrap: installing python3-venv with apt-get"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
            "$PYTHON" -m venv "$VENV"
        else
            echo "bootstrap: '$PYTHON -m venv' failed; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2
            exit 1
        fi
    fi
fi

want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [[ $want == "$have" ]] && $VENV/bin/python -c 'import paperec' 2>/dev/null && [[ -x $VENV/bin/paperec ]]; then
    exit 0
fi
LOG=$VENV/.paperec-install.log
echo "bootstrap: installing paperec[dev] into $VENV (pyproject.toml changed or first run; log: $LOG)"
if ! $VENV/bin/python -m pip install --disable-pip-version-check -e '.[dev]' >"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    echo "bootstrap: pip install failed (full log: $LOG)" >&2
    exit 1
fi
echo "$want" >"$STAMP"
