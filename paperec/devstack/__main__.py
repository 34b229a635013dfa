"""``python -m paperec.devstack up|down|status``: same as ``paperec devstack``."""

import sys

from paperec.devstack.cli import main

sys.exit(main())
