"""Acceptance test of issue 15 part 3: the whole loop rides out broker and ClickHouse outages.

On a PRIVATE stack (a broker and a ClickHouse server of this test's own, tests/integration/
private_stack.py; the shared dev stack is never signalled), the streams worker, the learner and
two serving nodes run as processes, started as ``paperec demo`` starts them
(``paperec.demo.demo_services``, through tests/integration/loop_run.py), with short windows and
frequent snapshots. Seeded simulated users go through ``POST /rank`` on both nodes and send their
clicks and dwells to Kafka, while

1. the broker is stopped (SIGSTOP) for 30 s, then continued;
2. the broker is SIGKILLed and restarted;
3. ClickHouse is SIGKILLed and restarted.

Then: no service process exited; every ``/rank`` answered 200; the nodes' impressions sent +
counted drops = lists answered, and every answered list is on the impressions topic; every
transition on the transitions topic refers to answered lists of its user, and none of the lists
answered before the outages lacks its transition; a snapshot published after each outage has a
higher version than any before it; every list outcome is in ClickHouse exactly once (with FINAL),
no metric table counts a row id twice, and every service writes samples after the ClickHouse
restart.

Last, the deduplicated transition ids must equal the set the answered lists give: the join's
inputs do not idle forward while the broker does not answer, and after an outage its watermarks
hold for ``streams_outage_grace_ms`` while the producers deliver what they buffered, in whatever
order (docs/streams.md, "Watermarks"). The services' logs are kept in the test's tmp dir (the
path is logged, and named by a failed equality).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from loop_run import SESSION_GAP_MS, expected_transitions, now_ms, whole_loop
from private_stack import PrivateClickHouse, PrivateKafka

from base.metrics_store import TABLES, client

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STOP_S = 30.0  # how long the broker stays SIGSTOPped
SETTLE_MS = 10_000  # > window + lateness + idle: a list this old was joined and linked
BASELINE_S = 25.0  # traffic before the first outage


def test_the_loop_rides_out_broker_stop_broker_kill_and_clickhouse_restart(
    private_kafka: PrivateKafka, private_clickhouse: PrivateClickHouse, tmp_path: Path
) -> None:
    with whole_loop(
        private_kafka.settings, private_clickhouse.settings, tmp_path, "paperec.acceptance."
    ) as run:
        s, watch = run.settings, run.watch
        # lists linked before any outage: the baseline the transitions check starts from
        run.sleep(max(0.0, run.traffic_started + BASELINE_S - time.monotonic()))

        # 1. the broker hangs for 30 s
        before = watch.newest()
        first_outage_ms = now_ms()
        os.kill(private_kafka.pid, signal.SIGSTOP)
        try:
            run.sleep(STOP_S)
        finally:
            os.kill(private_kafka.pid, signal.SIGCONT)
        back = now_ms()
        run.wait(
            "a newer snapshot after the broker resumed",
            lambda: any(v > before for v in watch.published_since(back)),
            90,
        )

        # 2. the broker dies and is restarted
        before = watch.newest()
        private_kafka.kill9()
        run.sleep(3)
        private_kafka.start()
        back = now_ms()
        run.wait(
            "a newer snapshot after the broker restarted",
            lambda: any(v > before for v in watch.published_since(back)),
            90,
        )

        # 3. ClickHouse dies and is restarted
        before = watch.newest()
        private_clickhouse.kill9()
        run.sleep(3)
        private_clickhouse.start()
        back = now_ms()
        run.wait(
            "a newer snapshot after ClickHouse restarted",
            lambda: any(v > before for v in watch.published_since(back)),
            60,
        )
        run.sleep(3)  # a little traffic after the last outage
        answered = run.answered()
        # every answered list: one impression sent or one counted drop, and none lost
        impressions = run.check_impressions(answered)

        # the transitions: those the answered lists give. Every transition refers to answered
        # lists, and none of the lists answered before the outages is missing.
        expected = expected_transitions(
            ((imp.user_id, imp.ts_ms, rid) for rid, imp in impressions.items()), SESSION_GAP_MS
        )
        settled_before = first_outage_ms - SETTLE_MS  # these lists were linked before the outage
        expected_before = {tid for tid, (_, t_next) in expected.items() if t_next < settled_before}
        assert len(expected_before) > 50
        transitions = run.transitions(expected, answered, 45)
        got = set(transitions)
        assert expected_before <= got, f"{len(expected_before - got)} transitions lost before the outages"

        # ClickHouse: every list outcome once (FINAL), no row id counted twice in any table
        ch = client(s)
        db = s.clickhouse_database
        try:

            def outcomes() -> list[tuple[str, int]]:
                return list(
                    ch.execute(
                        f"SELECT request_id, count() FROM {db}.list_outcomes FINAL GROUP BY request_id"
                    )
                )

            # the list of every transition was closed by the join, so its outcome must be there
            closed = {tr.state.request_id for tr in transitions.values()}
            run.wait(
                "every closed list's outcome in ClickHouse", lambda: closed <= dict(outcomes()).keys(), 60
            )
            rows = outcomes()
            assert {rid for rid, _ in rows} <= set(answered)
            assert all(n == 1 for _, n in rows)
            for table in TABLES:
                ((total, ids),) = ch.execute(f"SELECT count(), uniqExact(row_id) FROM {db}.{table} FINAL")
                assert total == ids > 0, table
            # every service wrote samples again after the restart
            sources = {
                src
                for table in ("serving_metrics", "stream_metrics", "learner_metrics")
                for (src,) in ch.execute(
                    f"SELECT DISTINCT source FROM {db}.{table} WHERE ts >= toDateTime(%(t)s)",
                    {"t": back // 1000},
                )
            }
            assert {
                "actor:actor-1",
                "actor:actor-2",
                "demo-learner",
                f"streams:{s.streams_app_id}",
            } <= sources
        finally:
            ch.disconnect()
        run.healthy()
        # Last, the exact set: the join's watermarks neither idle through an outage nor close the
        # windows of the outage before the producers' buffers and late feedback had the outage
        # grace to arrive (docs/streams.md, Watermarks).
        run.assert_exact_transitions(expected, got, first_outage_ms, "the first outage began")
