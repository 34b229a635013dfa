"""``paperec rollout``: the rollout controller service (rollout/service.py, docs/rollout.md).

Its settings are the shared ones (``canary_share``, ``rollout_*``, the snapshot keys, Kafka and
ClickHouse), as flags or ``PAPEREC_*`` variables; the flags below are the command's own.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from base.settings import Settings

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Guard snapshot rollouts: bootstrap the first snapshot, judge each new one off-policy, serve it "
        "to a canary share beside the incumbent, promote or roll it back by an always-valid sequential "
        "test on the list outcomes per arm; decisions go to the compacted control topic."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="listen address of /metrics (port: --rollout-port; 0 = off)"
    )
    parser.add_argument(
        "--clickhouse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write a rollout_decisions row per decision (default: on)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from rollout.service import RolloutService, serve_metrics

    writer = None
    try:
        if args.clickhouse:
            from base.metrics_store import init_tables, rollout_decision_writer

            try:
                init_tables(settings)
            except Exception as exc:  # ClickHouse down at start: the writer retries its inserts
                log.warning("could not check the ClickHouse tables (inserts will be retried): %s", exc)
            writer = rollout_decision_writer(settings)
        service = RolloutService(settings, writer=writer)
    except ValueError as exc:  # unusable settings, e.g. the dev snapshot key outside dev mode
        print(f"paperec rollout: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        service.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    serve_metrics(service.m, args.host, settings.rollout_port)
    try:
        return service.run()
    except Exception:
        log.exception("rollout controller failed")
        return 1
