"""`/api/v1/clusters`: the operator's view of clusters, and the cluster API itself.

Operators (operator token): list and get clusters, list a cluster's nodes (fetched
from the cluster), drain, cordon and uncordon one of them (done by the cluster).
Clusters: register (registration token) and report (their own credential, issued at
registration).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Response, status
from fastapi.concurrency import run_in_threadpool

from root_orchestrator.auth import (
    ClusterCredential,
    Registration,
    require_operator,
    unauthorized,
)
from root_orchestrator.cluster_client import ClusterRefused, ClusterUnavailable
from root_orchestrator.deps import Deps, DepsDep, ServiceDep, model_response
from root_orchestrator.node_actions import moved_and_stuck, node_name, resolve_node
from schemas.cluster import ClusterRegistration, ClusterRegistrationResponse, ClusterReport
from schemas.common import ID_PATTERN
from schemas.root_api import (
    ClusterList,
    ClusterView,
    IdentityReset,
    NodeActionResult,
    NodeList,
    ReportAck,
)

__all__ = ["cluster_api", "router"]

router = APIRouter(prefix="/clusters", tags=["clusters"], dependencies=[Depends(require_operator)])
cluster_api = APIRouter(prefix="/clusters", tags=["cluster API"])

_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "missing or wrong bearer token"},
    404: {"description": "no such cluster"},
    422: {"description": "a bad path, query or body value (the field is named)"},
}

#: A cluster id or name in a path: anything else is a 422 naming the parameter.
ClusterRef = Annotated[str, Path(pattern=ID_PATTERN, description="cluster id or name")]


@cluster_api.post(
    "/register",
    responses={
        401: {
            "description": "missing or wrong registration token; or a name-bound token "
            "used for another name, expired, or (once used) for another cluster"
        },
        403: {"description": "a known cluster id with a wrong credential: register afresh"},
        409: {
            "description": "the name belongs to a known cluster: re-register with its "
            "cluster_id and credential, or an operator approves a new identity "
            "(reset-identity, or a token bound to the name)"
        },
        422: _ERRORS[422],
    },
)
async def register_cluster(
    registration: ClusterRegistration, grant: Registration, service: ServiceDep
) -> ClusterRegistrationResponse:
    """Register (or re-register) a cluster; the reply's credential authenticates reports.

    A known name is only re-registered by its cluster (cluster_id + credential), or
    taken over after an operator's approval (see docs/api.md, "Registration")."""
    return await run_in_threadpool(service.register_cluster, registration, grant)


async def reporting_cluster(
    cluster_id: Annotated[str, Path(pattern=ID_PATTERN)],
    credential: ClusterCredential,
    service: ServiceDep,
) -> str:
    """Dependency: the cluster id of the path, proven by the credential it was issued."""
    # lock-free and a few microseconds (one SHA-256): no worker-thread hop
    if not service.authenticate_cluster(cluster_id, credential):
        raise unauthorized("unknown cluster or wrong credential")
    return cluster_id


@cluster_api.post(
    "/{cluster_id}/report",
    response_model=ReportAck,
    responses={401: _ERRORS[401], 422: _ERRORS[422]},
)
async def report(
    cluster_id: Annotated[str, Depends(reporting_cluster)],
    body: ClusterReport,
    deps: DepsDep,
) -> Response:
    """A cluster's aggregated capacity and instance changes (credential as bearer)."""
    liveness = await deps.service.apply_report_async(cluster_id, body)
    ack = ReportAck(
        cluster_id=cluster_id,
        liveness=liveness,
        report_interval_s=deps.settings.report_interval,
    )
    return model_response(ack)


@router.post("/{cluster}/reset-identity", responses=_ERRORS)
async def reset_identity(
    cluster: ClusterRef, service: ServiceDep, body: IdentityReset | None = None
) -> ClusterView:
    """Approve a new identity for a cluster (by id or name): its credential stops
    working now, and the next registration of its name within `ttl_s` takes the
    record over (same id and jobs) with a new credential."""
    ttl = (body or IdentityReset()).ttl_s
    return await run_in_threadpool(service.reset_identity, cluster, ttl)


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


#: A node id or name in a path: anything else is a 422 naming the parameter.
NodeRef = Annotated[str, Path(pattern=ID_PATTERN, description="node id or name")]

_NODE_ERRORS: dict[int | str, dict[str, str]] = {
    401: _ERRORS[401],
    404: {"description": "no such cluster, or no such node in it"},
    409: {"description": "several nodes have that name: give the id"},
    422: _ERRORS[422],
    503: {"description": "the cluster could not be reached (the detail says why)"},
}


async def _node_action(deps: Deps, cluster: str, node: str, action: str) -> NodeActionResult:
    """Find the node in the cluster's live list, ask the cluster to act, record it."""
    rec, token = await run_in_threadpool(deps.service.cluster_endpoint, cluster)

    def unreachable(exc: Exception) -> HTTPException:
        deps.metrics.cluster_calls.inc(f"node_{action}", "error")
        return HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"cluster {rec.name} is {rec.liveness.value} and did not answer: {exc}",
        )

    try:
        nodes = await deps.client.nodes(rec.url, token)
    except ClusterUnavailable as exc:
        raise unreachable(exc) from exc
    target = resolve_node(nodes, node, rec.name)
    node_id = str(target.get("id"))
    try:
        answer = await deps.client.node_action(rec.url, token, node_id, action)
    except ClusterUnavailable as exc:
        raise unreachable(exc) from exc
    except ClusterRefused as exc:
        deps.metrics.cluster_calls.inc(f"node_{action}", "refused")
        code = status.HTTP_404_NOT_FOUND if exc.status == 404 else status.HTTP_409_CONFLICT
        raise HTTPException(code, f"cluster {rec.name}: {exc.detail}") from exc
    deps.metrics.cluster_calls.inc(f"node_{action}", "ok")
    moved, stuck = moved_and_stuck(answer, nodes)
    name = node_name(target) or node_id
    await run_in_threadpool(
        lambda: deps.service.record_node_action(
            rec, node_id, name, action, moved=len(moved), stuck=len(stuck)
        )
    )
    return NodeActionResult(
        cluster_id=rec.id,
        cluster_name=rec.name,
        action=action,
        node=dict(answer["node"]),
        moved=moved,
        stuck=stuck,
    )


@router.post("/{cluster}/nodes/{node}/drain", responses=_NODE_ERRORS)
async def drain_node(cluster: ClusterRef, node: NodeRef, deps: DepsDep) -> NodeActionResult:
    """Drain a node (by id or name): no new placements, its instances move to other
    nodes now; `moved` says where, `stuck` what could not move and why."""
    return await _node_action(deps, cluster, node, "drain")


@router.post("/{cluster}/nodes/{node}/cordon", responses=_NODE_ERRORS)
async def cordon_node(cluster: ClusterRef, node: NodeRef, deps: DepsDep) -> NodeActionResult:
    """Cordon a node: no new placements, what runs there stays; its capacity leaves
    the cluster's reports."""
    return await _node_action(deps, cluster, node, "cordon")


@router.post("/{cluster}/nodes/{node}/uncordon", responses=_NODE_ERRORS)
async def uncordon_node(cluster: ClusterRef, node: NodeRef, deps: DepsDep) -> NodeActionResult:
    """Uncordon a node: it takes new placements again (ends a drain too; moved
    instances stay where they are)."""
    return await _node_action(deps, cluster, node, "uncordon")
