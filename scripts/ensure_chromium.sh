#!/usr/bin/env bash
# Make sure headless Chromium is installed (the dashboard's browser test screenshots the page
# with it). Idempotent: does nothing when it is already there. Installs Debian's `chromium`
# package with apt-get (needs root); fonts-dejavu-core so the page's text has glyphs.
# Exits non-zero when Chromium is still missing afterwards, so callers fail instead of skipping.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [[ -x $CHROMIUM ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "ensure_chromium: $CHROMIUM missing and apt-get not available; install Chromium by hand" >&2
    exit 1
fi
SUDO=()
if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null || { echo "ensure_chromium: need root (or sudo) to apt-get install chromium" >&2; exit 1; }
    SUDO=(sudo -n)
fi
echo "ensure_chromium: installing chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q >/dev/null
"${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null
if [[ ! -x $CHROMIUM ]]; then
    echo "ensure_chromium: apt-get finished but $CHROMIUM is still missing" >&2
    exit 1
fi
echo "ensure_chromium: $("$CHROMIUM" --version 2>/dev/null || echo chromium) installed"
