"""`/healthz` (no auth) and `/metrics` (Prometheus text format)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials

from root_orchestrator.auth import bearer, require_operator
from root_orchestrator.deps import Deps, DepsDep, get_deps
from root_orchestrator.metrics import CONTENT_TYPE, render

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=None,
    responses={503: {"description": "the store does not answer"}},
)
async def healthz(deps: DepsDep) -> JSONResponse:
    """Liveness and readiness: 200 when the store answers, else 503."""
    try:
        await run_in_threadpool(deps.service.ping_store)
    except Exception as exc:
        return JSONResponse(
            {"status": "unavailable", "store": f"{type(exc).__name__}"}, status_code=503
        )
    return JSONResponse({"status": "ok", "store": "ok"})


async def _metrics_auth(
    deps: Annotated[Deps, Depends(get_deps)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    if not deps.settings.public_metrics:
        await require_operator(deps, credentials)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(_metrics_auth)],
    responses={200: {"content": {CONTENT_TYPE: {}}}, 401: {"description": "missing token"}},
)
async def metrics(deps: DepsDep) -> PlainTextResponse:
    """Prometheus metrics (operator token unless `public_metrics` is set)."""
    gauges = await run_in_threadpool(deps.service.gauges)
    text = render([*deps.metrics.families(), *gauges])
    return PlainTextResponse(text, media_type=CONTENT_TYPE)
