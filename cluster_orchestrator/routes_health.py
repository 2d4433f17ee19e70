"""Health, metrics and ingestion statistics."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, PlainTextResponse

from cluster_orchestrator.deps import OperatorAuth, ServicesDep

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Health")
async def healthz(services: ServicesDep) -> JSONResponse:
    """200 when the core loop answers and the broker connection is up, else 503.

    Also shows rejected MQTT messages by reason (no secrets, no auth needed).
    """
    core = services.core
    ok = True
    detail: dict[str, Any] = {"cluster": services.settings.name}
    try:
        detail.update(await asyncio.wait_for(core.run(core.stats), timeout=5.0))
    except TimeoutError:
        ok = False
        detail["core"] = "not answering"
    mqtt_ok = services.mqtt is not None and services.mqtt.connected
    detail["broker_connected"] = mqtt_ok
    ok = ok and mqtt_ok
    detail["mqtt_rejected"] = services.metrics.counter_total("edge_cluster_mqtt_rejected_total")
    detail["mqtt_rejected_by_reason"] = services.metrics.counter_by(
        "edge_cluster_mqtt_rejected_total", "reason"
    )
    reporter = services.reporter
    if reporter is not None:
        detail["root"] = {
            "cluster_id": reporter.cluster_id,
            "registered": reporter.registered,
            "last_success": reporter.last_success,
            "last_error": reporter.last_error,
        }
    detail["uptime_s"] = round(time.time() - services.started_at, 3)
    detail["status"] = "ok" if ok else "degraded"
    return JSONResponse(detail, status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
async def metrics(services: ServicesDep) -> PlainTextResponse:
    """Prometheus text format: messages, rejections by reason, commands, liveness, lag."""
    return PlainTextResponse(
        services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


@router.get("/api/v1/stats", dependencies=[OperatorAuth], summary="Ingestion statistics")
async def stats(
    services: ServicesDep,
    reset: Annotated[bool, Query(description="clear the lag window after reading")] = False,
) -> dict[str, Any]:
    """Status ingestion lag percentiles (publish ts -> applied by the core) and counts."""
    core = services.core
    counts = await core.run(core.stats)
    return {"status_lag": services.metrics.lag_summary(reset=reset), **counts}
