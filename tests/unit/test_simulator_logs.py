"""Recorded logs: writing, reading with corrupt lines, time order; `paperec simulate`; the
replay loop (pacing, counting, skipping) with a fake sender."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from paperec.cli import main
from paperec.replay import Pacer, replay
from paperec.simulate import simulate_log
from schemas import encode
from schemas.examples import CLICK, DWELL, IMPRESSION, TRANSITION
from simulator import SimulatorConfig
from simulator.logfile import BadLine, LogLine, LogWriter, in_time_order, read_lines, read_log

TINY = SimulatorConfig(n_users=8, n_items=200, seed=5)


def test_simulated_log_is_time_ordered_valid_and_seeded(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    counts = simulate_log(TINY, 2, a)
    simulate_log(TINY, 2, b)
    assert a.read_bytes() == b.read_bytes()
    items = list(read_log(a))
    assert all(isinstance(i, LogLine) for i in items)
    ts = [i.event.ts_ms for i in items if isinstance(i, LogLine)]
    assert ts == sorted(ts)
    assert counts["impression"] == counts["lists"] and counts["sessions"] == 16
    assert (
        counts["click"]
        == counts["dwell"]
        == sum(1 for i in items if isinstance(i, LogLine) and i.event.type == "click")
    )
    # every session of a user starts after the previous one (an hour apart)
    imps = [i.event for i in items if isinstance(i, LogLine) and i.event.type == "impression"]
    assert len({e.request_id for e in imps}) == len(imps)


def test_simulate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "log.jsonl"
    assert main(["simulate", "--users", "3", "--sessions", "1", "--out", str(out), "--no-progress"]) == 0
    assert "3 sessions" in capsys.readouterr().out
    assert out.stat().st_size > 0


def test_corrupt_lines_are_reported_with_line_numbers() -> None:
    bad_click = orjson.loads(encode(CLICK))
    bad_click["position"] = "first"
    lines = [
        encode(IMPRESSION),
        b"{not json",
        orjson.dumps(bad_click),
        b"",  # blank lines are skipped, not errors
        encode(TRANSITION),  # valid record, but not an event
        encode(DWELL),
    ]
    items = list(read_lines(lines))
    assert [type(i).__name__ for i in items] == ["LogLine", "BadLine", "BadLine", "BadLine", "LogLine"]
    bad = [i for i in items if isinstance(i, BadLine)]
    assert [b.line_no for b in bad] == [2, 3, 5]
    assert "invalid JSON" in bad[0].reason
    assert bad[1].reason.startswith("position")
    assert "does not belong" in bad[2].reason


def test_writer_refuses_events_out_of_order(tmp_path: Path) -> None:
    with LogWriter(tmp_path / "x.jsonl") as w:
        w.write(DWELL)
        with pytest.raises(ValueError):
            w.write(IMPRESSION)


def test_in_time_order_reorders_within_the_window() -> None:
    raw = [encode(DWELL), encode(IMPRESSION), encode(CLICK)]
    ordered = [i for i in in_time_order(read_lines(raw)) if isinstance(i, LogLine)]
    assert [i.event.type for i in ordered] == ["impression", "click", "dwell"]
    # an event later than the window allows comes out late (the replay counts it)
    late = [encode(CLICK), encode(DWELL), encode(IMPRESSION)]
    window_1 = [i for i in in_time_order(read_lines(late), window=1) if isinstance(i, LogLine)]
    assert [i.event.type for i in window_1] == ["click", "impression", "dwell"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_replay_paces_counts_and_skips() -> None:
    lines = [encode(IMPRESSION), b"garbage", encode(CLICK), encode(DWELL)]
    sent: list[str] = []
    fake = FakeClock()
    stats = replay(read_lines(lines), lambda e: sent.append(e.type), Pacer(2.0, fake.clock, fake.sleep))
    assert sent == ["impression", "click", "dwell"]
    assert stats.total == 3 and [b.line_no for b in stats.bad_lines] == [2]
    # click 4.2 s and dwell 46.2 s after the impression, at 2x: waits of 2.1 s, then 21 s more
    assert fake.sleeps == pytest.approx([2.1, 21.0])
    assert "skipped 1 corrupt lines" in stats.summary()


def test_replay_as_fast_as_possible_never_sleeps() -> None:
    fake = FakeClock()
    replay(
        read_lines([encode(IMPRESSION), encode(DWELL)]), lambda e: None, Pacer(None, fake.clock, fake.sleep)
    )
    assert fake.sleeps == []


def test_replay_counts_events_out_of_order() -> None:
    stats = replay(read_lines([encode(DWELL), encode(IMPRESSION)]), lambda e: None)
    assert stats.out_of_order == 1


def test_replay_cli_converts_to_a_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(encode(IMPRESSION) + b"\n{oops\n" + encode(CLICK) + b"\n")
    assert main(["replay", str(src), "--write-log", str(dst), "--no-progress"]) == 0
    assert "published 2 events" in capsys.readouterr().out
    assert dst.read_bytes() == encode(IMPRESSION) + b"\n" + encode(CLICK) + b"\n"
    assert main(["replay", str(tmp_path / "missing.jsonl"), "--no-progress"]) == 2


def test_the_worker_reader_yields_what_the_in_process_reader_does(tmp_path: Path) -> None:
    from paperec.replay_reader import EncodedLine, read_in_worker

    log = tmp_path / "log.jsonl"
    simulate_log(TINY, 2, log)
    good = log.read_bytes().splitlines()
    # out of order within the window, a corrupt line, a non-event record, a blank line
    lines = [good[1], good[0], b"{not json", *good[2:40], encode(TRANSITION), b"", *good[40:]]
    log.write_bytes(b"\n".join(lines) + b"\n")
    expected = list(in_time_order(read_log(log), 50))
    read: list[int] = []
    got = list(read_in_worker(log, 50, read.append))
    assert sum(isinstance(e, BadLine) for e in expected) == 2
    assert len(got) == len(expected) and sum(read) == log.stat().st_size
    for g, e in zip(got, expected, strict=True):
        if isinstance(e, BadLine):
            assert g == e
        else:
            assert isinstance(g, EncodedLine) and g.line_no == e.line_no
            assert (g.event.type, g.event.ts_ms, g.event.request_id) == (
                e.event.type,
                e.event.ts_ms,
                e.event.request_id,
            )
            assert g.event.value == encode(e.event)
    with pytest.raises(OSError, match="No such file"):
        list(read_in_worker(tmp_path / "missing.jsonl", 50))
