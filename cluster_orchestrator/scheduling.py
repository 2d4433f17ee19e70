"""The cluster scheduler: choose a node for an instance and put it there.

`decide` is the placement plan (the `placement/` pipeline over the placement index's
table, no state change but the instance's stored explanation); `assign` applies a
chosen plan (assignment, ASSIGNED, DEPLOY). The rest are the ways an instance comes
to be placed again: a move (drain), a retry (refused or unacknowledged DEPLOY), a
lost node and a shed on a node whose job says ``on_shed: reschedule``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cluster_orchestrator.effects import Effects
from cluster_orchestrator.lifecycle import fail, transition
from cluster_orchestrator.records import InstanceRecord, NodeRecord
from cluster_orchestrator.sending import deploy, send_terminate
from cluster_orchestrator.state import ClusterState
from placement import Decision, place
from placement.from_spec import request_for
from schemas.job import InstanceState
from schemas.node import Liveness

__all__ = [
    "assign",
    "decide",
    "move",
    "reschedule_lost",
    "reschedule_shed",
    "retry_deploy",
    "with_excluded",
]


def decide(st: ClusterState, fx: Effects, inst: InstanceRecord, exclude: set[str]) -> Decision:
    """Run the placement pipeline for one instance over all nodes but `exclude`.

    The candidates, reservations and replicas per node come from `PlacementIndex`
    (kept current as statuses, liveness and instances change), so a decision costs
    the filters and scorers over the table, not a rebuild of every candidate. The
    explanation is kept on the instance (`placement`).
    """
    constraints = inst.constraints
    pinned: str | None = None
    if constraints.node is not None:
        named = [n for n in st.nodes.values() if n.info.name == constraints.node]
        named.sort(key=lambda n: (n.liveness.state is not Liveness.READY, n.id))
        pinned = named[0].id if named else f"unknown-node-{constraints.node}"
    policy = inst.placement_policy.value if inst.placement_policy else st.settings.placement_policy
    request = request_for(inst.spec, constraints, pinned_id=pinned)
    decision = place(
        request,
        st.index.table(st.nodes),
        policy,
        st.rng,
        existing=st.index.replicas(inst.job_id, without=inst.id),
        noun="node",
        exclude=exclude,
    )
    if exclude:
        decision = with_excluded(decision, len(exclude & st.nodes.keys()))
    fx.count(
        "edge_cluster_placements_total", {"result": "placed" if decision.chosen else "rejected"}
    )
    inst.placement = decision.to_dict(limit=10)
    return decision


def with_excluded(decision: Decision, excluded: int) -> Decision:
    """Add the excluded nodes (tried before or the one being left) to the rejections."""
    if excluded <= 0:
        return decision
    reason = "excluded (previous node or refused)"
    rejections = dict(decision.rejections)
    rejections[reason] = rejections.get(reason, 0) + excluded
    return dataclasses.replace(
        decision,
        rejections=rejections,
        considered=decision.considered + excluded,
        rejected={**decision.rejected, reason: []},
    )


def assign(
    st: ClusterState,
    fx: Effects,
    inst: InstanceRecord,
    decision: Decision,
    why: str,
    *,
    report: bool = True,
) -> None:
    """Put the instance on the chosen node and send the DEPLOY. `report=False` for a
    fresh placement: the root learns the node from the placement answer, so the
    ASSIGNED change does not travel twice (a node change later is reported)."""
    assert decision.chosen is not None
    st.set_node(inst, decision.chosen.id)
    inst.assigned_at = fx.now.mono
    inst.acked_at = None
    inst.desired = "running"
    transition(
        st,
        fx,
        inst,
        InstanceState.ASSIGNED,
        f"{why}: {decision.explain()}" if why else decision.explain(),
        data={"node_name": decision.chosen.name, "score": decision.score},
        report=report,
    )
    deploy(st, fx, inst)


def move(
    st: ClusterState, fx: Effects, inst: InstanceRecord, why: str, *, exclude_current: bool
) -> bool:
    """Place an active instance on another node; terminate its old copy. False: stays."""
    old = inst.node_id
    exclude = {old} if (exclude_current and old) else set()
    decision = decide(st, fx, inst, exclude)
    if decision.chosen is None:
        inst.reason = f"{why}; no other node fits: {decision.explain()}"[:1024]
        fx.persist_instance(inst)
        return False
    if old is not None:
        send_terminate(st, fx, old, inst.id, why, orphan=True)
    inst.tried = []
    assign(st, fx, inst, decision, f"moved: {why}")
    return True


def retry_deploy(
    st: ClusterState, fx: Effects, inst: InstanceRecord, why: str, *, terminate_old: bool
) -> None:
    """The node refused the DEPLOY or did not ack it: try another node, up to
    ``dispatch_attempts`` nodes, then FAIL."""
    old = inst.node_id
    if old is not None:
        inst.tried.append(old)
        if terminate_old:
            send_terminate(st, fx, old, inst.id, "deploy timed out; placed elsewhere", orphan=True)
    attempts = len(inst.tried)
    if attempts >= st.settings.dispatch_attempts:
        fail(st, fx, inst, f"{why}; gave up after {attempts} node(s)")
        return
    decision = decide(st, fx, inst, exclude=set(inst.tried))
    if decision.chosen is None:
        fail(st, fx, inst, f"{why}; no other node fits: {decision.explain()}")
        return
    assign(st, fx, inst, decision, f"retry {attempts + 1}: {why}")


def reschedule_shed(
    st: ClusterState, fx: Effects, inst: InstanceRecord, reason: str, data: dict[str, Any] | None
) -> None:
    """A node shed the instance and its job says ``on_shed: reschedule``: handled like a
    lost instance on that node. The SHED state is recorded (with the node's measured
    values) and the instance goes to another node; when none fits, the SHED state is
    reported to the root, which replaces the instance elsewhere."""
    old = inst.node_id
    why = f"shed by {st.node_name(old)}: {reason}" if reason else "shed by its node"
    decision = decide(st, fx, inst, exclude={old} if old else set())
    transition(
        st,
        fx,
        inst,
        InstanceState.SHED,
        why,
        report=decision.chosen is None,
        data={**(data or {}), "rescheduling": decision.chosen is not None},
    )
    if decision.chosen is None:
        inst.reason = f"{why}; no other node fits: {decision.explain()}"[:1024]
        fx.persist_instance(inst)
        return
    if old is not None:
        send_terminate(st, fx, old, inst.id, "rescheduled elsewhere after shedding", orphan=True)
    inst.tried = []
    assign(st, fx, inst, decision, f"rescheduled: {why}")


def reschedule_lost(
    st: ClusterState, fx: Effects, inst: InstanceRecord, node: NodeRecord, unhealthy: float
) -> None:
    """The instance's node has been unhealthy longer than the instance's grace: LOST,
    and placed elsewhere when another node fits (else it stays stopped)."""
    why = f"node {node.info.name} {node.liveness.state.value} for {unhealthy:.1f}s"
    decision = decide(st, fx, inst, exclude={node.id})
    transition(
        st,
        fx,
        inst,
        InstanceState.LOST,
        why,
        report=decision.chosen is None,
        data={"rescheduling": decision.chosen is not None},
    )
    if decision.chosen is None:
        inst.desired = "stopped"
        inst.reason = f"{why}; no other node fits: {decision.explain()}"[:1024]
        fx.persist_instance(inst)
        return
    # the old node may come back: its copy is foreign then and gets terminated
    send_terminate(st, fx, node.id, inst.id, "rescheduled elsewhere", orphan=True)
    assign(st, fx, inst, decision, f"rescheduled: {why}")
