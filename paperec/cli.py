"""The ``paperec`` command line: one subcommand per service or operation.

Subcommands register themselves in ``COMMANDS``; each gets the shared settings flags, so every
endpoint can be given as ``--flag`` or ``PAPEREC_*`` environment variable.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from base.settings import Settings

# name -> (module, help). The module exposes ``configure(parser)`` and ``run(args, settings) -> int``.
# Imported lazily so that `paperec devstack status` does not pay for importing torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "devstack": ("paperec.devstack.cli", "start, stop or inspect the local Kafka + ClickHouse dev stack"),
    "topics": ("base.topics", "create or describe the Kafka topics"),
    "metrics": ("base.metrics_store", "create the ClickHouse metric tables"),
    "dashboard": ("paperec.dashboard.app", "serve a local web dashboard of the metrics in ClickHouse"),
    "demo": ("paperec.demo", "run the end-to-end demo"),
    # --- Streams
    "streams": ("streams.cli", "run a stream join worker (impressions + feedback -> transitions)"),
    # --- Serving
    "serve": ("actor_service.cli", "serve ranked lists over HTTP with hot-loaded actor snapshots"),
    # --- Learner service
    "learner": ("learner.cli", "train continuously on the transitions topic and publish actor snapshots"),
    # --- Simulation, recorded logs, evaluation
    "simulate": ("paperec.simulate", "simulate users and write a recorded event log (JSON Lines)"),
    "replay": ("paperec.replay", "publish a recorded event log (or a KuaiRand CSV) to Kafka"),
    "evaluate": ("paperec.evaluate", "train and evaluate every policy on the simulator; write a report"),
}


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Every subcommand is listed, but only the one named in ``argv`` imports its module to add
    its own flags: ``paperec devstack status`` does not pay for torch, and a subcommand whose
    module fails to import breaks only itself."""
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="paperec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        Settings.add_arguments(p)
        p.set_defaults(_module=module_name)
        if name == chosen:
            _module(module_name).configure(p)
    return parser


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kafka-python and aiokafka log every connection at INFO: keep the CLI output readable.
    for noisy in ("kafka", "aiokafka", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    run: Callable[[argparse.Namespace, Settings], int] = _module(args._module).run
    return run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
