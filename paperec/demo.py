"""``paperec demo``: the end-to-end demo (streams, learner, two serving nodes, simulated users)."""

from __future__ import annotations

import argparse

from paperec.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=180.0, help="seconds to run")


def run(args: argparse.Namespace, settings: Settings) -> int:
    print("paperec demo: not yet available (the end-to-end demo lands with the whole-loop issue).")
    return 0
