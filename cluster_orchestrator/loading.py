"""Startup: fill the state tables from the store (before the core loop starts).

Nodes come back unhealthy (NOT_READY, or LOST if they were) and held for the restart
grace, with their last status snapshot; unfinished instances come back with their
recent events and count as acknowledged now, so the reconcile pass judges them by the
next statuses. Removed nodes' tombstones come back too.
"""

from __future__ import annotations

import logging

from cluster_orchestrator.admission import REMOVED_NODES
from cluster_orchestrator.records import (
    EVENTS,
    INSTANCES,
    NODE_STATUS,
    NODES,
    InstanceRecord,
    NodeRecord,
    event_from_doc,
)
from cluster_orchestrator.state import ClusterState
from schemas.job import InstanceState
from schemas.node import NodeStatus
from store import Store

__all__ = ["load_state"]

log = logging.getLogger(__name__)


def load_state(st: ClusterState, store: Store, now_mono: float) -> None:
    """Read nodes, statuses, tombstones and unfinished instances into `st`."""
    for doc in store.find(REMOVED_NODES):
        st.removed_nodes[str(doc["_id"])] = dict(doc)
    for doc in store.find(NODES):
        try:
            node = NodeRecord.from_doc(doc, now_mono, hold=st.settings.restart_grace)
        except (KeyError, ValueError) as exc:
            log.error("skipping unreadable node document %s: %s", doc.get("_id"), exc)
            continue
        if node.id in st.removed_nodes:  # the delete of a removed node did not land
            continue
        st.nodes[node.id] = node
    for doc in store.find(NODE_STATUS):
        node_or_none = st.nodes.get(str(doc.get("_id")))
        if node_or_none is None or "status" not in doc:
            continue
        try:
            node_or_none.status = NodeStatus.model_validate(doc["status"])
        except ValueError:
            continue
    for state in InstanceState:
        if state.terminal:
            continue
        for doc in store.find(INSTANCES, {"state": state.value}):
            try:
                inst = InstanceRecord.from_doc(doc)
            except (KeyError, ValueError) as exc:
                log.error("skipping unreadable instance %s: %s", doc.get("_id"), exc)
                continue
            inst.acked_at = now_mono
            inst.assigned_at = now_mono
            st.instances[inst.id] = inst
            if inst.node_id:
                st.by_node.setdefault(inst.node_id, set()).add(inst.id)
            for ev in store.find(
                EVENTS, {"instance_id": inst.id}, order_by="_id", descending=True, limit=50
            ):
                inst.events.appendleft(event_from_doc(ev))
    st.index.reset(st.instances.values())
    log.info("loaded %d nodes and %d unfinished instances", len(st.nodes), len(st.instances))
