"""The KuaiRand importer on a small log_standard-style CSV written by the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from paperec.cli import main
from schemas import Click, Dwell, Impression
from simulator.kuairand import KuaiRandOptions, import_kuairand
from simulator.logfile import LogLine, read_log

HEADER = (
    "user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,"
    "is_hate,long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,"
    "is_profile_enter,is_rand,tab"
)
T0 = 1_649_376_000_000  # 2022-04-08


def row(
    user: int, video: int, dt_s: float, click: int, play_ms: int, duration_ms: int = 20_000, tab: int = 1
) -> str:
    t = T0 + int(dt_s * 1000)
    return f"{user},{video},20220408,1000,{t}.0,{click},0,0,0,0,0,0,{play_ms}.0,{duration_ms}.0,0,0,0,0,{tab}"


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def test_rows_are_grouped_into_lists(tmp_path: Path) -> None:
    rows = [
        row(1, 10, 0, 1, 5_000),  # line 2: list A
        row(1, 11, 5, 0, 0),  # line 3: list A
        row(1, 12, 10, 0, 3_000),  # line 4: list A; play time without click is no event
        row(1, 13, 500, 1, 7_000),  # line 5: gap > 60 s -> list B
        row(1, 14, 505, 0, 0, tab=2),  # line 6: tab changes -> list C
        row(1, 14, 506, 0, 0, tab=2),  # line 7: same video again -> list D
        row(2, 10, 1, 1, 90_000_000),  # line 8: other user, dwell clipped to one day
        "2,xx,20220408,1000,notatime,0,0,0,0,0,0,0,0,0,0,0,0,0,1",  # line 9: bad row
    ]
    events, stats = import_kuairand(write_csv(tmp_path / "log_standard_small.csv", rows))
    assert stats.rows == 8 and stats.users == 2 and stats.lists == 5
    assert [(b.line_no, b.reason.split(":")[0]) for b in stats.bad_rows] == [(9, "time_ms")]
    assert stats.unclicked_play_rows == 1 and stats.clicks == 3

    kinds = [type(e.event).__name__ for e in events]
    assert kinds.count("Impression") == 5 and kinds.count("Click") == 3 and kinds.count("Dwell") == 3
    ts = [e.event.ts_ms for e in events]
    assert ts == sorted(ts)

    imps = [e.event for e in events if isinstance(e.event, Impression)]
    user1 = [i for i in imps if i.user_id == "user-1"]
    assert [[it.item_id for it in i.items] for i in user1] == [
        ["video-10", "video-11", "video-12"],
        ["video-13"],
        ["video-14"],
        ["video-14"],
    ]
    assert user1[1].history == ("video-10",)  # previously clicked videos
    assert user1[0].weights == (0.5, 0.5) and len(user1[0].items[0].features) == 2

    clicks = [(e.line_no, e.event) for e in events if isinstance(e.event, Click)]
    line_no, first = next((n, c) for n, c in clicks if c.item_id == "video-10" and c.user_id == "user-1")
    assert line_no == 2 and first.position == 0 and first.ts_ms == T0
    dwells = {(d.event.user_id, d.event.item_id): d.event for d in events if isinstance(d.event, Dwell)}
    assert dwells[("user-1", "video-10")].dwell_ms == 5_000
    assert dwells[("user-1", "video-10")].ts_ms == T0 + 5_000
    assert dwells[("user-2", "video-10")].dwell_ms == 86_400_000


def test_max_list_len(tmp_path: Path) -> None:
    rows = [row(1, v, v, 0, 0) for v in range(7)]
    _, stats = import_kuairand(write_csv(tmp_path / "k.csv", rows), KuaiRandOptions(max_list_len=3))
    assert stats.lists == 3


def test_missing_columns_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "wrong.csv"
    path.write_text("user_id,video_id\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        import_kuairand(path)


def test_replay_cli_converts_kuairand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_csv(tmp_path / "k.csv", [row(1, 10, 0, 1, 4_000), "bad,row", row(1, 11, 1, 0, 0)])
    out = tmp_path / "k.jsonl"
    assert main(["replay", str(src), "--format", "kuairand", "--write-log", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "published 3 events" in text and "skipped 1 corrupt lines" in text
    events = [i.event for i in read_log(out) if isinstance(i, LogLine)]
    assert [e.type for e in events] == ["impression", "click", "dwell"]
