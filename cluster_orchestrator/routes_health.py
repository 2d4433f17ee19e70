"""Health, metrics and ingestion statistics."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, PlainTextResponse

from cluster_orchestrator.deps import BearerDep, OperatorAuth, ServicesDep, require_operator

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Health")
async def healthz(services: ServicesDep) -> JSONResponse:
    """200 when the core loop answers and the MQTT client is alive, else 503.

    The MQTT client is alive while its network thread runs and the broker connection is
    up or has been down for at most `broker_health_grace`; otherwise `mqtt` names why
    (`mqtt_loop_dead`, `broker_disconnected`) and `reasons` lists every failed check.
    Also shows rejected MQTT messages by reason (no secrets, no auth needed).
    """
    core = services.core
    reasons: list[str] = []
    detail: dict[str, Any] = {"cluster": services.settings.name}
    try:
        detail.update(await asyncio.wait_for(core.run(core.stats), timeout=5.0))
    except TimeoutError:
        reasons.append("core_not_answering")
        detail["core"] = "not answering"
    mqtt = services.mqtt
    if mqtt is None:
        mqtt_ok, mqtt_state = False, "mqtt_stopped"
    else:
        mqtt_ok, mqtt_state = mqtt.health(services.settings.broker_health_grace)
        detail["broker_disconnected_s"] = round(mqtt.disconnected_for, 3)
    detail["broker_connected"] = mqtt is not None and mqtt.connected
    detail["mqtt"] = mqtt_state
    if not mqtt_ok:
        reasons.append(mqtt_state)
    ok = not reasons
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
    if reasons:
        detail["reasons"] = reasons
    return JSONResponse(detail, status_code=200 if ok else 503)


async def _metrics_auth(services: ServicesDep, credentials: BearerDep) -> None:
    """The operator token, unless `public_metrics` is set."""
    if not services.settings.public_metrics:
        await require_operator(services, credentials)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(_metrics_auth)],
    summary="Prometheus metrics",
    responses={401: {"description": "missing or wrong operator token"}},
)
async def metrics(services: ServicesDep) -> PlainTextResponse:
    """Prometheus text format: messages, rejections by reason, commands, liveness, lag.

    Needs the operator token (as every API route but `/healthz` and the join) unless
    `public_metrics` is set."""
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
