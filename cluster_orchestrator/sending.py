"""Commands to nodes (DEPLOY, TERMINATE): remembered until acked, then published.

Each command is kept in `ClusterState.pending` with an ack deadline (the timers resend
or retry it, see `timers.tick_commands`) and handed to the runner as a `Publish`
effect. Commands are idempotent on the node, so a resend is harmless.
"""

from __future__ import annotations

import logging

from cluster_orchestrator.effects import Effects
from cluster_orchestrator.records import InstanceRecord
from cluster_orchestrator.state import ClusterState, PendingCommand
from schemas.mqtt import (
    CommandMessage,
    DeployCommand,
    DeployMessage,
    TerminateCommand,
    TerminateMessage,
)
from schemas.node import Liveness

__all__ = ["deploy", "send_terminate", "terminate_orphan"]

log = logging.getLogger(__name__)


def _send(st: ClusterState, fx: Effects, message: CommandMessage, pending: PendingCommand) -> None:
    st.pending[message.id] = pending
    if pending.kind == "deploy":
        st.deploying[pending.instance_id] = message.id
    fx.publish(message)


def deploy(st: ClusterState, fx: Effects, inst: InstanceRecord) -> None:
    """Send the DEPLOY of `inst` to its node (replacing a DEPLOY still waiting)."""
    assert inst.node_id is not None
    message = DeployMessage(
        node_id=inst.node_id,
        payload=DeployCommand(instance_id=inst.id, job_id=inst.job_id, spec=inst.spec),
    )
    st.drop_pending_deploys(inst.id)
    _send(
        st,
        fx,
        message,
        PendingCommand(
            message=message,
            kind="deploy",
            node_id=inst.node_id,
            instance_id=inst.id,
            deadline=fx.now.mono + st.settings.ack_timeout,
        ),
    )


def send_terminate(
    st: ClusterState, fx: Effects, node_id: str, instance_id: str, reason: str, *, orphan: bool
) -> None:
    """Send a TERMINATE for `instance_id` to `node_id`, unless one is already waiting.

    `orphan`: the node's copy is not (or no longer) the instance's assignment, so its
    ack changes no instance state."""
    key = (node_id, instance_id)
    if key in st.terminating and st.terminating[key] in st.pending:
        return
    message = TerminateMessage(
        node_id=node_id,
        payload=TerminateCommand(instance_id=instance_id, reason=reason[:1024]),
    )
    st.terminating[key] = message.id
    _send(
        st,
        fx,
        message,
        PendingCommand(
            message=message,
            kind="terminate",
            node_id=node_id,
            instance_id=instance_id,
            deadline=fx.now.mono + st.settings.ack_timeout,
            orphan=orphan,
        ),
    )


def terminate_orphan(
    st: ClusterState, fx: Effects, node_id: str, instance_id: str, why: str
) -> None:
    """Terminate a task a node runs that is not assigned to it (a reachable node only)."""
    node = st.nodes.get(node_id)
    if node is None or node.liveness.state is Liveness.LOST:
        return
    if (node_id, instance_id) in st.terminating:
        return
    log.info("terminating foreign task %s on %s (%s)", instance_id, node.info.name, why)
    send_terminate(st, fx, node_id, instance_id, f"not assigned to this node: {why}", orphan=True)
