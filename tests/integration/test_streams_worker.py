"""The streams worker on the real broker, run as a subprocess (``python -m streams``) as in
production: a scripted event sequence gives exactly the expected transitions and dead letters;
a worker killed with SIGKILL mid-stream and restarted loses no transition; a ClickHouse outage
does not stop the join. (Several workers as one group: test_streams_group.py.)
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from stream_workers import (
    Reader,
    W,
    Worker,
    committed,
    producer,
    send,
    send_in_real_time,
    streams_settings,
    transitions_of,
    user_sessions,
    wait_gone,
)

from base.settings import (
    TOPIC_CLICKS,
    TOPIC_DEAD_LETTER,
    TOPIC_DWELLS,
    TOPIC_IMPRESSIONS,
    TOPIC_LIST_OUTCOMES,
    TOPIC_TRANSITIONS,
    Settings,
)
from schemas import DeadLetter, Transition, decode, transition_id
from streams import fixtures as fx

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def run_worker(tmp_path: Path) -> Iterator[Callable[[Settings], Worker]]:
    workers: list[Worker] = []

    def start(s: Settings) -> Worker:
        w = Worker(s, tmp_path / "worker.log").start()
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()


def test_scripted_sequence_gives_exactly_the_expected_transitions_and_rejects(
    settings: Settings,
    unique_prefix: str,
    tmp_path: Path,
    run_worker: Callable[[Settings], Worker],
    clickhouse_client: Any,
) -> None:
    s = streams_settings(settings, unique_prefix, tmp_path)
    worker = run_worker(s)
    tag = uuid.uuid4().hex[:8]
    r1, r2, r3, r4, ghost = (f"{tag}-{n}" for n in ("r1", "r2", "r3", "r4", "ghost"))
    u1, u2 = f"{tag}-u1", f"{tag}-u2"
    t = int(time.time() * 1000)
    p = producer(s)
    # the guarded rollout's arm and the log-propensity (issue 18) ride along to the transitions
    # and the list_outcomes rows; r3 is an impression without them (as older producers write)
    imp1 = {**fx.impression(r1, u1, t), "arm": "canary", "log_propensity": -0.75}
    # u1: three lists; r1's feedback partly before its impression (out of order), with repeats
    send(p, s, TOPIC_CLICKS, r1, fx.click(r1, u1, 1, t + 100))
    send(p, s, TOPIC_IMPRESSIONS, r1, imp1)
    send(p, s, TOPIC_IMPRESSIONS, r1, imp1)  # repeated impression
    send(p, s, TOPIC_CLICKS, r1, fx.click(r1, u1, 1, t + 100))  # repeated click
    send(p, s, TOPIC_DWELLS, r1, fx.dwell(r1, u1, 1, t + 150, 2_000))
    send(
        p,
        s,
        TOPIC_IMPRESSIONS,
        r2,
        {**fx.impression(r2, u1, t + 200), "arm": "holdout", "log_propensity": None},
    )
    send(p, s, TOPIC_CLICKS, r2, fx.click(r2, u1, 0, t + 250))
    send(p, s, TOPIC_DWELLS, r2, fx.dwell(r2, u1, 0, t + 300, 1_500))
    send(p, s, TOPIC_DWELLS, r2, fx.dwell(r2, u1, 0, t + 300, 1_500))  # repeated dwell
    send(p, s, TOPIC_IMPRESSIONS, r3, fx.impression(r3, u1, t + 400))  # no feedback: zeros
    send(p, s, TOPIC_CLICKS, r3, fx.click(r3, u1, 2, t + 400 + W + 50))  # after r3's window end
    # u2: a single list, clicked and read
    send(
        p,
        s,
        TOPIC_IMPRESSIONS,
        r4,
        {**fx.impression(r4, u2, t + 100), "arm": "personalized", "log_propensity": 2},
    )
    send(p, s, TOPIC_CLICKS, r4, fx.click(r4, u2, 2, t + 150))
    send(p, s, TOPIC_DWELLS, r4, fx.dwell(r4, u2, 2, t + 160, 700))
    # rejects
    send(p, s, TOPIC_CLICKS, ghost, fx.click(ghost, u1, 0, t + 100))  # no such impression
    send(p, s, TOPIC_CLICKS, r2, b'{"type": "click", "schema_version": 1, "request_id": ')  # malformed JSON
    send(p, s, TOPIC_CLICKS, r2, {**fx.click(r2, u1, 0, t + 260), "position": True})  # wrong type
    send(p, s, TOPIC_DWELLS, r2, {**fx.dwell(r2, u1, 0, t + 260, 1), "dwell_ms": "long"})  # wrong type
    send(p, s, TOPIC_IMPRESSIONS, "x", {**fx.impression("x", u2, t), "weights": [0.9, 0.9]})  # not a simplex
    send(p, s, TOPIC_IMPRESSIONS, "y", {**fx.impression("y", u2, t), "arm": "control"})  # no such arm
    send(p, s, TOPIC_CLICKS, "wrong-key", fx.click(r2, u1, 1, t + 270))  # not keyed by request_id
    p.flush()

    outcomes = Reader(s, TOPIC_LIST_OUTCOMES)
    try:
        outcomes.until(
            lambda rs: any(r.key == u1.encode() and b'"' + r1.encode() + b'"' in r.value for r in rs),
            30,
            worker,
        )
    finally:
        outcomes.close()
    send(p, s, TOPIC_CLICKS, r1, fx.click(r1, u1, 0, t + 120))  # r1 already closed: late
    p.flush()
    p.close()

    expected_ids = {
        transition_id(u1, r1, r2),
        transition_id(u1, r2, r3),
        transition_id(u1, r3, None),
        transition_id(u2, r4, None),
    }
    expected_rejects = Counter(
        [
            ("streams.decode", "$", s.topic(TOPIC_CLICKS)),
            ("streams.decode", "position", s.topic(TOPIC_CLICKS)),
            ("streams.decode", "dwell_ms", s.topic(TOPIC_DWELLS)),
            ("streams.decode", "weights", s.topic(TOPIC_IMPRESSIONS)),
            ("streams.decode", "arm", s.topic(TOPIC_IMPRESSIONS)),
            ("streams.join.bad_key", "request_id", s.topic(TOPIC_CLICKS)),
            ("streams.join.unknown_request", None, s.topic(TOPIC_CLICKS)),
            ("streams.join.outside_window", "ts_ms", s.topic(TOPIC_CLICKS)),
            ("streams.join.late", None, s.topic(TOPIC_CLICKS)),
        ]
    )
    transitions, dead = Reader(s, TOPIC_TRANSITIONS), Reader(s, TOPIC_DEAD_LETTER)
    try:
        got = transitions.until(lambda rs: len(rs) >= len(expected_ids), 40, worker)
        rejects = dead.until(lambda rs: len(rs) >= sum(expected_rejects.values()), 20, worker)
        time.sleep(1.5)  # anything unexpected after that?
        got, rejects = transitions.poll(), dead.poll()
    finally:
        transitions.close()
        dead.close()

    ts = {x.transition_id: x for x in transitions_of(got)}
    assert len(got) == len(expected_ids) and set(ts) == expected_ids, worker.tail()
    t12 = ts[transition_id(u1, r1, r2)]
    assert (
        t12.labels.clicks == (0, 1, 0) and t12.labels.dwell_ms == (0, 2_000, 0) and t12.reward == (1.0, 2.0)
    )
    assert not t12.done and t12.next_state is not None and t12.next_state.request_id == r2
    t23 = ts[transition_id(u1, r2, r3)]
    assert t23.labels.clicks == (1, 0, 0) and t23.labels.dwell_ms == (1_500, 0, 0)  # repeat ignored
    t3 = ts[transition_id(u1, r3, None)]
    assert t3.done and t3.next_state is None and t3.labels.clicks == (0, 0, 0) and t3.reward == (0.0, 0.0)
    t4 = ts[transition_id(u2, r4, None)]
    assert t4.labels.clicks == (0, 0, 1) and t4.labels.dwell_ms == (0, 0, 700)
    arms = {x.state.request_id: (x.arm, x.log_propensity) for x in ts.values()}
    assert arms == {r1: ("canary", -0.75), r2: ("holdout", None), r3: (None, None), r4: ("personalized", 2.0)}

    letters = [decode(r.value, DeadLetter) for r in rejects]
    assert Counter((d.stage, d.error_field, d.source_topic) for d in letters) == expected_rejects
    late = next(d for d in letters if d.stage == "streams.join.late")
    assert late.key == r1 and late.source_offset >= 0 and orjson.loads(late.raw)["position"] == 0
    malformed = next(d for d in letters if d.error_field == "$")
    assert malformed.raw.startswith('{"type": "click"') and malformed.source_partition >= 0

    # Metrics: one list_outcomes row per closed list, stream health in stream_metrics.
    db = s.clickhouse_database
    rows: list[Any] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(rows) < 4:
        rows = clickhouse_client.execute(
            f"SELECT request_id, clicks, dwell_ms, complete, arm, log_propensity FROM {db}.list_outcomes "
            "WHERE request_id LIKE %(tag)s",
            {"tag": f"{tag}-%"},
        )
        time.sleep(0.5)
    assert sorted(rows) == sorted(
        [
            (r1, 1, 2_000, 1, "canary", -0.75),
            (r2, 1, 1_500, 1, "holdout", None),
            (r3, 0, 0, 1, "", None),
            (r4, 1, 700, 1, "personalized", 2.0),
        ]
    )
    # each stage reports under its own source (its app id); dead letters are counted by both
    join_source, link_source = f"streams:{s.streams_app_id}", f"streams:{s.streams_link_app_id}"
    counted: dict[str, float] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and counted.get("streams.join.late", 0) < 1:
        counted = dict(
            clickhouse_client.execute(
                f"SELECT label, sum(value) FROM {db}.stream_metrics "
                "WHERE source IN %(src)s AND name = 'dead_letters' GROUP BY label",
                {"src": (join_source, link_source)},
            )
        )
        time.sleep(0.5)
    assert counted == {
        stage: float(n) for stage, n in Counter(k[0] for k in expected_rejects.elements()).items()
    }
    names = {
        src: {
            n
            for (n,) in clickhouse_client.execute(
                f"SELECT DISTINCT name FROM {db}.stream_metrics WHERE source = %(src)s", {"src": src}
            )
        }
        for src in (join_source, link_source)
    }
    assert {"events_in", "dead_letters", "lag", "list_outcomes"} <= names[join_source]
    assert {"lag", "transitions"} <= names[link_source]


@pytest.mark.parametrize("victim", ["worker", "stage 2"])
def test_sigkill_mid_stream_then_restart_loses_no_transition(
    settings: Settings,
    unique_prefix: str,
    tmp_path: Path,
    run_worker: Callable[[Settings], Worker],
    victim: str,
) -> None:
    """SIGKILL the worker (its stage-2 process must then stop by itself; the worker is
    restarted) or its stage-2 process (the worker must restart it and keep running); no
    transition lost."""
    gap = 1_500
    s = streams_settings(
        settings, unique_prefix, tmp_path, session_gap_ms=gap, join_window_ms=600, join_lateness_ms=200
    )
    worker = run_worker(s)
    worker.wait_ready()
    start = int(time.time() * 1000) + 200
    lists, expected = user_sessions(unique_prefix, 40, 24, lambda u, k: start + u * 25 + k * 300)

    producing = threading.Thread(target=send_in_real_time, args=(s, lists), daemon=True)
    producing.start()
    reader = Reader(s, TOPIC_TRANSITIONS)
    try:
        # Mid-stream: the worker has emitted transitions and committed offsets of both stages
        # (so the restart resumes from commits, with state changelogs ahead of them), and
        # events keep coming.
        reader.until(lambda rs: len(rs) >= 200, 40, worker)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and min(committed(s).values(), default=0) == 0:
            time.sleep(0.1)
        assert min(committed(s).values(), default=0) > 0, "no offsets committed before the kill"
        assert producing.is_alive(), "the producer finished before the kill: not mid-stream"
        before = len(reader.records)
        committed_at_kill = committed(s)
        children = worker.children()
        assert len(children) == 1, f"expected one stage-2 process, found {children}"
        if victim == "worker":
            worker.kill9()
            assert wait_gone(children, 15) == [], "the stage-2 process outlived its worker"
        else:
            os.kill(children[0], signal.SIGKILL)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and worker.children() in ([], children):
                time.sleep(0.2)
            assert worker.alive(), f"the worker stopped with its stage-2 process:\n{worker.tail()}"
            assert worker.children() not in ([], children), "stage 2 was not restarted"
            assert "restarting it in" in worker.tail(200)
        restarted = run_worker(s) if victim == "worker" else worker
        producing.join(60)
        got = reader.until(
            lambda rs: expected <= {decode(r.value, Transition).transition_id for r in rs}, 90, restarted
        )
        time.sleep(2)
        got = reader.poll()
    finally:
        reader.close()
    ids = [decode(r.value, Transition).transition_id for r in got]
    unique = list(dict.fromkeys(ids))  # first occurrence of each id, as a consumer deduplicates
    assert set(unique) == expected, (
        f"missing {len(expected - set(unique))}, unexpected {len(set(unique) - expected)}\n{restarted.tail()}"
    )
    print(
        f"{len(ids)} transitions on the topic, {len(ids) - len(unique)} repeats after the restart "
        f"({before} before the kill, offsets committed then: {committed_at_kill})"
    )


def test_clickhouse_outage_does_not_stop_the_join(
    settings: Settings, unique_prefix: str, tmp_path: Path, run_worker: Callable[[Settings], Worker]
) -> None:
    s = streams_settings(settings, unique_prefix, tmp_path, clickhouse_port=1)  # nothing listens there
    worker = run_worker(s)
    t = int(time.time() * 1000)
    p = producer(s)
    for k in range(2):
        rid = f"{unique_prefix}r{k}"
        send(p, s, TOPIC_IMPRESSIONS, rid, fx.impression(rid, "u", t + k * 100))
    p.flush()
    p.close()
    reader = Reader(s, TOPIC_TRANSITIONS)
    try:
        got = reader.until(lambda rs: len(rs) >= 2, 40, worker)
    finally:
        reader.close()
    assert {decode(r.value, Transition).done for r in got} == {False, True}
    assert worker.alive()
    assert "metrics insert failed" in worker.log_path.read_text()


def test_a_backlog_read_with_inputs_paused_and_resumed_gives_every_transition(
    settings: Settings, unique_prefix: str, tmp_path: Path, run_worker: Callable[[Settings], Worker]
) -> None:
    """Catching up on a backlog, Kafka fetches by bytes, so the small click and dwell records run
    far ahead of the large impressions; with a tiny allowed input skew the join pauses and resumes
    them all the time. Every transition must still come out. (Records of a partition paused while
    their fetch was in flight used to be dropped after aiokafka had moved past them: lost, and the
    partition's watermark stuck behind them for good. That race is timing-dependent here; the unit
    test in test_streams_batching.py pins it down.)"""
    s = streams_settings(
        settings, unique_prefix, tmp_path, streams_max_input_skew_ms=20, streams_max_batch=500
    )
    start = int(time.time() * 1000) - 60_000  # a backlog: event times a minute ago
    lists, expected = user_sessions(unique_prefix, 50, 40, lambda u, k: start + (k * 50 + u) * 5)
    p = producer(s)
    for ts, user, rid in lists:  # ~8 kB impressions (30 items x 32 features), small feedback
        send(p, s, TOPIC_IMPRESSIONS, rid, fx.impression(rid, user, ts, n_items=30, n_features=32))
        send(p, s, TOPIC_CLICKS, rid, fx.click(rid, user, 1, ts + 50))
        send(p, s, TOPIC_DWELLS, rid, fx.dwell(rid, user, 1, ts + 100, 2_000))
    p.flush()
    p.close()

    worker = run_worker(s)
    reader = Reader(s, TOPIC_TRANSITIONS)
    try:
        got = reader.until(
            lambda rs: expected <= {decode(r.value, Transition).transition_id for r in rs}, 60, worker
        )
    finally:
        reader.close()
    ids = {decode(r.value, Transition).transition_id for r in got}
    assert ids == expected, (
        f"missing {len(expected - ids)}, unexpected {len(ids - expected)}\n{worker.tail()}"
    )
    assert "input_resumed" in worker.log_path.read_text(errors="replace"), "no input was paused and resumed"
