"""Node API: join, list, get, drain."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool

from cluster_orchestrator.core import Forbidden, JoinGrant, NotFound
from cluster_orchestrator.deps import CoreDep, JoinAuth, OperatorAuth, ServicesDep
from cluster_orchestrator.records import new_secret
from cluster_orchestrator.views import DrainResult, NodeDetail, NodeList
from schemas.node import JoinRequest, JoinResponse, Liveness, MqttConnectInfo

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/nodes", tags=["nodes"])


@router.post(
    "",
    response_model=JoinResponse,
    status_code=status.HTTP_201_CREATED,
    dependencies=[JoinAuth],
    summary="Join a node (bearer: join token)",
)
async def join(body: JoinRequest, services: ServicesDep) -> JoinResponse:
    """Admit a node: id, identity secret and fresh per-node MQTT credentials.

    A node that joined before sends its `node_id` and `node_secret` and keeps its id;
    a wrong secret is refused with 403. The MQTT password is new on every join.
    """
    core = services.core
    try:
        grant: JoinGrant = await core.run(lambda: core.join(body))
    except Forbidden as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    if grant.durable is not None:
        try:
            await asyncio.wrap_future(grant.durable)
        except Exception as exc:
            log.error("could not store node %s: %s", grant.node_id, exc)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "store unavailable") from None
    if services.dynsec is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "broker admin unavailable")
    password = new_secret()
    dynsec = services.dynsec
    try:
        creds = await run_in_threadpool(dynsec.ensure_node_client, grant.node_id, password)
    except Exception as exc:
        log.error("creating MQTT credentials for node %s failed: %s", grant.node_id, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "could not create MQTT credentials; retry"
        ) from None
    settings = services.settings
    return JoinResponse(
        node_id=grant.node_id,
        node_secret=SecretStr(grant.node_secret),
        cluster_id=services.reporter.cluster_id if services.reporter else None,
        cluster_name=settings.name,
        mqtt=MqttConnectInfo(
            host=settings.node_broker_host,
            port=settings.node_broker_port,
            username=creds.username,
            password=SecretStr(password),
            client_id=creds.client_id,
        ),
        status_interval_s=settings.status_interval,
    )


@router.get("", response_model=NodeList, dependencies=[OperatorAuth], summary="List nodes")
async def list_nodes(
    core: CoreDep,
    liveness: Annotated[Liveness | None, Query(description="only nodes in this state")] = None,
    status_: Annotated[
        bool, Query(alias="status", description="include each node's latest status")
    ] = True,
) -> NodeList:
    """Every joined node with liveness, draining flag, last status and instances."""
    nodes = await core.run(lambda: core.list_nodes(liveness=liveness, with_status=status_))
    return NodeList(nodes=nodes, count=len(nodes))


@router.get(
    "/{node_id}", response_model=NodeDetail, dependencies=[OperatorAuth], summary="Get a node"
)
async def get_node(node_id: str, core: CoreDep) -> NodeDetail:
    """Static description, latest status (with its task list), liveness, instances."""
    try:
        return await core.run(lambda: core.get_node(node_id))
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.post(
    "/{node_id}/drain",
    response_model=DrainResult,
    dependencies=[OperatorAuth],
    summary="Drain a node",
)
async def drain(node_id: str, core: CoreDep) -> DrainResult:
    """No new placements on the node; its instances are moved to other nodes now."""
    try:
        return await core.run(lambda: core.set_draining(node_id, True))
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.delete(
    "/{node_id}/drain",
    response_model=DrainResult,
    dependencies=[OperatorAuth],
    summary="Stop draining a node",
)
async def undrain(node_id: str, core: CoreDep) -> DrainResult:
    """The node takes new placements again (moved instances stay where they are)."""
    try:
        return await core.run(lambda: core.set_draining(node_id, False))
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
