"""One command line entry point: a module with ``configure(parser)`` and ``run(args, settings)``.

Every service package exposes its command this way (``streams.cli``, ``learner.cli``,
``actor_service.cli``, ...). ``python -m <package>`` runs it through :func:`main` here, and the
``paperec`` CLI (the application, above every package) dispatches to the same two functions, so
no package calls up into the application to start itself.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Protocol

from base.settings import Settings

# kafka-python and aiokafka log every connection at INFO: keep the command output readable.
NOISY_LOGGERS = ("kafka", "aiokafka", "httpx")


class Command(Protocol):
    """What an entry point module provides (a module satisfies it structurally)."""

    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, settings: Settings) -> int: ...


def add_settings(parser: argparse.ArgumentParser, command: Command | None) -> None:
    """The shared settings flags, then the command's own (``command`` None: settings only, for a
    subcommand listed but not chosen)."""
    Settings.add_arguments(parser)
    if command is not None:
        command.configure(parser)


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def run_parsed(command: Command, parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Settings from the parsed flags (then ``PAPEREC_*``, then defaults), logging, ``run``."""
    try:
        settings = Settings.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    setup_logging(settings)
    return command.run(args, settings)


def main(
    prog: str, command: Command, argv: Sequence[str] | None = None, description: str | None = None
) -> int:
    """``python -m <package>``: one command's parser (settings flags + its own), then its ``run``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_settings(parser, command)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_parsed(command, parser, args)
