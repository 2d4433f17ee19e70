"""State changes of instances and nodes, with what each change implies.

`transition` is the one way an instance changes state: the record, its placement
index entry, an event, its document, a metric and (usually) an instance change for
the root. `node_transition` does the same for a node's liveness. Both only change
memory and emit effects.
"""

from __future__ import annotations

import logging
from typing import Any

from cluster_orchestrator.effects import Effects
from cluster_orchestrator.liveness import Transition
from cluster_orchestrator.records import InstanceRecord, NodeRecord
from cluster_orchestrator.state import ClusterState
from schemas.cluster import InstanceChange, InstanceChangeData
from schemas.job import InstanceState
from schemas.node import Liveness

__all__ = ["change_of", "fail", "node_transition", "transition"]

log = logging.getLogger(__name__)


def transition(
    st: ClusterState,
    fx: Effects,
    inst: InstanceRecord,
    state: InstanceState,
    reason: str,
    *,
    exit_code: int | None = None,
    data: dict[str, Any] | None = None,
    report: bool = True,
    persist: bool = True,
) -> None:
    """Change an instance's state: event, store, metrics, report.

    `persist=False` leaves the instance document to the caller's next write (a
    placement writes it once, after SCHEDULED and ASSIGNED); the event is kept
    either way."""
    if state is inst.state and reason == inst.reason and exit_code == inst.exit_code:
        return
    previous = inst.state
    inst.state = state
    st.index.sync(inst)  # placement: a finished instance frees its reservation
    inst.reason = reason[:1024]
    if exit_code is not None:
        inst.exit_code = exit_code
    inst.updated_at = fx.now.wall
    if state.terminal:
        st.drop_pending_deploys(inst.id)
        st.inference.pop(inst.id, None)
    ev_data = {"previous": previous.value, **(data or {})}
    fx.event(
        inst,
        kind="instance.state",
        subject=inst.id,
        state=state.value,
        reason=inst.reason,
        job_id=inst.job_id,
        instance_id=inst.id,
        node_id=inst.node_id,
        data=ev_data,
    )
    if persist:
        fx.persist_instance(inst)
    fx.count("edge_cluster_instance_transitions_total", {"state": state.value})
    if report:
        fx.report(change_of(st, inst))
    log.debug(
        "instance %s %s -> %s on %s: %s",
        inst.id,
        previous.value,
        state.value,
        st.node_name(inst.node_id),
        inst.reason,
    )


def change_of(st: ClusterState, inst: InstanceRecord) -> InstanceChange:
    """The instance as the root learns it: state, node, reason, and as data the node
    name, restarts and the latest inference figures (full reports refresh them)."""
    stats = st.inference.get(inst.id)
    name, restarts = st.node_name(inst.node_id), inst.restarts
    data = (
        InstanceChangeData(node_name=name, restarts=restarts)
        if stats is None
        else InstanceChangeData(node_name=name, restarts=restarts, inference=stats)
    )
    return InstanceChange(
        instance_id=inst.id,
        job_id=inst.job_id,
        state=inst.state,
        node_id=inst.node_id,
        reason=inst.reason,
        ts=inst.updated_at,
        exit_code=inst.exit_code,
        data=data,
    )


def fail(st: ClusterState, fx: Effects, inst: InstanceRecord, reason: str) -> None:
    """The instance cannot run (any more): FAILED, and it should stay stopped."""
    inst.desired = "stopped"
    transition(st, fx, inst, InstanceState.FAILED, reason)


def node_transition(st: ClusterState, fx: Effects, node: NodeRecord, tr: Transition) -> None:
    """A node's liveness changed: persist, record, report; a LOST node ends the
    terminations that waited for it (they will never be acked)."""
    node.reason = tr.reason
    st.index.node_changed(node.id)
    fx.persist_node(node)
    fx.count("edge_cluster_node_transitions_total", {"state": tr.current.value})
    fx.event(
        None,
        kind="node.liveness",
        subject=node.id,
        node_id=node.id,
        state=tr.current.value,
        reason=tr.reason,
        data={"previous": tr.previous.value},
    )
    level = logging.WARNING if tr.current is not Liveness.READY else logging.INFO
    log.log(
        level,
        "node %s (%s) %s -> %s: %s",
        node.id,
        node.info.name,
        tr.previous.value,
        tr.current.value,
        tr.reason,
    )
    if tr.current is Liveness.LOST:
        for inst in st.instances_on(node.id):
            if inst.desired == "stopped" and not inst.state.terminal:
                transition(
                    st,
                    fx,
                    inst,
                    InstanceState.TERMINATED,
                    f"node {node.info.name} lost before acknowledging",
                )
        for key in [k for k in st.terminating if k[0] == node.id]:
            cid = st.terminating.pop(key)
            st.pop_pending(cid)
    fx.report()
