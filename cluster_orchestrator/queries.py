"""Read models: the API views and the root report, built from the state tables.

Read-only functions of `state.ClusterState` (and, for an instance that left memory,
the store), run on the core thread so they see a consistent state. The response
models themselves are in `views`.
"""

from __future__ import annotations

from typing import Any

from cluster_orchestrator.aggregate import NodeSnapshot, aggregate
from cluster_orchestrator.errors import NotFound
from cluster_orchestrator.lifecycle import change_of
from cluster_orchestrator.records import (
    EVENTS,
    INSTANCES,
    InstanceRecord,
    NodeRecord,
    event_from_doc,
)
from cluster_orchestrator.state import ClusterState
from schemas.cluster import MAX_INSTANCE_CHANGES, ClusterReport, InstanceChange
from schemas.cluster_api import InstanceView, NodeDetail
from schemas.job import InstanceState
from schemas.node import Liveness
from store import Store

__all__ = [
    "build_report",
    "counts",
    "get_instance",
    "get_node",
    "instance_view",
    "list_instances",
    "list_nodes",
    "node_detail",
]


def instance_view(st: ClusterState, inst: InstanceRecord) -> InstanceView:
    """The API view of an instance."""
    return InstanceView(
        id=inst.id,
        job_id=inst.job_id,
        job_name=inst.job_name,
        replica=inst.replica,
        state=inst.state,
        desired=inst.desired,
        node_id=inst.node_id,
        node_name=st.node_name(inst.node_id) if inst.node_id else None,
        reason=inst.reason,
        exit_code=inst.exit_code,
        restarts=inst.restarts,
        created_at=inst.created_at,
        updated_at=inst.updated_at,
        spec=inst.spec,
        constraints=inst.constraints,
        placement_policy=inst.placement_policy,
        lost_grace_s=inst.lost_grace_s,
        placement=inst.placement,
        events=list(inst.events),
        inference=st.inference.get(inst.id),
    )


def get_instance(st: ClusterState, store: Store, instance_id: str) -> InstanceView:
    """One instance (memory first, then the store for evicted ones); `NotFound`."""
    inst = st.instances.get(instance_id)
    if inst is None:
        doc = store.get(INSTANCES, instance_id)
        if doc is None:
            raise NotFound(f"instance {instance_id} not found")
        inst = InstanceRecord.from_doc(doc)
        for ev in store.find(
            EVENTS, {"instance_id": instance_id}, order_by="_id", descending=True, limit=50
        ):
            inst.events.appendleft(event_from_doc(ev))
    return instance_view(st, inst)


def list_instances(
    st: ClusterState,
    *,
    state: InstanceState | None = None,
    node_id: str | None = None,
    job_id: str | None = None,
) -> list[InstanceView]:
    """Instances in memory (unfinished ones and recently finished ones)."""
    out = []
    for inst in sorted(st.instances.values(), key=lambda i: (i.created_at, i.id)):
        if state is not None and inst.state is not state:
            continue
        if node_id is not None and inst.node_id != node_id:
            continue
        if job_id is not None and inst.job_id != job_id:
            continue
        out.append(instance_view(st, inst))
    return out


def node_detail(
    st: ClusterState, node: NodeRecord, now_mono: float, *, with_status: bool = True
) -> NodeDetail:
    """The API view of a node (`now_mono`: for how long it has been unhealthy)."""
    return NodeDetail(
        id=node.id,
        info=node.info,
        liveness=node.liveness.state,
        draining=node.draining,
        cordoned=node.cordoned,
        last_seen=node.last_seen,
        status=node.status if with_status else None,
        reason=node.reason[:1024],
        instances=[i.id for i in st.instances_on(node.id) if not i.state.terminal],
        unhealthy_for_s=round(node.liveness.unhealthy_for(now_mono), 3),
        joined_at=node.joined_at,
        presence_online=node.presence_online,
    )


def get_node(st: ClusterState, node_id: str, now_mono: float) -> NodeDetail:
    """One node; `NotFound`."""
    node = st.nodes.get(node_id)
    if node is None:
        raise NotFound(f"node {node_id} not found")
    return node_detail(st, node, now_mono)


def list_nodes(
    st: ClusterState,
    now_mono: float,
    *,
    liveness: Liveness | None = None,
    with_status: bool = True,
) -> list[NodeDetail]:
    """Every node, by name, optionally filtered by liveness."""
    return [
        node_detail(st, n, now_mono, with_status=with_status)
        for n in sorted(st.nodes.values(), key=lambda n: (n.info.name, n.id))
        if liveness is None or n.liveness.state is liveness
    ]


def build_report(
    st: ClusterState, *, wall: float, seq: int, full: bool, changes: list[InstanceChange]
) -> ClusterReport:
    """The aggregated report for the root; a full one lists every instance after the
    changes it carries."""
    snaps = [
        NodeSnapshot(
            liveness=node.liveness.state,
            info=node.info,
            candidate=st.index.candidate(node.id),
        )
        for node in st.nodes.values()
    ]
    instances = changes
    if full:
        # The changes since the last report go first, so the root still sees each step
        # (e.g. a task's STARTING when its node started it again), not only where every
        # instance ended up; without room for both, the listing alone.
        listing = [change_of(st, inst) for inst in st.instances.values()]
        both = len(changes) + len(listing) <= MAX_INSTANCE_CHANGES
        instances = changes + listing if both else listing
    truncated = len(instances) > MAX_INSTANCE_CHANGES
    return aggregate(
        snaps,
        ts=wall,
        seq=seq,
        full=full and not truncated,
        instances=instances[-MAX_INSTANCE_CHANGES:],
    )


def counts(st: ClusterState) -> dict[str, Any]:
    """Counts of nodes by liveness, instances by state and commands waiting (for
    ``/api/v1/stats`` and ``/healthz``; the loop adds its queue figures)."""
    by_state: dict[str, int] = {}
    for node in st.nodes.values():
        by_state[node.liveness.state.value] = by_state.get(node.liveness.state.value, 0) + 1
    inst_states: dict[str, int] = {}
    for inst in st.instances.values():
        inst_states[inst.state.value] = inst_states.get(inst.state.value, 0) + 1
    return {
        "nodes": len(st.nodes),
        "nodes_by_liveness": by_state,
        "instances_by_state": inst_states,
        "pending_commands": len(st.pending),
    }
