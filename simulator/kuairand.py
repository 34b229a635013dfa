"""Importer for KuaiRand interaction logs (``log_standard_*.csv``; Gao et al., CIKM 2022):
rows of (user, video, time, click, play time, duration, ...) become lists, and the lists become
impression, click and dwell events in the recorded-log format.

Grouping: per user, rows sorted by ``time_ms``; a new list starts when the gap to the previous
row exceeds ``gap_ms``, the ``tab`` (app surface) changes, the list is full (``max_list_len``),
or the video already appears in the open list (ids are unique within an impression).

Mapping (docs/simulator.md, "KuaiRand"):
- impression: ts = first row's time; user_id ``user-<id>``; item ``video-<id>`` at its position;
  item features (log(1 + duration seconds), is_rand); context = hour of day (Beijing time,
  UTC+8) as (sin, cos); history = the user's previously clicked videos; no user features;
  weights (1/2, 1/2) with zero noise (KuaiRand does not log the ranking policy's weights).
- click: for ``is_click = 1`` at the row's time; dwell: its ``play_time_ms`` (clipped to the
  schema's one day) at time + play time. Play time of unclicked rows is not an event (counted).

A row that cannot be read (missing or non-numeric value, negative time) is skipped and
reported with its line number; a file without the required columns is an error.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from schemas import MAX_DWELL_MS, Click, Dwell, Impression, Item
from simulator.logfile import BadLine, Event, LogLine

REQUIRED_COLUMNS = ("user_id", "video_id", "time_ms", "is_click", "play_time_ms", "duration_ms")
BEIJING_OFFSET_MS = 8 * 3600 * 1000


@dataclass(frozen=True)
class KuaiRandOptions:
    max_list_len: int = 10
    gap_ms: int = 60_000
    """rows further apart than this start a new list"""
    history_len: int = 20


@dataclass(frozen=True)
class Row:
    line_no: int
    user: str
    video: str
    time_ms: int
    click: bool
    play_ms: int
    duration_ms: int
    tab: str
    is_rand: bool


@dataclass
class ImportStats:
    rows: int = 0
    users: int = 0
    lists: int = 0
    clicks: int = 0
    unclicked_play_rows: int = 0
    bad_rows: list[BadLine] = field(default_factory=list)


def _int(value: str | None, name: str) -> int:
    if value is None or value.strip() == "":
        raise ValueError(f"{name}: missing")
    try:
        f = float(value)  # KuaiRand writes some integer columns as floats ("5822.0")
    except ValueError:
        raise ValueError(f"{name}: not a number: {value[:40]!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise ValueError(f"{name}: not an integer: {value[:40]!r}")
    return int(f)


def _row(line_no: int, rec: dict[str, str]) -> Row:
    user, video = (rec.get("user_id") or "").strip(), (rec.get("video_id") or "").strip()
    if not user or not video:
        raise ValueError("user_id/video_id: missing")
    time_ms, play, duration = (_int(rec.get(c), c) for c in ("time_ms", "play_time_ms", "duration_ms"))
    click = _int(rec.get("is_click"), "is_click")
    if click not in (0, 1):
        raise ValueError(f"is_click: must be 0 or 1, got {click}")
    if time_ms < 0 or play < 0 or duration < 0:
        raise ValueError("time_ms/play_time_ms/duration_ms: must be >= 0")
    is_rand = rec.get("is_rand", "0").strip() in ("1", "1.0")
    return Row(
        line_no, user, video, time_ms, bool(click), play, duration, (rec.get("tab") or "").strip(), is_rand
    )


def read_rows(path: Path, stats: ImportStats) -> dict[str, list[Row]]:
    """Rows grouped by user; unreadable rows go to ``stats.bad_rows``."""
    by_user: dict[str, list[Row]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a KuaiRand log, missing columns {missing}")
        for rec in reader:
            line_no = reader.line_num  # the header is line 1
            stats.rows += 1
            try:
                row = _row(line_no, rec)
            except ValueError as e:
                stats.bad_rows.append(BadLine(line_no, str(e)))
                continue
            by_user[row.user].append(row)
    stats.users = len(by_user)
    return by_user


def split_lists(rows: list[Row], opts: KuaiRandOptions) -> list[list[Row]]:
    """One user's rows (any order) -> lists, in time order."""
    lists: list[list[Row]] = []
    for row in sorted(rows, key=lambda r: (r.time_ms, r.line_no)):
        cur = lists[-1] if lists else None
        if (
            cur is None
            or len(cur) >= opts.max_list_len
            or row.time_ms - cur[-1].time_ms > opts.gap_ms
            or row.tab != cur[-1].tab
            or any(r.video == row.video for r in cur)
        ):
            lists.append([row])
        else:
            cur.append(row)
    return lists


def _context(ts_ms: int) -> tuple[float, float]:
    hour = ((ts_ms + BEIJING_OFFSET_MS) % 86_400_000) / 3_600_000
    return (math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24))


def list_events(user: str, rows: list[Row], history: tuple[str, ...]) -> list[Event]:
    first = rows[0]
    request_id = f"kr-{user}-{first.time_ms}-{first.line_no}"
    user_id = f"user-{user}"
    items = tuple(
        Item(
            item_id=f"video-{r.video}",
            position=k,
            features=(math.log1p(r.duration_ms / 1000.0), 1.0 if r.is_rand else 0.0),
        )
        for k, r in enumerate(rows)
    )
    out: list[Event] = [
        Impression(
            request_id=request_id,
            user_id=user_id,
            ts_ms=first.time_ms,
            snapshot_version=0,
            objectives=("click", "dwell"),
            weights=(0.5, 0.5),
            noise=(0.0, 0.0),
            user_features=(),
            history=history,
            context=_context(first.time_ms),
            items=items,
        )
    ]
    for k, r in enumerate(rows):
        if r.click:
            common = dict(request_id=request_id, user_id=user_id, item_id=f"video-{r.video}", position=k)
            out.append(Click(ts_ms=r.time_ms, **common))  # type: ignore[arg-type]
            dwell = min(r.play_ms, MAX_DWELL_MS)
            out.append(Dwell(ts_ms=r.time_ms + dwell, dwell_ms=dwell, **common))  # type: ignore[arg-type]
    return out


def import_kuairand(path: Path, opts: KuaiRandOptions | None = None) -> tuple[list[LogLine], ImportStats]:
    """Every event of the file, in timestamp order, each tagged with the CSV line it came from."""
    opts = opts or KuaiRandOptions()
    stats = ImportStats()
    tagged: list[tuple[int, int, LogLine]] = []
    for user, rows in read_rows(path, stats).items():
        history: deque[str] = deque(maxlen=opts.history_len)
        for lst in split_lists(rows, opts):
            stats.lists += 1
            stats.unclicked_play_rows += sum(1 for r in lst if not r.click and r.play_ms > 0)
            events = list_events(user, lst, tuple(history))
            lines = [lst[0].line_no] + [r.line_no for r in lst if r.click for _ in (0, 1)]
            for line_no, e in zip(lines, events, strict=True):
                tagged.append((e.ts_ms, len(tagged), LogLine(line_no, e)))
            clicked = [f"video-{r.video}" for r in lst if r.click]
            stats.clicks += len(clicked)
            history.extend(clicked)
    tagged.sort(key=lambda t: (t[0], t[1]))
    return [t[2] for t in tagged], stats


def iter_kuairand(path: Path, opts: KuaiRandOptions | None = None) -> Iterator[LogLine | BadLine]:
    """The import as the replay reads it: bad rows first (they are known only after reading)."""
    lines, stats = import_kuairand(path, opts)
    yield from stats.bad_rows
    yield from lines
