"""Shared by every test: the test suite runs on the dev stack, so services it starts (in process or
as subprocesses, which inherit the environment) may use the built-in snapshot HMAC key. Tests that
check the refusal of that key build their Settings explicitly, without dev mode."""

from __future__ import annotations

import os

os.environ.setdefault("PAPEREC_DEV_MODE", "1")
