"""Operator commands: terminate an instance, drain, cordon (and their undo).

Each changes the state tables and emits effects into the given buffer; the answer is
the API view of what changed. The TERMINATE and DEPLOY commands these cause are sent
by `sending`.
"""

from __future__ import annotations

from cluster_orchestrator.effects import Effects
from cluster_orchestrator.errors import NotFound
from cluster_orchestrator.lifecycle import transition
from cluster_orchestrator.queries import instance_view, node_detail
from cluster_orchestrator.records import NodeRecord
from cluster_orchestrator.scheduling import move
from cluster_orchestrator.sending import send_terminate
from cluster_orchestrator.state import ClusterState
from schemas.cluster_api import DrainResult, InstanceView
from schemas.job import InstanceState
from schemas.node import Liveness

__all__ = ["delete_instance", "set_cordoned", "set_draining"]


def delete_instance(st: ClusterState, fx: Effects, instance_id: str) -> InstanceView:
    """Stop an instance: TERMINATE to its node, TERMINATED once acked (at once when no
    reachable node holds it); `NotFound`."""
    inst = st.instances.get(instance_id)
    if inst is None:
        raise NotFound(f"instance {instance_id} not found")
    if inst.state.terminal:
        return instance_view(st, inst)
    inst.desired = "stopped"
    st.drop_pending_deploys(inst.id)
    node = st.nodes.get(inst.node_id) if inst.node_id else None
    if node is None or node.liveness.state is Liveness.LOST:
        transition(st, fx, inst, InstanceState.TERMINATED, "terminated (no reachable node held it)")
    else:
        fx.event(
            inst,
            kind="instance.terminating",
            subject=inst.id,
            job_id=inst.job_id,
            instance_id=inst.id,
            node_id=node.id,
            state=inst.state.value,
            reason="termination requested",
        )
        inst.reason = "termination requested"
        fx.persist_instance(inst)
        send_terminate(st, fx, node.id, inst.id, "terminated on request", orphan=False)
    return instance_view(st, inst)


def set_draining(st: ClusterState, fx: Effects, node_id: str, draining: bool) -> DrainResult:
    """Drain (or undrain) a node; draining moves its instances elsewhere now."""
    node = st.nodes.get(node_id)
    if node is None:
        raise NotFound(f"node {node_id} not found")
    moved: dict[str, str] = {}
    stuck: dict[str, str] = {}
    if node.draining != draining:
        node.draining = draining
        _operator_flag_changed(
            st,
            fx,
            node,
            "node.drain" if draining else "node.undrain",
            "draining" if draining else "drain cancelled",
        )
    if draining:
        for inst in st.instances_on(node.id):
            if inst.state.terminal or inst.desired != "running":
                continue
            if move(st, fx, inst, f"node {node.info.name} draining", exclude_current=True):
                moved[inst.id] = inst.node_id or ""
            else:
                stuck[inst.id] = inst.reason
    return DrainResult(node=node_detail(st, node, fx.now.mono), moved=moved, stuck=stuck)


def set_cordoned(st: ClusterState, fx: Effects, node_id: str, cordoned: bool) -> DrainResult:
    """Cordon a node (no new placements; what runs there stays), or uncordon it,
    which ends a drain too. Persisted like draining, so it survives a restart."""
    node = st.nodes.get(node_id)
    if node is None:
        raise NotFound(f"node {node_id} not found")
    if node.cordoned != cordoned or (not cordoned and node.draining):
        node.cordoned = cordoned
        if not cordoned:
            node.draining = False
        _operator_flag_changed(
            st,
            fx,
            node,
            "node.cordon" if cordoned else "node.uncordon",
            "cordoned" if cordoned else "uncordoned",
        )
    return DrainResult(node=node_detail(st, node, fx.now.mono))


def _operator_flag_changed(
    st: ClusterState, fx: Effects, node: NodeRecord, kind: str, reason: str
) -> None:
    """A drain or cordon flag of `node` changed: persist it, record `kind`, report."""
    st.index.node_changed(node.id)
    node.reason = reason
    fx.persist_node(node)
    fx.event(
        None, kind=kind, subject=node.id, node_id=node.id, state=node.state.value, reason=reason
    )
    fx.report()
