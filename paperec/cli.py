"""The ``paperec`` command line: one subcommand per service or operation.

The application floor: it dispatches to the entry point modules of the packages below it
(:class:`base.command.Command`: ``configure(parser)`` and ``run(args, settings) -> int``); they
never import it (``python -m streams`` and friends run through :func:`base.command.main`). Each
subcommand gets the shared settings flags, so every endpoint can be given as ``--flag`` or
``PAPEREC_*`` environment variable.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import cast

from base.command import Command, add_settings, run_parsed

# name -> (module, help): the arrows from the CLI down to each command's module (the layering
# test reads this table). Imported lazily so that `paperec devstack status` does not pay for torch.
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
    # --- Guarded rollout
    "rollout": ("rollout.cli", "guard snapshot rollouts: canary, promote or roll back (the control topic)"),
    # --- Simulation, recorded logs, evaluation
    "simulate": ("paperec.simulate", "simulate users and write a recorded event log (JSON Lines)"),
    "replay": ("paperec.replay", "publish a recorded event log (or a KuaiRand CSV) to Kafka"),
    "evaluate": ("paperec.evaluate", "train and evaluate every policy on the simulator; write a report"),
    "evaluate-ope": (
        "paperec.evaluation.ope",
        "validate the off-policy estimators (SNIPS, DR) against the simulator's true values",
    ),
}


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Every subcommand is listed, but only the one named in ``argv`` imports its module to add
    its own flags: ``paperec devstack status`` does not pay for torch, and a subcommand whose
    module fails to import breaks only itself."""
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="paperec", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_settings(p, command(module_name) if name == chosen else None)
        p.set_defaults(_module=module_name)
    return parser


def command(module_name: str) -> Command:
    """The entry point module named in COMMANDS (imported now)."""
    return cast(Command, importlib.import_module(module_name))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    return run_parsed(command(args._module), parser, args)


if __name__ == "__main__":
    sys.exit(main())
