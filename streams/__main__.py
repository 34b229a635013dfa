"""``python -m streams``: the same as ``paperec streams``, without loading the other commands."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """``paperec streams`` (the CLI imports only the chosen command's module)."""
    from paperec.cli import main as paperec_main

    return paperec_main(["streams", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
