"""``paperec streams``: run one streams worker (the Faust app of streams.worker).

Every setting comes from flags or PAPEREC_* variables (``paperec streams --help``); the join
window, lateness, session gap and the rest are in the "Streams" group of paperec.settings.
"""

from __future__ import annotations

import argparse
import logging

from paperec.settings import Settings

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    from streams.stage_process import STAGE_ALL, STAGES

    parser.add_argument("--quiet", action="store_true", help="no Faust startup banner")
    parser.add_argument(
        "--stage",
        choices=STAGES,
        default=STAGE_ALL,
        help="all: stage 1 here and stage 2 in a child process (default); join or link: only "
        "that stage, to run (and scale) the stages as separate services",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    return run_worker(settings, args.stage, quiet=args.quiet)


def run_worker(settings: Settings, stage: str, quiet: bool = False) -> int:
    """Run the Faust worker of ``stage`` until it stops; its exit status."""
    from faust.worker import Worker

    from streams.worker import app_id_of, create_app

    worker = create_app(settings, stage)
    ours = ("join_", "session_", "link_", "streams_")
    config = {k: v for k, v in settings.public_dict().items() if k.startswith(ours)}
    log.info(
        "streams worker %s (stage %s) on %s: %s",
        app_id_of(settings, stage),
        stage,
        settings.kafka_bootstrap,
        config,
    )
    faust_worker = Worker(
        worker.app, loglevel=settings.log_level.lower(), quiet=quiet, redirect_stdouts=False
    )
    try:
        faust_worker.execute_from_commandline()
    except SystemExit as exc:
        crashed = worker.app._crash_reason is not None
        return 1 if crashed else int(exc.code or 0)
    finally:
        worker.metrics.close()
    return 0
