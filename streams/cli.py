"""``paperec streams`` (and ``python -m streams``): run one streams worker (streams.worker).

Every setting comes from flags or PAPEREC_* variables (``paperec streams --help``); the join
window, lateness, session gap and the rest are in the "Streams" group of base.settings.

By default the worker runs in a child process supervised by this one: a worker that exits
abnormally (a Faust worker crashes on purpose when a delivery fails, e.g. during a broker outage)
is restarted with a backoff and counted (log line, ``process_restarts`` in stream_metrics);
SIGTERM/SIGINT stop it cleanly and exit 0. ``--no-supervise`` runs the worker in this process.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from base.settings import Settings
from streams.metrics import StreamMetrics
from streams.stage_process import StageProcess, child_process, supervise
from streams.worker import STAGE_ALL, STAGES, app_id_of, run_worker

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no Faust startup banner")
    parser.add_argument(
        "--stage",
        choices=STAGES,
        default=STAGE_ALL,
        help="all: stage 1 here and stage 2 in a child process (default); join or link: only "
        "that stage, to run (and scale) the stages as separate services",
    )
    parser.add_argument(
        "--no-supervise",
        action="store_true",
        help="run the worker in this process (default: in a child restarted when it exits abnormally)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.no_supervise:
        return run_worker(settings, args.stage, quiet=args.quiet)
    return run_supervised(settings, args.stage, quiet=args.quiet)


def run_supervised(settings: Settings, stage: str, quiet: bool = False) -> int:
    """The worker of ``stage`` in a child process, restarted when it exits abnormally."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping the streams worker", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    metrics = StreamMetrics.to_clickhouse(settings, source=f"streams:{app_id_of(settings, stage)}:supervisor")

    def on_restart(proc: StageProcess) -> None:
        metrics.count("process_restarts", proc.stage)
        metrics.flush()

    try:
        proc = StageProcess(stage, child_process(stage, run_worker, settings, stage, quiet))
        return supervise(proc, stop, on_restart)
    finally:
        metrics.close()
