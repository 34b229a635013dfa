#!/usr/bin/env bash
# The project's lint: ruff (rules and formatting) and mypy, at the versions pinned in
# pyproject.toml. `make lint` runs it, and so does a full `make test` (before the dev stack starts).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy .
