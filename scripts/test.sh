#!/usr/bin/env bash
# The project's test command: bootstrap, lint (full runs only), start the dev stack, provision
# topics and metric tables, run pytest (extra arguments are passed through), and always stop the
# stack again.
# Exits with pytest's exit code (or the first failing earlier step's).
#   bash scripts/test.sh                       # everything under tests/
#   bash scripts/test.sh tests/unit -k settings
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh

# A full run (no arguments, as CI calls it) lints first: ruff and mypy are part of the contract,
# and failing here costs seconds instead of a whole suite. `make test ARGS=...` skips it.
if [[ $# -eq 0 ]]; then
    bash scripts/lint.sh
    set -- tests
fi

# Services started by the tests may use the built-in snapshot key (they refuse it otherwise).
export PAPEREC_DEV_MODE=1

PAPEREC=.venv/bin/paperec
teardown() {
    echo "test.sh: stopping the dev stack"
    $PAPEREC devstack down || echo "test.sh: warning: 'paperec devstack down' failed" >&2
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

$PAPEREC devstack up
$PAPEREC topics create
$PAPEREC metrics init

status=0
.venv/bin/python -m pytest -q "$@" || status=$?
exit "$status"
