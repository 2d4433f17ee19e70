"""Instance API: place, delete, list, get (used by the root and by operators)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status

from cluster_orchestrator.core import NotFound
from cluster_orchestrator.deps import CoreDep, OperatorAuth
from schemas.cluster import (
    PlaceInstanceBatch,
    PlaceInstanceBatchResponse,
    PlaceInstanceRequest,
    PlaceInstanceResponse,
)
from schemas.cluster_api import API_ERRORS, InstanceList, InstanceView
from schemas.common import ID_PATTERN
from schemas.job import InstanceState

__all__ = ["router"]

router = APIRouter(
    prefix="/api/v1/instances",
    tags=["instances"],
    dependencies=[OperatorAuth],
    responses=API_ERRORS,
)

#: An instance id in a path: anything else is a 422 naming the parameter.
InstanceId = Annotated[str, Path(pattern=ID_PATTERN, description="instance id")]


@router.post(
    "",
    response_model=PlaceInstanceResponse,
    summary="Place an instance on a node of this cluster",
    responses={
        202: {"description": "accepted: a node was chosen, the DEPLOY is on its way"},
        200: {"description": "rejected: no node fits; `reasons` says why"},
    },
)
async def place_instance(
    body: PlaceInstanceRequest, core: CoreDep, response: Response
) -> PlaceInstanceResponse:
    """Choose a node now (reserving its resources) and send the DEPLOY asynchronously.

    Answers 202 with `accepted: true` and the node, or 200 with `accepted: false` and
    the rejection reasons of the placement decision. Placing an id that is already
    active returns its current placement (idempotent retries).
    """
    result = await core.run(lambda: core.place_instance(body))
    response.status_code = status.HTTP_202_ACCEPTED if result.accepted else status.HTTP_200_OK
    return result


@router.post(
    "/batch",
    response_model=PlaceInstanceBatchResponse,
    summary="Place several instances (one answer each, in order)",
)
async def place_instances(body: PlaceInstanceBatch, core: CoreDep) -> PlaceInstanceBatchResponse:
    """Place up to 500 instances in one call, each exactly as `POST /api/v1/instances`
    would (same decision, reservations made one after the other, idempotent by id), in
    one hand-off to the core: what a root sends when many instances need a cluster at
    once (a mass failover), without one HTTP request per instance."""
    requests = list(body.instances)
    results = await core.run(lambda: [core.place_instance(r) for r in requests])
    return PlaceInstanceBatchResponse(results=results)


@router.get("", response_model=InstanceList, summary="List instances")
async def list_instances(
    core: CoreDep,
    state: Annotated[InstanceState | None, Query()] = None,
    node_id: Annotated[str | None, Query(max_length=64)] = None,
    job_id: Annotated[str | None, Query(max_length=64)] = None,
) -> InstanceList:
    """Unfinished instances and recently finished ones, oldest first."""
    items = await core.run(lambda: core.list_instances(state=state, node_id=node_id, job_id=job_id))
    return InstanceList(instances=items, count=len(items))


@router.get(
    "/{instance_id}",
    response_model=InstanceView,
    responses={404: {"description": "no such instance"}},
    summary="Get an instance",
)
async def get_instance(instance_id: InstanceId, core: CoreDep) -> InstanceView:
    """State, node, placement explanation and recent events of one instance."""
    try:
        return await core.run(lambda: core.get_instance(instance_id))
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.delete(
    "/{instance_id}",
    response_model=InstanceView,
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"description": "no such instance"}},
    summary="Terminate an instance",
)
async def delete_instance(instance_id: InstanceId, core: CoreDep) -> InstanceView:
    """Send TERMINATE to its node; the state becomes TERMINATED once the node acks."""
    try:
        return await core.run(lambda: core.delete_instance(instance_id))
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
