"""``python -m rollout``: the same as ``paperec rollout`` (same flags, same settings), without
importing the application or the other commands."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from base import command


def main(argv: Sequence[str] | None = None) -> int:
    from rollout import cli

    return command.main("python -m rollout", cli, argv)


if __name__ == "__main__":
    sys.exit(main())
