"""``python -m streams``: the same as ``paperec streams``, without loading the other commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from paperec.settings import Settings
from streams import cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams", description=cli.__doc__)
    Settings.add_arguments(parser)
    cli.configure(parser)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=settings.log_level.upper(), format=log_format)
    return cli.run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
