"""The module ``faust -A streams.app worker`` loads: the streams app built from PAPEREC_* env.

``paperec streams`` builds the same app from flags and env (streams.cli); prefer it.
"""

from __future__ import annotations

from base.settings import Settings
from streams.worker import create_app

worker = create_app(Settings.from_env())
app = worker.app
