"""The FastAPI application: `create_app(settings)` and the lifespan that builds everything.

Nothing is created at import time. The lifespan, in order:

1. creates the data directory and loads or generates the tokens (operator, join:
   every configured join token is accepted; the generated one only when none is set);
2. optionally writes the broker configuration and starts mosquitto (``--start-broker``
   or ``--broker-data-dir``);
3. connects the dynamic-security admin and (re)creates the orchestrator's own MQTT
   client with a fresh random password and the ``cluster-service`` role;
4. opens the store, starts the persister (the single writer) and the core loop
   (after loading nodes and unfinished instances);
5. connects the MQTT adapter (messages flow into the core; log replies to the
   pending log requests, which live on the HTTP event loop);
6. starts the root reporter when a root URL is configured.

Step 3 also brings the broker roles of nodes that joined under an older version to
today's ACLs (`DynsecAdmin.upgrade_node_roles`).

Shutdown runs the same steps backwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from cluster_orchestrator import (
    routes_events,
    routes_health,
    routes_instances,
    routes_logs,
    routes_nodes,
)
from cluster_orchestrator.core import ClusterCore, JoinUnauthorized
from cluster_orchestrator.deps import Services
from cluster_orchestrator.logs import LogRequests
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.mqtt_adapter import MqttAdapter
from cluster_orchestrator.persister import Persister
from cluster_orchestrator.records import EVENTS, INSTANCES, new_secret
from cluster_orchestrator.settings import ClusterSettings
from store import open_store

__all__ = ["MAX_BODY_BYTES", "create_app", "make_private_dir", "read_or_create_secret"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def make_private_dir(path: Path) -> None:
    """Create `path` with mode 0700, or tighten it to 0700 (it holds tokens and the store)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def read_or_create_secret(path: Path) -> str:
    """Read a secret file, or create it (mode 0600) with a fresh random secret."""
    try:
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = new_secret()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    log.info("generated %s (read it from that file)", path)
    return value


class BodyLimit:
    """ASGI middleware: refuse request bodies larger than `limit` bytes with 413."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check Content-Length, and count streamed bytes when it is absent."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await _too_large(send, self.limit)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail":"request body larger than {limit} bytes"}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _build(settings: ClusterSettings, stack: list[Callable[[], None]]) -> Services:
    """Build every dependency (blocking; runs in a worker thread). Appends closers."""
    from cluster_orchestrator.broker import (
        DynsecAdmin,
        MosquittoProcess,
        TlsFiles,
        TlsListener,
        write_broker_files,
    )

    data_dir = settings.data_dir.resolve()
    make_private_dir(data_dir)
    operator_token = (
        settings.operator_token.get_secret_value()
        if settings.operator_token
        else read_or_create_secret(data_dir / "operator-token")
    )
    join_tokens = settings.configured_join_tokens() or [
        read_or_create_secret(data_dir / "join-token")
    ]
    log.info("accepting %d join token(s) for new nodes", len(join_tokens))
    metrics = Metrics()

    admin_password = (
        settings.broker_admin_password.get_secret_value()
        if settings.broker_admin_password
        else None
    )
    if settings.starts_broker:
        if admin_password is None:
            admin_password = read_or_create_secret(data_dir / "broker-admin-password")
        tls_listener = None
        if settings.serves_tls:
            assert settings.broker_tls_certfile is not None
            assert settings.broker_tls_keyfile is not None
            tls_listener = TlsListener(
                host=settings.broker_tls_host,
                port=settings.broker_tls_port,
                files=TlsFiles(
                    certfile=settings.broker_tls_certfile.resolve(),
                    keyfile=settings.broker_tls_keyfile.resolve(),
                ),
            )
        files = write_broker_files(
            settings.effective_broker_data_dir,
            host=settings.plain_listen_host,
            port=settings.broker_port,
            admin_username=settings.broker_admin_username,
            admin_password=admin_password,
            tls_listener=tls_listener,
        )
        broker = MosquittoProcess(
            files,
            admin_username=settings.broker_admin_username,
            admin_password=admin_password,
        )
        broker.start()

        def stop_broker() -> None:
            broker.stop()

        stack.append(stop_broker)
        log.info(
            "started mosquitto (pid %s): plain MQTT on %s:%d%s",
            broker.pid,
            files.host,
            files.port,
            f", TLS on {files.tls_host}:{files.tls_port}" if files.tls_port else "",
        )
    if admin_password is None:
        raise RuntimeError(
            "the broker admin password is required (--broker-admin-password or "
            "EDGE_BROKER_ADMIN_PASSWORD), unless this process starts the broker"
        )
    # Our own clients: to the plain listener of the broker we started (loopback when
    # TLS is on), else to broker_host; over TLS with broker_client_tls.
    own_host = settings.plain_listen_host if settings.starts_broker else settings.broker_host
    connect_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(own_host, own_host)
    tls_context = None
    if settings.broker_client_tls:
        from schemas.tls import client_context

        connect_host = settings.broker_host
        tls_context = client_context(cafile=settings.broker_tls_cafile)
    ca_pem = None
    if settings.node_broker_tls and settings.broker_tls_cafile is not None:
        ca_pem = settings.broker_tls_cafile.read_text(encoding="ascii").strip() + "\n"
    dynsec = DynsecAdmin(
        connect_host,
        settings.broker_port,
        settings.broker_admin_username,
        admin_password,
        tls_context=tls_context,
    ).connect()
    stack.append(dynsec.close)
    service_password = new_secret()
    dynsec.ensure_service_client(settings.service_username, service_password)
    upgraded = dynsec.upgrade_node_roles()
    if upgraded:
        log.info("brought the broker roles of %d node(s) up to date", len(upgraded))

    store = open_store(settings.effective_store_url)
    stack.append(store.close)
    store.ensure_index(INSTANCES, "state")
    store.ensure_index(EVENTS, "instance_id")
    store.ensure_index(EVENTS, "node_id")
    persister = Persister(store, metrics)
    persister.start()
    stack.append(persister.stop)

    core = ClusterCore(settings=settings, store=store, persister=persister, metrics=metrics)
    core.load()
    core.start()
    stack.append(core.stop)

    logs = LogRequests(lambda _m: False, metrics)
    mqtt = MqttAdapter(
        host=connect_host,
        port=settings.broker_port,
        username=settings.service_username,
        password=service_password,
        client_id=f"{settings.service_username}-orchestrator",
        deliver=core.deliver,
        metrics=metrics,
        deliver_logs=logs.deliver,
        tls_context=tls_context,
    )
    core.set_publisher(mqtt.publish_command)
    logs.set_publisher(mqtt.publish_logs_request)
    mqtt.start()
    stack.append(mqtt.stop)

    reporter = None
    if settings.root_url:
        from cluster_orchestrator.reporter import Reporter
        from cluster_orchestrator.root_client import RootClient

        reporter = Reporter(
            settings=settings,
            core=core,
            client=RootClient(settings.root_url),
            store=store,
            persister=persister,
            metrics=metrics,
            api_token=operator_token,
        )
        reporter.start()
        stack.append(reporter.stop)
    return Services(
        settings=settings,
        core=core,
        metrics=metrics,
        operator_token=operator_token,
        join_tokens=join_tokens,
        dynsec=dynsec,
        mqtt=mqtt,
        reporter=reporter,
        store=store,
        started_at=time.time(),
        logs=logs,
        broker_ca_pem=ca_pem,
    )


def _close(stack: list[Callable[[], None]]) -> None:
    while stack:
        closer = stack.pop()
        try:
            closer()
        except Exception:
            log.exception("shutdown step failed")


def create_app(settings: ClusterSettings) -> FastAPI:
    """The cluster orchestrator's ASGI app; the lifespan builds and tears down services."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        closers: list[Callable[[], None]] = []
        async with AsyncExitStack() as exit_stack:
            exit_stack.push_async_callback(run_in_threadpool, _close, closers)
            services = await run_in_threadpool(_build, settings, closers)
            if services.logs is not None:
                services.logs.bind(asyncio.get_running_loop())
            app.state.services = services
            log.info(
                "cluster %s ready: API %s, broker %s:%d",
                settings.name,
                settings.effective_url,
                settings.node_broker_host,
                settings.node_broker_port,
            )
            yield
            app.state.services = None

    app = FastAPI(
        title="Edge cluster orchestrator",
        version="1",
        lifespan=lifespan,
        description="Node join, instance placement and node liveness for one edge cluster.",
    )
    app.add_middleware(BodyLimit)

    @app.exception_handler(JoinUnauthorized)
    async def _join_refused(request: Request, exc: JoinUnauthorized) -> JSONResponse:
        # raised by the join dependency before the body is validated
        return JSONResponse(
            {"detail": str(exc), "reason": exc.reason},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # name each field at fault, never echo the input (it may hold a secret)
        errors = [
            {
                "loc": list(err.get("loc", ())),
                "msg": err.get("msg", ""),
                "type": err.get("type", ""),
            }
            for err in exc.errors()
        ]
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors)
        return JSONResponse({"detail": errors, "fields": fields}, status_code=422)

    app.include_router(routes_nodes.router)
    app.include_router(routes_instances.router)
    app.include_router(routes_logs.router)
    app.include_router(routes_events.router)
    app.include_router(routes_health.router)
    return app
