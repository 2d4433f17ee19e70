"""Inbound node messages as a pure function: ``apply(state, inbound, now) -> effects``.

A status, a task event, a command ack or a presence message from a node changes the
state tables (`state.ClusterState`) and yields the effects it implies (writes,
commands, instance changes for the root, events, metrics) as values; the core loop
hands them to the runner. "Pure" here means: no I/O, no clock and no global; the
result depends only on the state, the message, `now` and the state's seeded rng.
"""

from __future__ import annotations

import logging
from typing import Any

from cluster_orchestrator.effects import Effect, Effects, Now
from cluster_orchestrator.lifecycle import node_transition, transition
from cluster_orchestrator.mqtt_adapter import Inbound
from cluster_orchestrator.records import InstanceRecord, NodeRecord
from cluster_orchestrator.scheduling import reschedule_shed, retry_deploy
from cluster_orchestrator.sending import terminate_orphan
from cluster_orchestrator.state import ClusterState
from schemas.job import InstanceState, RestartPolicy, ShedAction, TaskState
from schemas.mqtt import (
    SESSION_TAKEN_OVER,
    AckMessage,
    PresenceMessage,
    StatusMessage,
    TaskEvent,
    TaskEventMessage,
)

__all__ = ["PROGRESS", "apply", "apply_into", "apply_task_event", "observe_task"]

log = logging.getLogger(__name__)

#: a node whose session is taken over again and again gets one warning and one event
#: this often (every takeover is counted)
TAKEOVER_LOG_EVERY_S = 60.0

_TASK_TO_INSTANCE: dict[TaskState, InstanceState] = {
    TaskState.STARTING: InstanceState.STARTING,
    TaskState.RUNNING: InstanceState.RUNNING,
    TaskState.PAUSED: InstanceState.SHED,
    TaskState.SUCCEEDED: InstanceState.SUCCEEDED,
    TaskState.FAILED: InstanceState.FAILED,
    TaskState.TERMINATED: InstanceState.TERMINATED,
    TaskState.SHED: InstanceState.SHED,
}

#: Task states in a status that prove the node holds a deployed task (see `_on_status`).
_DEPLOYED = frozenset({TaskState.RUNNING, TaskState.PAUSED})

#: Order of progress before a task runs: a status must not move an instance backwards.
PROGRESS = {
    InstanceState.PENDING: 0,
    InstanceState.SCHEDULED: 1,
    InstanceState.ASSIGNED: 2,
    InstanceState.STARTING: 3,
    InstanceState.RUNNING: 4,
}


def apply(state: ClusterState, inbound: Inbound, now: Now) -> list[Effect]:
    """Apply one decoded node message to `state`; return the effects to run, in order."""
    fx = Effects(now)
    apply_into(state, fx, inbound)
    return fx.items


def apply_into(st: ClusterState, fx: Effects, inbound: Inbound) -> None:
    """`apply`, writing into a given effects buffer (the core loop reuses its own)."""
    message = inbound.message
    if isinstance(message, StatusMessage):
        _on_status(st, fx, message, inbound)
    elif isinstance(message, TaskEventMessage):
        apply_task_event(st, fx, message.node_id, message.ts, message.payload)
    elif isinstance(message, AckMessage):
        _on_ack(st, fx, message)
    elif isinstance(message, PresenceMessage):
        _on_presence(st, fx, message, inbound)


def _on_status(st: ClusterState, fx: Effects, message: StatusMessage, inbound: Inbound) -> None:
    node = st.nodes.get(message.node_id)
    if node is None:
        fx.reject("unknown_node")
        return
    status = message.payload
    prev = node.status
    if (
        prev is not None
        and status.seq <= prev.seq
        and node.status_sent_ts is not None
        and message.ts <= node.status_sent_ts
    ):
        fx.reject("stale_status")
        return
    now = fx.now.mono
    st.lags.append(fx.now.wall - message.ts)
    node.status = status
    node.last_seen = inbound.received_at
    node.status_sent_ts = message.ts
    node.status_dirty = True
    st.index.node_changed(node.id)
    tr = node.liveness.on_status(now)
    if tr is not None:
        node_transition(st, fx, node, tr)
        if prev is not None:  # it reported before: a node that returns
            st.arm_rebalance(now + st.settings.rebalance_after)
    for task in status.tasks:
        inst = st.instances.get(task.instance_id)
        if inst is None or inst.node_id != node.id:
            continue  # foreign: the reconcile pass terminates it
        if task.inference is not None:
            st.inference[inst.id] = task.inference
        elif inst.id in st.inference:
            del st.inference[inst.id]
        if inst.id in st.deploying and task.state in _DEPLOYED:
            _deployed_by_status(st, fx, inst, node)
        observe_task(
            st,
            fx,
            inst,
            task.state,
            task.reason,
            task.exit_code,
            message.ts,
            from_status=True,
            restarts=task.restarts,
        )


def _deployed_by_status(
    st: ClusterState, fx: Effects, inst: InstanceRecord, node: NodeRecord
) -> None:
    """The node lists the instance as running while its DEPLOY still waits for the
    ack: the ack was lost (or is behind), and the status, a level, stands in for it,
    so the instance is not moved away from a node that runs it."""
    cid = st.deploying.get(inst.id)
    pending = st.pending.get(cid) if cid is not None else None
    if pending is None or pending.node_id != node.id:
        return
    st.pop_pending(pending.message.id)
    fx.count("edge_cluster_acks_by_status_total")
    inst.acked_at = fx.now.mono
    inst.tried = []


def _on_presence(st: ClusterState, fx: Effects, message: PresenceMessage, inbound: Inbound) -> None:
    node = st.nodes.get(message.node_id)
    if node is None:
        fx.reject("unknown_node")
        return
    presence = message.payload
    node.presence_online = presence.online
    if presence.online:
        if presence.reason == SESSION_TAKEN_OVER and not inbound.retained:
            _on_session_takeover(fx, node)
        return
    now = fx.now.mono
    if (
        inbound.retained
        and node.liveness.last_status_at is not None
        and (now - node.liveness.last_status_at < st.settings.status_interval * 1.5)
    ):
        return  # an old retained goodbye; the node has spoken since
    reason = "offline: " + (presence.reason or "connection lost")
    tr = node.liveness.on_presence(False, now, reason)
    if tr is not None:
        node_transition(st, fx, node, tr)


def _on_session_takeover(fx: Effects, node: NodeRecord) -> None:
    """The node says the broker dropped it for another client with its client id: two
    clients share its credentials and displace each other. Counted every time; one
    warning and one `node.session_takeover` event per node per `TAKEOVER_LOG_EVERY_S`."""
    node.session_takeovers += 1
    fx.count("edge_cluster_node_session_takeovers_total")
    now = fx.now.mono
    last = node.takeover_logged_at
    if last is not None and now - last < TAKEOVER_LOG_EVERY_S:
        return
    node.takeover_logged_at = now
    reason = (
        "another MQTT client connected with this node's credentials and client id; "
        "a second engine with a copy of its identity, or stolen credentials"
    )
    fx.event(
        None,
        kind="node.session_takeover",
        subject=node.id,
        node_id=node.id,
        reason=reason,
        data={"takeovers": node.session_takeovers},
    )
    log.warning(
        "node %s (%s): session taken over %d time(s): %s (remove the node to revoke "
        "its credentials if it is not a second engine of yours)",
        node.id,
        node.info.name,
        node.session_takeovers,
        reason,
    )


def apply_task_event(
    st: ClusterState, fx: Effects, node_id: str, ts: float, event: TaskEvent
) -> None:
    """A task state change reported by a node (a task event, or carried by an ack)."""
    inst = st.instances.get(event.instance_id)
    if inst is None or inst.node_id != node_id:
        if not event.state.terminal:
            terminate_orphan(st, fx, node_id, event.instance_id, "not assigned here")
        return
    observe_task(
        st,
        fx,
        inst,
        event.state,
        event.reason,
        event.exit_code,
        ts,
        from_status=False,
        data=event.data.as_dict(),
    )


def _on_ack(st: ClusterState, fx: Effects, message: AckMessage) -> None:
    """A command's answer. Revision 2 engines put the state change the command caused
    in it (`ack.event`): applied first, exactly as the separate task event that
    older engines send before their ack."""
    ack = message.payload
    fx.count(
        "edge_cluster_acks_total",
        {"kind": ack.command_kind or "?", "result": "accepted" if ack.accepted else "refused"},
    )
    if ack.event is not None:
        apply_task_event(st, fx, message.node_id, message.ts, ack.event)
    pending = st.pending.get(ack.command_id)
    if pending is None or pending.node_id != message.node_id:
        return  # late, duplicate or not ours
    st.pop_pending(ack.command_id)
    inst = st.instances.get(pending.instance_id)
    if pending.kind == "deploy":
        if inst is None or inst.node_id != pending.node_id or inst.desired != "running":
            return
        if ack.accepted:
            inst.acked_at = fx.now.mono
            inst.tried = []
            if PROGRESS.get(inst.state, 99) < PROGRESS[InstanceState.STARTING]:
                transition(
                    st,
                    fx,
                    inst,
                    InstanceState.STARTING,
                    f"deploy acknowledged by {st.node_name(inst.node_id)}",
                )
        else:
            retry_deploy(
                st,
                fx,
                inst,
                f"node {st.node_name(pending.node_id)} refused: {ack.reason}",
                terminate_old=False,
            )
        return
    # terminate
    st.terminating.pop((pending.node_id, pending.instance_id), None)
    if (
        inst is not None
        and inst.node_id == pending.node_id
        and inst.desired == "stopped"
        and not inst.state.terminal
    ):
        why = "terminated on request" if ack.accepted else f"node: {ack.reason}"
        transition(st, fx, inst, InstanceState.TERMINATED, why)


def observe_task(
    st: ClusterState,
    fx: Effects,
    inst: InstanceRecord,
    task_state: TaskState,
    reason: str,
    exit_code: int | None,
    ts: float,
    *,
    from_status: bool,
    restarts: int | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Apply what the assigned node says about an instance's task.

    Events are applied as they come (they are ordered per node, QoS 1). A status is
    a level: it only moves an instance forward, and a finished task that the node
    will restart under its restart policy does not finish the instance.
    """
    if inst.desired == "stopped":
        if task_state.terminal and not inst.state.terminal:
            transition(
                st,
                fx,
                inst,
                InstanceState.TERMINATED,
                reason or f"task {task_state.value.lower()} on request",
            )
        return
    if restarts is not None and restarts > inst.restarts:
        inst.restarts = restarts
    target = _TASK_TO_INSTANCE[task_state]
    if target is inst.state:
        return
    if task_state.terminal:
        if task_state is TaskState.SHED and inst.spec.on_shed is ShedAction.RESCHEDULE:
            reschedule_shed(st, fx, inst, reason, data)
            return
        restarting = (
            "restart_in_s" in (data or {})
            if not from_status
            else _may_restart(inst, task_state, restarts)
        )
        if restarting:
            if not from_status:
                text = reason or f"task {task_state.value.lower()}"
                transition(
                    st,
                    fx,
                    inst,
                    InstanceState.STARTING,
                    f"{text}; node restarts it in {data.get('restart_in_s', 0):g}s"
                    if data
                    else text,
                    exit_code=exit_code,
                    data=data,
                )
            return
    elif from_status and target in PROGRESS and (PROGRESS.get(inst.state, -1) > PROGRESS[target]):
        return  # an older status; the event that advanced us is newer
    text = reason or f"task {task_state.value.lower()} on {st.node_name(inst.node_id)}"
    transition(st, fx, inst, target, text, exit_code=exit_code, data=data)
    if target.terminal:
        inst.desired = "stopped"
        fx.persist_instance(inst)


def _may_restart(inst: InstanceRecord, state: TaskState, restarts: int | None) -> bool:
    """Whether the node will restart a task that ended in `state` (its restart policy)."""
    spec = inst.spec
    if restarts is not None and restarts >= spec.max_restarts:
        return False
    if spec.restart_policy is RestartPolicy.ALWAYS:
        return state in (TaskState.SUCCEEDED, TaskState.FAILED)
    if spec.restart_policy is RestartPolicy.ON_FAILURE:
        return state is TaskState.FAILED
    return False
