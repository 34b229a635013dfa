"""``paperec serve``: run one serving node (uvicorn + the FastAPI app of :mod:`actor_service.app`).

Heavy imports (torch, FastAPI, uvicorn) happen in :func:`run`, not at import: ``paperec``
builds every subcommand's parser, and ``paperec devstack status`` must stay fast.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging

from base.settings import Settings

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="listen address (shorthand for --serve-host)")
    parser.add_argument("--port", type=int, default=None, help="listen port (shorthand for --serve-port)")
    # uvicorn[standard] brings httptools (C HTTP parser) and uvloop; 'auto' picks them. A refused
    # 69 KiB /rank request cost the event loop ~250 us with h11 + asyncio (every body goes through
    # Python), ~65 us with httptools + uvloop (measured); the flags exist to compare.
    parser.add_argument("--http", choices=("auto", "httptools", "h11"), default="auto", help="HTTP parser")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto", help="event loop")


def _picked(choice: str, preferred: str, fallback: str) -> str:
    """What uvicorn's 'auto' resolves to: the preferred module when it is installed."""
    if choice != "auto":
        return choice
    return preferred if importlib.util.find_spec(preferred) is not None else fallback


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.host is not None:
        settings = settings.replace(serve_host=args.host)
    if args.port is not None:
        settings = settings.replace(serve_port=args.port)

    import uvicorn

    from actor_service.app import create_app
    from actor_service.node import Node

    try:
        node = Node(settings)
    except ValueError as exc:
        print(f"paperec serve: {exc}")
        return 2
    app = create_app(node)
    http, loop = _picked(args.http, "httptools", "h11"), _picked(args.loop, "uvloop", "asyncio")
    log.info(
        "serving on http://%s:%d (node %s; HTTP parser %s, event loop %s)",
        settings.serve_host,
        settings.serve_port,
        node.node_id,
        http,
        loop,
    )
    uvicorn.run(
        app,
        host=settings.serve_host,
        port=settings.serve_port,
        http=http,
        loop=loop,
        log_config=None,  # keep the CLI's logging setup
        access_log=False,  # per-request lines cost more than scoring a short list
        timeout_graceful_shutdown=10,
    )
    return 0
