"""End to end: a short demo fills ClickHouse, `paperec dashboard` serves the page, headless
Chromium screenshots it. Also runs every Grafana panel's SQL on the dev ClickHouse.

Chromium comes from scripts/ensure_chromium.sh (Debian's package) when it is missing; if it
cannot be installed the test fails rather than skips. Set PAPEREC_DASHBOARD_SCREENSHOT=<file>
to keep the screenshot (e.g. to refresh docs/dashboard.png).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from base.metrics_store import client
from base.settings import Settings
from paperec.dashboard.grafana import PANELS as GRAFANA_PANELS
from paperec.dashboard.queries import PANEL_TITLES
from paperec.dashboard.svg import NO_DATA, PALETTE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1400, 2200)
# panels the demo must fill: list outcomes, the learner, and the rollout (the demo's nodes run
# guarded with a 10% holdout, and its controller bootstraps the first snapshot at least)
DEMO_FILLED = ("a", "b", "c", "d", "g")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Installed on first use by the project's own script; a failure fails the test."""
    found = shutil.which("chromium")
    if found:
        return Path(found)
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts/ensure_chromium.sh")], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0 or not CHROMIUM.exists():
        output = f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        pytest.fail(
            f"chromium missing and scripts/ensure_chromium.sh could not install it:\n{output}", pytrace=False
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A short demo: list outcomes, learner, serving and stream metrics land in ClickHouse."""
    out = tmp_path_factory.mktemp("demo")
    cmd = [sys.executable, "-m", "paperec.cli", "demo", "--duration", "30", "--users", "60"]
    cmd += ["--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 30) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def dashboard_url(demo_run: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path_factory.mktemp("dashboard") / "dashboard.log").open("w")
    cmd = [sys.executable, "-m", "paperec.cli", "dashboard", "--port", str(port), "--minutes", "10"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(url + "healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, f"paperec dashboard exited: {Path(log.name).read_text()[-3000:]}"
            assert time.monotonic() < deadline, "paperec dashboard did not come up in 60 s"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def decode_png(data: bytes) -> np.ndarray:
    """Pixels of an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes): height x width x
    channels. Enough of the format to look at a screenshot without an imaging library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
    assert header is not None, "no IHDR chunk"
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unsupported PNG {header}"
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    assert len(raw) == (stride + 1) * height, "truncated image data"
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        start = y * (stride + 1)
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=start + 1)
        kind = raw[start]
        if kind == 0:
            out[y] = line
        elif kind == 1:  # Sub: a running sum along the row, per channel
            out[y] = np.cumsum(line.reshape(width, bpp), axis=0, dtype=np.uint8).reshape(stride)
        elif kind == 2:  # Up
            out[y] = line + prev
        else:  # Average, Paeth: each byte depends on the one just decoded
            out[y] = _unfilter_sequential(line.tolist(), prev.tolist(), bpp, kind)
        prev = out[y]
    return out.reshape(height, width, bpp)


def _unfilter_sequential(line: list[int], prev: list[int], bpp: int, kind: int) -> list[int]:
    cur = [0] * len(line)
    for i, x in enumerate(line):
        a = cur[i - bpp] if i >= bpp else 0
        b = prev[i]
        if kind == 3:
            cur[i] = (x + ((a + b) >> 1)) & 0xFF
            continue
        c = prev[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        cur[i] = (x + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    return cur


def _sections(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section class="panel" id="panel-(\w)">(.*?)</section>', html, re.S))


def test_dashboard_page_in_headless_chromium(dashboard_url: str, chromium: Path, tmp_path: Path) -> None:
    status, html = _get(dashboard_url)
    assert status == 200, html[:2000]
    for title in PANEL_TITLES.values():
        assert title in html
    sections = _sections(html)
    assert sorted(sections) == sorted(PANEL_TITLES)
    for key in DEMO_FILLED:
        assert NO_DATA not in sections[key], f"panel ({key}) has no data after the demo"
        assert "query failed" not in sections[key]

    status, body = _get(dashboard_url + "api/panels.json")
    assert status == 200 and [p["key"] for p in json.loads(body)["panels"]] == list(PANEL_TITLES)

    shot = tmp_path / "dashboard.png"
    cmd = [
        str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--screenshot={shot}", dashboard_url,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-3000:]
    if os.environ.get("PAPEREC_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["PAPEREC_DASHBOARD_SCREENSHOT"])

    data = shot.read_bytes()
    assert len(data) > 30_000  # a blank page of this size compresses to a few kB
    pixels = decode_png(data)[:, :, :3]
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    colors, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    assert len(colors) > 50, "the screenshot is (almost) a single color"
    assert counts.max() < 0.95 * pixels.shape[0] * pixels.shape[1]
    # the charts were drawn: the first palette color (first series, bars) covers many pixels
    first = np.array([int(PALETTE[0][i : i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)
    assert (pixels == first).all(axis=2).sum() > 2_000


def _expand_grafana_macros(sql: str, window_s: int = 900, step_s: int = 15) -> str:
    """What the Grafana plugin does with the macros, in SQL that ClickHouse 18.16 also runs."""
    return sql.replace("$__timeFilter(ts)", f"ts >= now() - {window_s}").replace("$__interval_s", str(step_s))


def test_grafana_queries_run_on_clickhouse(settings: Settings, demo_run: dict) -> None:
    ch = client(settings, database=settings.clickhouse_database)
    try:
        rows = {p[1]: ch.execute(_expand_grafana_macros(p[5])) for p in GRAFANA_PANELS}
    finally:
        ch.disconnect()
    for key, title, *_ in GRAFANA_PANELS:
        if key in DEMO_FILLED:
            assert rows[title], f"Grafana panel ({key}) {title} is empty after the demo"
