"""``paperec dashboard``: a local web page of the system's metrics, read from ClickHouse.

- ``/``: one HTML page, seven panels of SVG charts (and tables) rendered here (no JavaScript,
  nothing from a CDN), reloading itself every ``--refresh`` seconds;
- ``/api/panels.json``: the same data as JSON;
- ``/healthz``: liveness.

Every request re-runs the queries (paperec.dashboard.queries) over the last ``--minutes``; they
are cheap aggregates, and a page that is always current needs no cache to invalidate. The Grafana
dashboard in deploy/grafana/dashboards/paperec.json shows the same panels for docker-compose.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response

from base.settings import Settings
from paperec.dashboard.model import Dashboard
from paperec.dashboard.page import render_page
from paperec.dashboard.queries import build_dashboard, fetch, step_for

log = logging.getLogger(__name__)

DashboardSource = Callable[[], Dashboard]


def clickhouse_source(settings: Settings, window_minutes: int, step_s: int) -> DashboardSource:
    """A function that queries ClickHouse afresh on every call, as the read-only dashboard user
    (``clickhouse_dashboard_user``). A client per call: the driver's client is not thread-safe,
    and FastAPI runs these handlers on a thread pool."""
    from base.metrics_store import client

    database = settings.clickhouse_database

    def load() -> Dashboard:
        ch = client(settings, database=database, role="dashboard")
        try:
            try:
                ch.execute("SELECT 1")
            except Exception as exc:  # unreachable: one message instead of ten failed queries
                log.warning("ClickHouse unreachable: %s", exc)
                where = (
                    f"{settings.clickhouse_host}:{settings.clickhouse_port} "
                    f"(user {settings.clickhouse_dashboard_user})"
                )
                dashboard = build_dashboard(
                    {}, {}, window_minutes=window_minutes, step_s=step_s, database=database
                )
                dashboard.error = f"ClickHouse at {where} unreachable: {exc}"
                return dashboard
            results, errors = fetch(ch, database, window_minutes * 60, step_s)
        finally:
            ch.disconnect()
        return build_dashboard(
            results, errors, window_minutes=window_minutes, step_s=step_s, database=database
        )

    return load


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: they become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def create_app(source: DashboardSource, refresh_s: int = 10) -> FastAPI:
    app = FastAPI(title="paperec dashboard", docs_url=None, redoc_url=None, openapi_url=None)

    # Plain `def` handlers: FastAPI runs them on its thread pool, so the blocking ClickHouse
    # client never stalls the event loop.
    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        dashboard = source()
        return HTMLResponse(render_page(dashboard, refresh_s), status_code=503 if dashboard.error else 200)

    @app.get("/api/panels.json")
    def panels() -> JSONResponse:
        dashboard = source()
        return JSONResponse(_finite(asdict(dashboard)), status_code=503 if dashboard.error else 200)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", media_type="text/plain")

    return app


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=18090, help="listen port (default 18090)")
    parser.add_argument(
        "--minutes", type=int, default=60, help="time window shown, in minutes back from now (default 60)"
    )
    parser.add_argument(
        "--step",
        type=int,
        default=None,
        help="time bucket in seconds (default: about window / 60, rounded up to 5, 10, 15, 30, 60 s ...)",
    )
    parser.add_argument(
        "--refresh", type=int, default=10, help="page reload interval in seconds (default 10)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    if args.minutes <= 0 or (args.step is not None and args.step <= 0) or args.refresh <= 0:
        log.error("--minutes, --step and --refresh must be positive")
        return 2
    step_s = args.step or step_for(args.minutes)
    # The driver logs a traceback per failed connect; the page refreshes every few seconds and
    # our own warning already says that ClickHouse is unreachable.
    logging.getLogger("clickhouse_driver").setLevel(max(logging.ERROR, logging.getLogger().level))
    app = create_app(clickhouse_source(settings, args.minutes, step_s), refresh_s=args.refresh)
    print(
        f"paperec dashboard on http://{args.host}:{args.port}/ (ClickHouse "
        f"{settings.clickhouse_host}:{settings.clickhouse_port}/{settings.clickhouse_database}, "
        f"last {args.minutes} min, {step_s} s buckets)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level.lower(), access_log=False)
    return 0
