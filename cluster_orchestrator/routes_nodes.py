"""Node API: join (and rejoin), list, get, drain, cordon, uncordon, remove."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool

from cluster_orchestrator.core import (
    Forbidden,
    JoinGrant,
    NodeBusy,
    NodeRemoval,
    NotFound,
)
from cluster_orchestrator.deps import (
    CoreDep,
    JoinOrRejoin,
    OperatorAuth,
    ServicesDep,
)
from cluster_orchestrator.records import new_secret
from schemas.cluster_api import API_ERRORS, DrainResult, NodeDetail, NodeList
from schemas.common import ID_PATTERN
from schemas.node import JoinRequest, JoinResponse, Liveness, MqttConnectInfo

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/nodes", tags=["nodes"], responses=API_ERRORS)

#: A node id in a path: anything else is a 422 naming the parameter.
NodeId = Annotated[str, Path(pattern=ID_PATTERN, description="node id")]


_REFUSALS: dict[int | str, dict[str, object]] = {
    401: {
        "description": "no accepted join token where one is needed (`reason`: "
        "`join_token_missing`, `join_token_invalid` or `node_unknown`)"
    },
    403: {
        "description": "wrong node secret (`node_secret_wrong`) or a removed node (`node_removed`)"
    },
}


def _refusal(code: int, detail: str, reason: str) -> JSONResponse:
    """A refused join: ``{"detail": why, "reason": machine-readable code}`` (401s are
    raised as `JoinUnauthorized` and rendered the same way by the app's handler)."""
    return JSONResponse({"detail": detail, "reason": reason}, status_code=code)


@router.post(
    "",
    response_model=JoinResponse,
    # unset optional fields stay out: a plain-MQTT reply is what older engines expect
    response_model_exclude_none=True,
    status_code=status.HTTP_201_CREATED,
    responses=_REFUSALS,
    summary="Join a node (bearer: join token) or rejoin it (its node id and secret)",
)
async def join(
    body: JoinRequest, services: ServicesDep, token: JoinOrRejoin
) -> JoinResponse | JSONResponse:
    """Admit a node: id, identity secret and fresh per-node MQTT credentials.

    A new node needs one of the accepted join tokens as bearer token. A node that
    joined before sends its `node_id` and `node_secret` and keeps its id: the secret
    alone authenticates it, so a rejoin works after the join tokens were rotated
    (a join token it sends is then ignored). A wrong secret, or the id of a node the
    operator removed, is refused with 403; an unknown id without a join token raises
    `JoinUnauthorized` (``node_unknown``), which the app answers with 401. The MQTT
    password is new on every join.
    """
    core = services.core
    try:
        grant: JoinGrant = await core.run(lambda: core.join(body, join_token_ok=token == "ok"))
    except Forbidden as exc:
        return _refusal(status.HTTP_403_FORBIDDEN, str(exc), exc.reason)
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
    node_id = grant.node_id
    if not await core.run(lambda: node_id in core.nodes):  # removed meanwhile
        try:
            await run_in_threadpool(dynsec.delete_node_client, node_id)
        except Exception as exc:
            log.error("deleting the MQTT client of removed node %s failed: %s", node_id, exc)
        return _refusal(
            status.HTTP_403_FORBIDDEN, f"node {node_id} was removed while joining", "node_removed"
        )
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
            tls=settings.node_broker_tls,
            ca_pem=services.broker_ca_pem if settings.node_broker_tls else None,
            server_name=settings.advertised_broker_server_name
            if settings.node_broker_tls
            else None,
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
    "/{node_id}",
    response_model=NodeDetail,
    dependencies=[OperatorAuth],
    responses={404: {"description": "no such node"}},
    summary="Get a node",
)
async def get_node(node_id: NodeId, core: CoreDep) -> NodeDetail:
    """Static description, latest status (with its task list), liveness, instances."""
    try:
        return await core.run(lambda: core.get_node(node_id))
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.delete(
    "/{node_id}",
    response_model=NodeDetail,
    dependencies=[OperatorAuth],
    responses={404: {"description": "no such node"}},
    summary="Remove a node for good",
)
async def remove_node(node_id: NodeId, services: ServicesDep) -> NodeDetail:
    """Forget a node and refuse its identity from now on (a lost or stolen device).

    409 while instances are assigned to it: drain it first. Its MQTT client is deleted
    (the broker drops its connection); a later rejoin with its stored identity is
    refused with 403 (`reason`: `node_removed`). Tasks already running on the device
    are not stopped by this. Answers the node as it was.
    """
    core = services.core
    try:
        removal: NodeRemoval = await core.run(lambda: core.remove_node(node_id))
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except NodeBusy as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    if removal.durable is not None:
        try:
            await asyncio.wrap_future(removal.durable)
        except Exception as exc:
            log.error("could not store the removal of node %s: %s", node_id, exc)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "node removed, but the store failed: the removal may not survive a restart",
            ) from None
    if services.dynsec is not None:
        try:
            await run_in_threadpool(services.dynsec.delete_node_client, node_id)
        except Exception as exc:
            log.error("deleting the MQTT client of removed node %s failed: %s", node_id, exc)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"node removed, but its MQTT client could not be deleted; delete it with "
                f"mosquitto_ctrl dynsec deleteClient node-{node_id}",
            ) from None
    return removal.node


@router.post(
    "/{node_id}/drain",
    response_model=DrainResult,
    dependencies=[OperatorAuth],
    responses={404: {"description": "no such node"}},
    summary="Drain a node",
)
async def drain(node_id: NodeId, core: CoreDep) -> DrainResult:
    """No new placements on the node; its instances are moved to other nodes now."""
    try:
        return await core.run(lambda: core.set_draining(node_id, True))
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.delete(
    "/{node_id}/drain",
    response_model=DrainResult,
    dependencies=[OperatorAuth],
    responses={404: {"description": "no such node"}},
    summary="Stop draining a node",
)
async def undrain(node_id: NodeId, core: CoreDep) -> DrainResult:
    """The node takes new placements again (moved instances stay where they are)."""
    try:
        return await core.run(lambda: core.set_draining(node_id, False))
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.post(
    "/{node_id}/cordon",
    response_model=DrainResult,
    dependencies=[OperatorAuth],
    responses={404: {"description": "no such node"}},
    summary="Cordon a node",
)
async def cordon(node_id: NodeId, core: CoreDep) -> DrainResult:
    """No new placements on the node; what runs there stays (persisted)."""
    try:
        return await core.run(lambda: core.set_cordoned(node_id, True))
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.post(
    "/{node_id}/uncordon",
    response_model=DrainResult,
    dependencies=[OperatorAuth],
    responses={404: {"description": "no such node"}},
    summary="Uncordon a node (ends a drain too)",
)
async def uncordon(node_id: NodeId, core: CoreDep) -> DrainResult:
    """The node takes new placements again: clears cordon and drain (moved instances
    stay where they are)."""
    try:
        return await core.run(lambda: core.set_cordoned(node_id, False))
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
