"""The FastAPI application: `create_app(settings)` and the lifespan that builds it all.

Nothing is created at import time. The lifespan opens the store, builds the service,
the cluster client and the reconciler, hands them to the routes through
`app.state.deps`, starts the reconcile loop, and closes everything on shutdown.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from root_orchestrator.auth import unauthorized
from root_orchestrator.bus import EventBus
from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.deps import Deps
from root_orchestrator.metrics import RootMetrics
from root_orchestrator.reconciler import Reconciler
from root_orchestrator.routers import clusters, events, health, jobs, registration_tokens
from root_orchestrator.routers import logs as logs_router
from root_orchestrator.service import (
    Conflict,
    IdentityRefused,
    Invalid,
    NotFound,
    RootService,
    Unauthorized,
)
from root_orchestrator.settings import RootSettings
from root_orchestrator.web import install_web
from store import InvalidInput, StoreError, open_store

__all__ = ["API_PREFIX", "BodyLimitAndMetrics", "create_app"]

API_PREFIX = "/api/v1"
VERSION = "0.1.0"

log = logging.getLogger(__name__)


class BodyLimitAndMetrics:
    """ASGI middleware: refuse bodies over the limit (413), count and time requests."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: RootMetrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                response = JSONResponse(
                    {"detail": f"request body larger than {self.max_body_bytes} bytes"},
                    status_code=413,
                )
                await response(scope, receive, send_wrapper)
                return
            received = 0

            async def receive_wrapper() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise HTTPException(
                            status_code=413,
                            detail=f"request body larger than {self.max_body_bytes} bytes",
                        )
                return message

            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            template = _route_template(scope)
            method = scope.get("method", "?")
            self.metrics.http_requests.inc(method, template, str(status_code))
            self.metrics.http_seconds.observe(time.perf_counter() - started, method, template)


def _route_template(scope: Scope) -> str:
    """The matched route's path template (e.g. /api/v1/jobs/{job}), for metric labels."""
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str):
        return "unmatched"
    path = str(scope.get("path", ""))
    if path.startswith(API_PREFIX + "/") and not template.startswith(API_PREFIX):
        template = API_PREFIX + template  # routers included with a prefix
    return template


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _ensure_sqlite_dir(url: str) -> None:
    """Create the directory of an SQLite store file, mode 0700 (the default lives in ./data)."""
    if url.startswith("mongodb") or ":memory:" in url:
        return
    path = url
    if path.startswith("sqlite:"):
        path = path[len("sqlite:") :]
        if path.startswith("///"):
            path = path[2:]
    path = path.split("?", 1)[0]
    if path:
        # private: the store holds cluster credentials (the file itself is made 0600
        # by the SQLite backend); an existing directory is left as it is
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 that names each field at fault and never echoes the input (it may hold secrets)."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
    return JSONResponse({"detail": errors, "message": message}, status_code=422)


def _invalid(request: Request, exc: Exception) -> JSONResponse:
    """422 for a request the service found invalid, in the shape of `_validation_error`."""
    assert isinstance(exc, Invalid)
    message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors[:5])
    return JSONResponse({"detail": exc.errors, "message": message}, status_code=422)


def _service_error(code: int) -> Callable[[Request, Exception], JSONResponse]:
    def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=code)

    return handler


def _unauthorized(request: Request, exc: Exception) -> JSONResponse:
    err = unauthorized(str(exc))
    return JSONResponse({"detail": err.detail}, status_code=401, headers=err.headers)


def _store_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, InvalidInput):  # a bug (the routes validate input first), not an outage
        log.error("invalid store input on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": "internal error (see the root's log)"}, status_code=500)
    log.error("store error on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": "store unavailable"}, status_code=503)


def create_app(
    settings: RootSettings,
    *,
    clock: Callable[[], float] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
) -> FastAPI:
    """Build the root orchestrator's ASGI app; dependencies are built by its lifespan.

    `clock`, `transport` and `rng` are for tests: a fake clock, an httpx transport for
    the calls to clusters, and a seeded random source for placement ties.
    """
    metrics = RootMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _ensure_sqlite_dir(settings.store_url)
        store = await run_in_threadpool(open_store, settings.store_url)
        bus = EventBus()
        service = RootService(
            store, settings, clock=clock or time.time, rng=rng, bus=bus, metrics=metrics
        )
        client = ClusterClient(timeout=settings.cluster_timeout, transport=transport)
        reconciler = Reconciler(
            service,
            client,
            metrics,
            interval=settings.reconcile_interval,
            max_parallel=settings.max_parallel_placements,
        )
        try:
            await run_in_threadpool(service.start)
            app.state.deps = Deps(
                settings=settings,
                service=service,
                client=client,
                reconciler=reconciler,
                metrics=metrics,
                operator_tokens=[t.get_secret_value() for t in settings.operator_tokens],
            )
            reconciler.start()
            yield
        finally:
            await reconciler.stop()
            await run_in_threadpool(service.stop)  # queued writes land before the close
            bus.close()
            await client.aclose()
            await run_in_threadpool(store.close)

    app = FastAPI(
        title="Edge root orchestrator",
        version=VERSION,
        description="Operator API (jobs, clusters, nodes, events) and cluster API "
        "(register, report). Every /api/v1 route needs a bearer token; see docs/api.md.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from install_web, with local assets
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.add_middleware(BodyLimitAndMetrics, max_body_bytes=settings.max_body_bytes, metrics=metrics)
    handlers: dict[Any, Callable[[Request, Exception], JSONResponse]] = {
        RequestValidationError: _validation_error,
        Invalid: _invalid,
        NotFound: _service_error(404),
        Conflict: _service_error(409),
        IdentityRefused: _service_error(403),
        Unauthorized: _unauthorized,
        StoreError: _store_error,
    }
    for exc_class, handler in handlers.items():
        app.add_exception_handler(exc_class, handler)
    app.include_router(health.router)
    app.include_router(jobs.router, prefix=API_PREFIX)
    app.include_router(logs_router.router, prefix=API_PREFIX)
    app.include_router(clusters.cluster_api, prefix=API_PREFIX)
    app.include_router(clusters.router, prefix=API_PREFIX)
    app.include_router(registration_tokens.router, prefix=API_PREFIX)
    app.include_router(events.router, prefix=API_PREFIX)
    install_web(app)  # the dashboard at /ui and the offline API docs
    return app
