"""What the passing of time decides: the core loop's tick as a plan over the state.

`tick(state, fx)` runs every `TICK_S` seconds of the loop: liveness (silent nodes,
lost nodes), ack deadlines of commands, rescheduling after the lost grace, and at
their own intervals the reconcile pass, the rebalancing pass, the status snapshot
and the gauges. Like `inbound.apply`, it changes memory and emits effects only.
"""

from __future__ import annotations

from cluster_orchestrator.effects import Effects, ObserveLags, SetGauges
from cluster_orchestrator.lifecycle import fail, node_transition
from cluster_orchestrator.rebalance import Placed, rebalance_moves
from cluster_orchestrator.records import NODE_STATUS, NodeRecord
from cluster_orchestrator.scheduling import assign, decide, move, reschedule_lost, retry_deploy
from cluster_orchestrator.sending import deploy, send_terminate, terminate_orphan
from cluster_orchestrator.state import ClusterState
from schemas.job import InstanceState
from schemas.node import Liveness

__all__ = [
    "GAUGE_EVERY_S",
    "REBALANCE_RETRY_S",
    "TICK_S",
    "flush_snapshots",
    "gauges",
    "rebalance",
    "reconcile",
    "tick",
]

TICK_S = 0.1
GAUGE_EVERY_S = 1.0
#: a rebalancing pass that moved a replica (or waited for one on its way) looks again
#: this much later, until every spread job is even
REBALANCE_RETRY_S = 2.0


def tick(st: ClusterState, fx: Effects) -> None:
    """Everything due at `fx.now` (see the module docstring)."""
    now = fx.now.mono
    if st.lags:
        fx.items.append(ObserveLags(st.lags))
        st.lags = []
    tick_liveness(st, fx)
    tick_commands(st, fx)
    tick_grace(st, fx)
    if now >= st.next_reconcile:
        st.next_reconcile = now + st.settings.reconcile_interval
        reconcile(st, fx)
    if st.rebalance_at is not None and now >= st.rebalance_at:
        st.rebalance_at = None
        rebalance(st, fx)
    if now >= st.next_snapshot:
        st.next_snapshot = now + st.settings.status_snapshot_interval
        flush_snapshots(st, fx)
    if now >= st.next_gauges:
        st.next_gauges = now + GAUGE_EVERY_S
        gauges(st, fx)


def tick_liveness(st: ClusterState, fx: Effects) -> None:
    """Silent READY nodes become NOT_READY, unhealthy ones LOST after the grace."""
    now = fx.now.mono
    interval = st.settings.status_interval
    grace = st.settings.lost_grace
    for node in st.nodes.values():
        state = node.liveness.state
        if state is Liveness.LOST:
            continue
        if (
            state is Liveness.READY
            and node.liveness.last_status_at is not None
            and (now - node.liveness.last_status_at < 3 * interval)
        ):
            continue
        for tr in node.liveness.tick(now, interval, grace):
            node_transition(st, fx, node, tr)


def tick_grace(st: ClusterState, fx: Effects) -> None:
    """Reschedule instances of nodes unhealthy for longer than their grace."""
    now = fx.now.mono
    for node_id, ids in list(st.by_node.items()):
        if not ids:
            continue
        node = st.nodes.get(node_id)
        if node is None or node.liveness.state is Liveness.READY or node.liveness.held(now):
            continue
        unhealthy = node.liveness.unhealthy_for(now)
        for inst in st.instances_on(node_id):
            if inst.state.terminal or inst.desired != "running":
                continue
            grace = inst.lost_grace_s if inst.lost_grace_s is not None else st.settings.lost_grace
            if unhealthy >= grace:
                reschedule_lost(st, fx, inst, node, unhealthy)


def tick_commands(st: ClusterState, fx: Effects) -> None:
    """Commands past their ack deadline: a DEPLOY is retried elsewhere, a TERMINATE
    is sent again (idempotent) until acked or its node is lost."""
    now = fx.now.mono
    expired = [p for p in st.pending.values() if p.deadline <= now]
    for pending in expired:
        if st.pending.get(pending.message.id) is not pending:
            continue
        fx.count("edge_cluster_ack_timeouts_total", {"kind": pending.kind})
        if pending.kind == "deploy":
            st.pop_pending(pending.message.id)
            inst = st.instances.get(pending.instance_id)
            if inst is None or inst.node_id != pending.node_id or inst.desired != "running":
                continue
            retry_deploy(
                st,
                fx,
                inst,
                f"no ack from {st.node_name(pending.node_id)} within {st.settings.ack_timeout:g}s",
                terminate_old=True,
            )
            continue
        node = st.nodes.get(pending.node_id)
        if node is None or node.liveness.state is Liveness.LOST:
            st.pop_pending(pending.message.id)
            st.terminating.pop((pending.node_id, pending.instance_id), None)
            continue
        pending.deadline = now + st.settings.ack_timeout
        pending.sent += 1
        fx.publish(pending.message, warn=False)


def reconcile(st: ClusterState, fx: Effects) -> None:
    """Compare what READY nodes report with the assignments and close the gaps.

    * a task on a node that does not hold its instance (or whose instance should
      stop, unless the status may predate the instance's last change) is terminated;
    * an instance whose node acked its DEPLOY but no longer lists it in a status
      received afterwards is redeployed there, counting a restart; beyond the
      spec's `max_restarts` it FAILs;
    * instances still on a draining node are moved again;
    * finished instances older than `terminal_retention` leave memory.
    """
    settings = st.settings
    settle = max(settings.status_interval * 2, 0.5)
    for node in st.nodes.values():
        if node.liveness.state is not Liveness.READY or node.status is None:
            continue
        reported = {t.instance_id: t for t in node.status.tasks}
        for iid, task in reported.items():
            inst = st.instances.get(iid)
            if inst is None or inst.node_id != node.id:
                if not task.state.terminal:
                    terminate_orphan(st, fx, node.id, iid, "no such assignment")
            elif (
                inst.desired == "stopped"
                and not task.state.terminal
                and (node.id, iid) not in st.terminating
                and not _older_than(node, inst.updated_at + settings.status_interval)
            ):
                send_terminate(
                    st, fx, node.id, iid, "instance is finished here", orphan=inst.state.terminal
                )
        last_status = node.liveness.last_status_at or 0.0
        for inst in st.instances_on(node.id):
            if inst.state.terminal or inst.desired != "running" or inst.id in reported:
                continue
            if inst.acked_at is None or last_status < inst.acked_at + settle:
                continue
            if inst.id in st.deploying:
                continue
            inst.restarts += 1
            if inst.restarts > inst.spec.max_restarts:
                fail(
                    st,
                    fx,
                    inst,
                    f"missing from {node.info.name} and restart limit "
                    f"({inst.spec.max_restarts}) reached",
                )
                continue
            fx.event(
                inst,
                kind="instance.redeploy",
                subject=inst.id,
                job_id=inst.job_id,
                instance_id=inst.id,
                node_id=node.id,
                state=inst.state.value,
                reason=f"missing from {node.info.name}'s task list",
            )
            inst.acked_at = None
            deploy(st, fx, inst)
        if node.draining:
            for inst in st.instances_on(node.id):
                if not inst.state.terminal and inst.desired == "running":
                    move(st, fx, inst, f"node {node.info.name} draining", exclude_current=True)
    retention = settings.terminal_retention
    wall = fx.now.wall
    for iid in [
        i.id for i in st.instances.values() if i.state.terminal and wall - i.updated_at > retention
    ]:
        inst = st.instances.pop(iid)
        st.set_node(inst, None)


def rebalance(st: ClusterState, fx: Effects) -> list[str]:
    """Move replicas of spread jobs onto nodes that returned.

    Runs `rebalance_after` seconds after a node came back. Targets are READY nodes
    that have been READY that long and are neither draining nor cordoned; per job at
    most one replica moves per pass, from its fullest node to a node holding two or
    more fewer, chosen by the placement pipeline among those (so every filter
    applies). Until all spread jobs are even, it looks again `REBALANCE_RETRY_S`
    later. Returns the moved ids.
    """
    now = fx.now.mono
    wait = st.settings.rebalance_after
    targets = {
        n.id
        for n in st.nodes.values()
        if n.liveness.state is Liveness.READY
        and not n.draining
        and not n.cordoned
        and n.liveness.ready_since is not None
        and now - n.liveness.ready_since >= wait
    }
    if len(targets) < 2:
        return []
    placed = []
    for inst in st.instances.values():
        if inst.state.terminal or inst.desired != "running" or inst.node_id is None:
            continue
        policy = (
            inst.placement_policy.value if inst.placement_policy else st.settings.placement_policy
        )
        if policy != "spread":
            continue
        placed.append(
            Placed(
                inst.id,
                inst.job_id,
                inst.node_id,
                running=inst.state is InstanceState.RUNNING,
                movable=inst.constraints.node is None,
            )
        )
    busy = {p.job_id for p in placed if not p.running}
    moved: list[str] = []
    for mv in rebalance_moves(placed, targets):
        inst = st.instances[mv.instance_id]
        kept = inst.placement
        decision = decide(st, fx, inst, exclude=set(st.nodes) - mv.allowed)
        if decision.chosen is None:
            inst.placement = kept  # a running instance keeps its explanation
            continue
        spread = ", ".join(f"{st.node_name(n)} {c}" for n, c in sorted(mv.counts.items()) if c)
        why = (
            f"rebalanced: spread job had {mv.counts[mv.source]} replicas on "
            f"{st.node_name(mv.source)} and "
            f"{mv.counts.get(decision.chosen.id, 0)} on {decision.chosen.name} ({spread})"
        )
        fx.event(
            inst,
            kind="instance.rebalance",
            subject=inst.id,
            job_id=inst.job_id,
            instance_id=inst.id,
            node_id=mv.source,
            state=inst.state.value,
            reason=why,
            data={"from": mv.source, "to": decision.chosen.id, "counts": mv.counts},
        )
        send_terminate(st, fx, mv.source, inst.id, why, orphan=True)
        inst.tried = []
        assign(st, fx, inst, decision, why)
        fx.count("edge_cluster_rebalance_moves_total")
        moved.append(inst.id)
    if moved or busy:
        st.arm_rebalance(now + REBALANCE_RETRY_S)
    return moved


def flush_snapshots(st: ClusterState, fx: Effects) -> None:
    """Write the latest status of every node whose status changed since the last one."""
    docs = []
    for node in st.nodes.values():
        if node.status_dirty and node.status is not None:
            node.status_dirty = False
            docs.append(
                {
                    "_id": node.id,
                    "last_seen": node.last_seen,
                    "liveness": node.liveness.state.value,
                    "status": node.status.model_dump(mode="json"),
                }
            )
    fx.persist_many(NODE_STATUS, docs)


def gauges(st: ClusterState, fx: Effects) -> None:
    """The state gauges (nodes by liveness, instances by state, commands waiting)."""
    by_state: dict[str, float] = {s.value: 0.0 for s in Liveness}
    for node in st.nodes.values():
        by_state[node.liveness.state.value] += 1
    inst_states: dict[str, float] = {}
    for inst in st.instances.values():
        inst_states[inst.state.value] = inst_states.get(inst.state.value, 0) + 1
    fx.items.append(SetGauges(by_state, inst_states, len(st.pending)))


def _older_than(node: NodeRecord, wall: float) -> bool:
    """Whether the node's latest status was received before `wall` (so it may predate
    the last change of an instance: a status that crossed a TERMINATE's ack still lists
    the task, and is no reason to send the TERMINATE again)."""
    return node.last_seen is None or node.last_seen < wall
