"""`/api/v1/clusters`: the operator's view of clusters, and the cluster API itself.

Operators (operator token): list and get clusters, list a cluster's nodes (fetched
from the cluster). Clusters: register (registration token) and report (their own
credential, issued at registration).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, status
from fastapi.concurrency import run_in_threadpool

from root_orchestrator.auth import (
    ClusterCredential,
    require_operator,
    require_registration,
    unauthorized,
)
from root_orchestrator.cluster_client import ClusterUnavailable
from root_orchestrator.deps import DepsDep, ServiceDep
from root_orchestrator.models import ClusterList, ClusterView, NodeList, ReportAck
from schemas.cluster import ClusterRegistration, ClusterRegistrationResponse, ClusterReport
from schemas.common import ID_PATTERN

__all__ = ["cluster_api", "router"]

router = APIRouter(prefix="/clusters", tags=["clusters"], dependencies=[Depends(require_operator)])
cluster_api = APIRouter(prefix="/clusters", tags=["cluster API"])

_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "missing or wrong bearer token"},
    404: {"description": "no such cluster"},
}

#: A cluster id or name in a path: anything else is a 422 naming the parameter.
ClusterRef = Annotated[str, Path(pattern=ID_PATTERN, description="cluster id or name")]


@cluster_api.post(
    "/register",
    dependencies=[Depends(require_registration)],
    responses={
        401: _ERRORS[401],
        403: {"description": "a known cluster id with a wrong credential: register afresh"},
        409: {"description": "name taken by a READY cluster"},
    },
)
async def register_cluster(
    registration: ClusterRegistration, service: ServiceDep
) -> ClusterRegistrationResponse:
    """Register (or re-register) a cluster; the reply's credential authenticates reports."""
    return await run_in_threadpool(service.register_cluster, registration)


async def reporting_cluster(
    cluster_id: Annotated[str, Path(pattern=ID_PATTERN)],
    credential: ClusterCredential,
    service: ServiceDep,
) -> str:
    """Dependency: the cluster id of the path, proven by the credential it was issued."""
    if not await run_in_threadpool(service.authenticate_cluster, cluster_id, credential):
        raise unauthorized("unknown cluster or wrong credential")
    return cluster_id


@cluster_api.post("/{cluster_id}/report", responses={401: _ERRORS[401]})
async def report(
    cluster_id: Annotated[str, Depends(reporting_cluster)],
    body: ClusterReport,
    deps: DepsDep,
) -> ReportAck:
    """A cluster's aggregated capacity and instance changes (credential as bearer)."""
    liveness = await run_in_threadpool(deps.service.apply_report, cluster_id, body)
    return ReportAck(
        cluster_id=cluster_id,
        liveness=liveness,
        report_interval_s=deps.settings.report_interval,
    )


@router.get("", responses=_ERRORS)
async def list_clusters(service: ServiceDep) -> ClusterList:
    """Every registered cluster with its liveness and latest report."""
    return await run_in_threadpool(service.list_clusters)


@router.get("/{cluster}", responses=_ERRORS)
async def get_cluster(cluster: ClusterRef, service: ServiceDep) -> ClusterView:
    """One cluster (by id or name): latest aggregated report and liveness."""
    return await run_in_threadpool(service.get_cluster, cluster)


@router.get(
    "/{cluster}/nodes",
    responses={
        **_ERRORS,
        502: {"description": "the cluster did not answer sensibly"},
    },
)
async def list_nodes(cluster: ClusterRef, deps: DepsDep) -> NodeList:
    """The cluster's nodes, fetched from the cluster's own API."""
    rec, token = await run_in_threadpool(deps.service.cluster_endpoint, cluster)
    try:
        nodes = await deps.client.nodes(rec.url, token)
    except ClusterUnavailable as exc:
        deps.metrics.cluster_calls.inc("nodes", "error")
        raise HTTPException(
            status_code=status.HTTP_502_BAD_GATEWAY,
            detail=f"cluster {rec.name} ({rec.liveness.value}): {exc}",
        ) from exc
    deps.metrics.cluster_calls.inc("nodes", "ok")
    return NodeList(cluster_id=rec.id, cluster_name=rec.name, nodes=nodes)
