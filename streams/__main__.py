"""``python -m streams``: the same as ``paperec streams``, without the application's CLI (this
package stands below it)."""

from __future__ import annotations

import sys

from base.command import main
from streams import cli

if __name__ == "__main__":
    sys.exit(main("python -m streams", cli, description=cli.__doc__))
