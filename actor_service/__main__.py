"""``python -m actor_service``: the same as ``paperec serve`` (same flags, same settings).

Builds only this command's parser, so a node starts without importing the other subcommands'
modules (the test and benchmark harnesses start nodes this way).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """``paperec serve`` (the CLI imports only the chosen command's module)."""
    from paperec.cli import main as paperec_main

    return paperec_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
