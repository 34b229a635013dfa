"""``python -m actor_service``: the same as ``paperec serve`` (same flags, same settings).

Builds only this command's parser, so a node starts without importing the other subcommands'
modules (the test and benchmark harnesses start nodes this way).
"""

from __future__ import annotations

import argparse
import logging
import sys

from actor_service.cli import configure, run
from paperec.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actor_service", description=__doc__)
    Settings.add_arguments(parser)
    configure(parser)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    return run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
