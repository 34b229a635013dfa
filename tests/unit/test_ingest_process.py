"""Ingestion through the worker process (learner/ingest_process.py), without Kafka: the worker
prepares chunks from an in-memory source; the parent's Ingestor stores them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import orjson
import pytest

from base.worker_process import WorkerFailed
from learner.devtools import ListDeadLetters, MemorySource, encoded, synthetic_transitions
from learner.ingest import Ingestor, PreparedChunk, PreparingSource, RawRecord, prepare
from learner.ingest_process import ProcessSource
from learner.replay_buffer import ReplayBuffer
from model.ranker import RankerConfig
from schemas import decode_dead_letter

CFG = RankerConfig.tiny()


def _wait(cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _log(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_prepare_does_not_touch_its_input_and_matches_the_in_process_path() -> None:
    values = [*encoded(synthetic_transitions(CFG, 5)), b"{not json"]
    records = [RawRecord("t", 0, i, None, v) for i, v in enumerate(values)]
    before = list(records)
    chunk = prepare(records, CFG)
    assert records == before
    assert len(chunk) == 6 and chunk.positions == {0: 6} and len(chunk.dead_letters) == 1
    assert chunk.batch is not None and chunk.batch.batch_size == 5 and len(chunk.ids) == 5

    direct = ReplayBuffer(CFG, 10)
    Ingestor(PreparingSource(MemorySource(values), CFG), direct, CFG, ListDeadLetters()).ingest(records)
    stored = ReplayBuffer(CFG, 10)
    Ingestor(PreparingSource(MemorySource(values), CFG), stored, CFG, ListDeadLetters()).store(chunk)
    a, b = direct.state_dict(), stored.state_dict()
    assert a["seen_ids"] == b["seen_ids"] and a["ts_ms"].tolist() == b["ts_ms"].tolist()
    assert all(a["rows"][n].equal(b["rows"][n]) for n in a["rows"])


def test_the_worker_fills_the_buffer_dead_letters_bad_records_and_commits(tmp_path: Path) -> None:
    ts = synthetic_transitions(CFG, 100)
    values = [*encoded(ts[:50]), b'{"transition_id": 7}', *encoded(ts[50:])]
    commits = tmp_path / "commits.jsonl"
    source = ProcessSource(
        partial(MemorySource, values, None, False, "mem", commit_log=str(commits)), CFG, chunk_size=16
    )
    buffer, sink = ReplayBuffer(CFG, 200), ListDeadLetters()
    ingestor = Ingestor(source, buffer, CFG, sink)
    ingestor.start()
    _wait(lambda: ingestor.stats.records == 101)
    _, positions, stats = ingestor.checkpoint_state(contents=False)
    assert positions == {0: 101} and stats.transitions == 100 and stats.dead_letters == 1
    assert len(buffer) == 100
    letter = decode_dead_letter(sink.sent[0][0])
    assert letter.source_offset == 50 and letter.stage == "learner.ingest" and letter.error_field
    ingestor.request_commit(positions)
    _wait(lambda: {"commit": {"0": 101}} in _log(commits))
    ingestor.stop()
    ingestor.close(commit={0: 101})
    assert _log(commits)[-1] == {"closed": True} and not source.alive


def test_a_killed_worker_is_restarted_where_the_buffer_left_off() -> None:
    ts = synthetic_transitions(CFG, 300)
    source = ProcessSource(partial(MemorySource, encoded(ts), None, False, "mem"), CFG, chunk_size=20)
    buffer = ReplayBuffer(CFG, 400)
    ingestor = Ingestor(source, buffer, CFG, ListDeadLetters(), max_rate=1000.0)
    ingestor.start()
    _wait(lambda: ingestor.stats.records >= 60)
    source.worker.kill()  # e.g. the OOM killer; its prefetched chunks are lost with it
    _wait(lambda: ingestor.stats.records == 300, timeout_s=60)
    ingestor.stop()
    ingestor.close()
    # every transition exactly once, none skipped: the restart read from the stored positions
    assert source.restarts == 1 and ingestor.stats.errors >= 1
    assert len(buffer) == 300 and ingestor.stats.transitions == 300 and ingestor.positions == {0: 300}
    assert ingestor.stats.duplicates == 0


def test_a_failing_poll_in_the_worker_is_rewound_and_nothing_is_lost() -> None:
    ts = synthetic_transitions(CFG, 120)
    source = ProcessSource(
        partial(MemorySource, encoded(ts), None, False, "mem", fail_once_at=50), CFG, chunk_size=20
    )
    buffer = ReplayBuffer(CFG, 200)
    ingestor = Ingestor(source, buffer, CFG, ListDeadLetters())
    ingestor._stop.wait = lambda _t=None: False  # type: ignore[method-assign, assignment]  # no backoff sleep
    ingestor.start()
    _wait(lambda: ingestor.stats.records == 120)
    ingestor.stop()
    ingestor.close()
    assert ingestor.stats.errors == 1 and source.restarts == 0
    assert len(buffer) == 120 and ingestor.positions == {0: 120} and ingestor.stats.duplicates == 0


def test_chunks_prepared_before_a_seek_are_dropped() -> None:
    ts = synthetic_transitions(CFG, 100)
    source = ProcessSource(
        partial(MemorySource, encoded(ts), None, False, "mem"), CFG, chunk_size=10, prefetch=2
    )
    try:
        assert source.wait_full()  # two chunks from offset 0 wait in the queue
        source.seek({0: 70})
        chunks: list[PreparedChunk] = []
        deadline = time.monotonic() + 30
        while sum(len(c) for c in chunks) < 30 and time.monotonic() < deadline:
            got = source.poll(0.5, 10)
            if got is not None:
                chunks.append(got)
        assert [c.positions[0] for c in chunks] == [80, 90, 100]
    finally:
        source.close()


def test_a_source_that_cannot_start_is_reported() -> None:
    with pytest.raises(WorkerFailed, match="ingest worker failed to start: ValueError: repeat needs"):
        ProcessSource(partial(MemorySource, [b"x"], None, True), CFG)  # repeat needs ids


def _exit_at_once(start: dict[int, int] | None) -> MemorySource:
    os._exit(3)  # e.g. killed while importing its dependencies: no error message at all


def test_a_worker_that_exits_before_starting_is_reported_at_once() -> None:
    with pytest.raises(WorkerFailed, match=r"exited \(code 3\) before starting"):
        ProcessSource(_exit_at_once, CFG, start_timeout_s=600)
