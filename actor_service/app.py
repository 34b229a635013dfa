"""The HTTP API (FastAPI): ``POST /rank``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``;
the OpenAPI schema at ``/openapi.json`` (and ``/docs``).

Errors name the field: 422 ``{"detail": [{"field": "items[3].features", "msg": ..., "type": ...}]}``
for validation and feature-width errors, 401 + ``WWW-Authenticate: Bearer`` on ``/rank`` and
``/metrics`` without the configured bearer token (:mod:`actor_service.auth`; the health probes
stay open), 413 for a body over ``serve_max_body_bytes``, 503
while no model may serve (see the cold-start policy) and 503 + ``Retry-After`` for a request shed
under overload (over the admission's wait budget or ``serve_max_in_flight``, or still queued at
its deadline; see
:mod:`actor_service.overload`).
"""

from __future__ import annotations

import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from actor_service.api import ErrorBody, RankRequest, RankResponse, field_errors
from actor_service.auth import PROTECTED_ROUTES, UNAUTHORIZED, BearerAuth
from actor_service.instruments import Instruments
from actor_service.metrics import CONTENT_TYPE
from actor_service.node import Node
from actor_service.overload import OVERLOADED, RETRY_AFTER_S, Admission, Shed
from model.featurize import FeatureError
from schemas import SchemaError

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_REF = {"$ref": "#/components/schemas/RankRequest"}
_UNAUTHORIZED_DOC = {
    "model": ErrorBody,
    "description": "bearer token missing or wrong (when one is configured)",
}

ROUTES = frozenset({"/rank", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})

# ASGI scope key: when (time.monotonic()) an admitted /rank request reached the node; its
# deadline in the scoring queue counts from there (body reading and parsing included).
ARRIVED_KEY = "paperec.arrived"


def _error(status: int, field: str, msg: str, kind: str, headers: dict[str, str] | None = None) -> Response:
    body = {"detail": [{"field": field, "msg": msg, "type": kind}]}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


class ServingMiddleware:
    """Pure ASGI (no per-request task, unlike BaseHTTPMiddleware): admits /rank requests up to
    the in-flight limit, stamps their arrival time, bounds the request body and records latency and
    status of every request.

    Admission runs here, before the body is read or parsed, so a refused request costs the
    event loop almost nothing; only /rank is limited, /healthz and /readyz always answer.
    Authentication (``auth``, optional) runs before admission: a request without the token
    takes no admission slot (:mod:`actor_service.auth`).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        instruments: Instruments,
        admission: Admission,
        auth: BearerAuth | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.m = instruments
        self.admission = admission
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = 500
        limit = self.max_body_bytes
        admitted = False

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.auth is not None and route in PROTECTED_ROUTES:
                refused = self.auth.refusal(scope["headers"])
                if refused is not None:
                    if route == "/rank":  # errors_total counts /rank failures; /metrics: requests_total
                        self.m.errors.labels(UNAUTHORIZED).inc()
                    headers = {"WWW-Authenticate": refused.challenge}
                    await _error(401, "$", refused.msg, UNAUTHORIZED, headers)(scope, receive, send_status)
                    return
            if route == "/rank" and scope["method"] == "POST":
                if not self.admission.try_enter():
                    reason = self.admission.refusal() or "overloaded"  # same state: same reason
                    await _overloaded(reason, self.m)(scope, receive, send_status)
                    return
                admitted = True
                self.m.in_flight.set(self.admission.in_flight)
                scope[ARRIVED_KEY] = time.monotonic()
            length = _content_length(scope)
            if length is not None and length > limit:
                await _too_large(limit, self.m)(scope, receive, send_status)
                return
            received = 0

            async def bounded_receive() -> Message:
                # Chunked bodies have no Content-Length: count what arrives.
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        self.m.errors.labels("too_large").inc()
                        raise HTTPException(413, f"request body over {limit} bytes")
                return message

            await self.app(scope, bounded_receive, send_status)
        finally:
            if admitted:
                self.admission.leave()
                self.m.in_flight.set(self.admission.in_flight)
            self.m.requests.labels(route, str(status)).inc()
            if route == "/rank":
                self.m.latency.labels(route).observe(time.perf_counter() - started)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _overloaded(reason: str, m: Instruments) -> Response:
    m.errors.labels(OVERLOADED).inc()
    return _shed_response(Shed(OVERLOADED, reason))


def _shed_response(exc: Shed) -> Response:
    return _error(503, "$", exc.msg, exc.kind, headers={"Retry-After": str(RETRY_AFTER_S)})


def _too_large(limit: int, m: Instruments) -> Response:
    m.errors.labels("too_large").inc()
    return _error(413, "$", f"request body over {limit} bytes (serve_max_body_bytes)", "body_too_large")


def create_app(node: Node) -> FastAPI:
    s = node.settings

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await node.start()
        # Everything alive now (torch, FastAPI, pydantic, the model: ~1M objects) lives as long as
        # the process. Left to the cyclic GC, every full collection walks all of it: 130-170 ms
        # with every thread stopped, ~1.5 times a second under load (measured), which is what
        # made /healthz and accepted /rank requests stall. Frozen, a full collection walks only
        # what was allocated since.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await node.stop()

    app = FastAPI(
        title="paperec actor service",
        version="1",
        description="Ranks candidate lists with per-user objective weights (PAPERec) and logs impressions.",
        lifespan=lifespan,
    )
    app.state.node = node
    app.add_middleware(
        ServingMiddleware,
        max_body_bytes=s.serve_max_body_bytes,
        instruments=node.m,
        admission=node.admission,
        auth=node.auth,
    )
    if node.auth is not None:
        log.info("bearer token required on %s", ", ".join(sorted(PROTECTED_ROUTES)))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        node.m.errors.labels("validation").inc()
        return Response(
            orjson.dumps({"detail": field_errors(exc.errors())}),
            status_code=422,
            media_type="application/json",
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> Response:
        if exc.status_code == 413:
            return _error(413, "$", str(exc.detail), "body_too_large")
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.post(
        "/rank",
        response_model=RankResponse,
        responses={
            401: _UNAUTHORIZED_DOC,
            413: {"model": ErrorBody, "description": "request body too large"},
            422: {"model": ErrorBody, "description": "invalid request; `field` names the offending field"},
            503: {
                "model": ErrorBody,
                "description": "no model to serve yet (cold-start policy `refuse`), or shed under "
                "overload (`overloaded`, `deadline_exceeded`); carries `Retry-After`",
            },
        },
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST_REF}}}
        },
        summary="Rank candidate items for one user",
    )
    async def rank_endpoint(request: Request) -> Response:
        # The body is validated by pydantic's own JSON parser (model_validate_json), not FastAPI's
        # json.loads + validate: 4x less event-loop time for a 200-item list.
        try:
            req = RankRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            node.m.errors.labels("validation").inc()
            return Response(
                orjson.dumps({"detail": field_errors(exc.errors())}),
                status_code=422,
                media_type="application/json",
            )
        ts_ms = int(time.time() * 1000)
        routing = node.slot.routing  # captured once: this request uses its model to the end
        if routing is None or not node.ready():
            node.m.errors.labels("not_ready").inc()
            return _error(503, "$", "no actor snapshot loaded yet", "not_ready", headers={"Retry-After": "1"})
        if len(req.items) > s.serve_max_items:
            node.m.errors.labels("validation").inc()
            return _error(
                422, "items", f"{len(req.items)} items, at most {s.serve_max_items} allowed", "too_long"
            )
        request_id = req.request_id or uuid.uuid4().hex
        route = routing.route(req.user_id)  # the arm: one hash of the user id (two during a canary)
        try:
            ranked = await node.batcher.rank(
                route.served,
                req,
                request_id,
                ts_ms,
                request.scope.get(ARRIVED_KEY),
                route.arm if routing.log_arms else None,
                route.fixed_weights,
            )
        except Shed as exc:  # not scored, so no impression either
            node.m.errors.labels(exc.kind).inc()
            return _shed_response(exc)
        except (FeatureError, SchemaError) as exc:
            node.m.errors.labels("validation").inc()
            return _error(422, exc.field, exc.reason, "feature_error")
        except Exception:
            node.m.errors.labels("internal").inc()
            log.exception("ranking request %s failed", request_id)
            return _error(500, "$", "internal error while ranking", "internal")
        node.impressions.submit(request_id.encode(), ranked.impression)
        node.m.candidates.inc(ranked.n_items)
        node.m.arm_requests.labels(route.arm).inc()
        if route.fallback:
            node.m.canary_fallback.inc()
        return Response(ranked.body, media_type="application/json")

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: /rank serves (a snapshot is loaded, or the cold-start policy)")
    async def readyz() -> Response:
        cur = node.slot.current
        ready = node.ready()
        decision = node.slot.decision
        body = {
            "ready": ready,
            "snapshot_version": None if cur is None else cur.version,
            "cold_start": None if cur is None else cur.cold_start,
            "caught_up": node.snapshots.caught_up.is_set(),
            "node": node.node_id,
            "rollout": s.rollout,
            "candidate_version": node.slot.candidate_version(),
            "canary_share": None if node.slot.routing is None else node.slot.routing.canary_share,
            "decision_id": None if decision is None else decision.decision_id,
            "decisions_caught_up": None if node.decisions is None else node.decisions.caught_up.is_set(),
        }
        return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")

    @app.get(
        "/metrics",
        summary="Prometheus metrics (text format 0.0.4)",
        responses={401: _UNAUTHORIZED_DOC},
    )
    async def metrics() -> Response:
        return Response(node.m.render(), media_type=CONTENT_TYPE)

    def openapi() -> dict[str, Any]:
        # The /rank body is parsed by hand (see rank_endpoint), so its schema is added here.
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            request_schema = RankRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(request_schema.pop("$defs", {}))
            components["RankRequest"] = request_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
