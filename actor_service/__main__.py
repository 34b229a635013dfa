"""``python -m actor_service``: the same as ``paperec serve`` (same flags, same settings).

Builds only this command's parser, without importing the application or the other commands
(the test and benchmark harnesses start nodes this way).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from base import command


def main(argv: Sequence[str] | None = None) -> int:
    from actor_service import cli

    return command.main("python -m actor_service", cli, argv, description=cli.__doc__)


if __name__ == "__main__":
    sys.exit(main())
