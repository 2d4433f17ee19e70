"""Admission: which nodes may join (and leave for good), which instances this cluster takes.

* `join`: a node joins or rejoins; its identity is checked against the node table
  and the tombstones of removed nodes (see the function for the rules);
* `remove_node`: the operator removes a node for good (a tombstone stays);
* `place_instance`: the root (or an operator) asks this cluster to take an
  instance; it is refused with reasons, or placed and deployed.

Each changes the state tables and emits effects into the given buffer; a write the
caller must wait for (a join's node document, a removal's tombstone) is a durable
`Persist`, whose future the core loop puts into the result.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NoReturn

from cluster_orchestrator.effects import Effects
from cluster_orchestrator.errors import (
    Forbidden,
    JoinUnauthorized,
    NodeBusy,
    NodeRemoved,
    NotFound,
)
from cluster_orchestrator.lifecycle import transition
from cluster_orchestrator.liveness import LivenessTracker
from cluster_orchestrator.queries import node_detail
from cluster_orchestrator.records import (
    NODE_STATUS,
    NODES,
    InstanceRecord,
    NodeRecord,
    hash_secret,
    new_secret,
    verify_secret,
)
from cluster_orchestrator.scheduling import assign, decide
from cluster_orchestrator.state import ClusterState
from schemas.cluster import PlaceInstanceRequest, PlaceInstanceResponse
from schemas.cluster_api import NodeDetail
from schemas.job import InstanceState
from schemas.node import JoinRequest

__all__ = ["REMOVED_NODES", "JoinGrant", "NodeRemoval", "join", "place_instance", "remove_node"]

log = logging.getLogger(__name__)

#: Tombstones of removed nodes: id, name, hash of the node secret, removal time.
REMOVED_NODES = "removed_nodes"


@dataclass(frozen=True, slots=True)
class JoinGrant:
    """What the core decided for a join: id, identity secret, whether it is new."""

    node_id: str
    node_secret: str
    new: bool
    durable: Future[None] | None


@dataclass(frozen=True, slots=True)
class NodeRemoval:
    """A removed node as it was, and the write of its tombstone."""

    node: NodeDetail
    durable: Future[None] | None


def join(
    st: ClusterState, fx: Effects, request: JoinRequest, *, join_token_ok: bool = True
) -> JoinGrant:
    """Register or re-admit a node (its `durable` future is filled in by the loop).

    `join_token_ok` says whether the request carried an accepted join token (the
    HTTP route checks it; in-process callers that admit nodes themselves leave the
    default).

    * A node presenting a known id is authenticated by its node secret alone,
      whatever join token it sent: it keeps id and secret, so rotating the join
      tokens never locks out joined nodes. Wrong or missing secret: `Forbidden`.
    * The id and secret of a node the operator removed: `NodeRemoved`.
    * A node presenting an unknown id with a secret (e.g. the cluster's store was
      reset) is admitted under that id, with an accepted join token only.
    * Anything else gets a new id and secret, with an accepted join token only.

    Without the join token where one is needed: `JoinUnauthorized`.
    """
    presented = request.node_secret.get_secret_value() if request.node_secret else None
    if request.node_id is not None:
        node = st.nodes.get(request.node_id)
        removed = st.removed_nodes.get(request.node_id) if node is None else None
        if removed is not None:
            _refuse_removed(st, fx, request.node_id, removed, presented)
        if node is not None:
            if presented is None or not verify_secret(presented, node.secret_hash):
                fx.count("edge_cluster_joins_total", {"result": "forbidden"})
                raise Forbidden(f"wrong node secret for node {request.node_id}")
            node.info = request.info
            st.index.node_changed(node.id)
            node.credentials_issued += 1
            fx.persist(NODES, node.to_doc(), durable=True)
            fx.count("edge_cluster_joins_total", {"result": "rejoined"})
            log.info("node %s (%s) rejoined", node.id, node.info.name)
            return JoinGrant(node.id, presented, False, None)
        if not join_token_ok:
            fx.count("edge_cluster_joins_total", {"result": "unauthorized"})
            raise JoinUnauthorized(
                f"node {request.node_id} is not known to this cluster (was its store "
                "reset?); it is admitted under its id only with a valid join token",
                "node_unknown",
            )
        if presented is not None:
            node_id, secret = request.node_id, presented
        else:
            node_id, secret = _new_node_id(), new_secret()
    else:
        if not join_token_ok:
            fx.count("edge_cluster_joins_total", {"result": "unauthorized"})
            raise JoinUnauthorized("a new node needs a valid join token", "join_token")
        node_id, secret = _new_node_id(), new_secret()
    while node_id in st.nodes or node_id in st.removed_nodes:  # pragma: no cover
        node_id = _new_node_id()
    node = NodeRecord(
        id=node_id,
        info=request.info,
        secret_hash=hash_secret(secret),
        joined_at=fx.now.wall,
        liveness=LivenessTracker.new(fx.now.mono),
        credentials_issued=1,
        reason="joined; waiting for its first status",
    )
    st.nodes[node_id] = node
    st.index.nodes_changed()
    fx.persist(NODES, node.to_doc(), durable=True)
    fx.count("edge_cluster_joins_total", {"result": "joined"})
    fx.event(
        None,
        kind="node.joined",
        subject=node_id,
        node_id=node_id,
        state=node.state.value,
        reason=f"{node.info.name} joined",
    )
    log.info(
        "node %s (%s, %s, %.1f cores, %d MiB) joined",
        node_id,
        node.info.name,
        node.info.arch.value,
        node.info.cpu_cores,
        node.info.memory_mib,
    )
    fx.report()
    return JoinGrant(node_id, secret, True, None)


def _refuse_removed(
    st: ClusterState, fx: Effects, node_id: str, tomb: dict[str, Any], presented: str | None
) -> NoReturn:
    """Refuse the id of a removed node: `NodeRemoved` with its secret, else `Forbidden`.

    The secret is checked first so that only the holder of the identity learns
    that the node was removed.
    """
    stored = str(tomb.get("secret_hash", ""))
    if presented is None or not stored or not verify_secret(presented, stored):
        fx.count("edge_cluster_joins_total", {"result": "forbidden"})
        raise Forbidden(f"wrong node secret for node {node_id}")
    fx.count("edge_cluster_joins_total", {"result": "removed"})
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(tomb.get("removed_at", 0))))
    log.warning("refused the rejoin of removed node %s (%s)", node_id, tomb.get("name", "?"))
    raise NodeRemoved(
        f"node {node_id} ({tomb.get('name', '?')}) was removed from cluster "
        f"{st.settings.name} by the operator at {when}; its identity is no longer "
        "accepted. To join this machine again as a new node, delete its identity.json "
        "and start it with a join token"
    )


def remove_node(st: ClusterState, fx: Effects, node_id: str) -> NodeRemoval:
    """Remove a node for good; its stored identity is refused from now on.

    `NotFound` for an unknown id; `NodeBusy` while instances that are not finished
    are assigned to it (drain it first, or delete them). The node leaves memory and
    the store; a tombstone (id, name, hash of its secret) stays, so a rejoin with the
    removed identity gets `NodeRemoved` rather than a silent re-admission. The
    caller deletes the node's MQTT client (that cuts its broker connection).
    """
    node = st.nodes.get(node_id)
    if node is None:
        raise NotFound(f"node {node_id} not found")
    busy = [i.id for i in st.instances_on(node_id) if not i.state.terminal]
    if busy:
        shown = ", ".join(busy[:10]) + (f" and {len(busy) - 10} more" if len(busy) > 10 else "")
        raise NodeBusy(
            f"node {node_id} ({node.info.name}) still holds instances {shown}: drain it "
            f"first (POST /api/v1/nodes/{node_id}/drain) until they moved, or delete them"
        )
    detail = node_detail(st, node, fx.now.mono)
    del st.nodes[node_id]
    st.by_node.pop(node_id, None)
    st.index.nodes_changed()
    for cid in [c for c, p in st.pending.items() if p.node_id == node_id]:
        st.pop_pending(cid)
    for key in [k for k in st.terminating if k[0] == node_id]:
        del st.terminating[key]
    tomb: dict[str, Any] = {
        "_id": node_id,
        "name": node.info.name,
        "secret_hash": node.secret_hash,
        "removed_at": fx.now.wall,
    }
    st.removed_nodes[node_id] = tomb
    fx.delete(NODES, node_id)
    fx.delete(NODE_STATUS, node_id)
    fx.persist(REMOVED_NODES, tomb, durable=True)
    fx.event(
        None,
        kind="node.removed",
        subject=node_id,
        node_id=node_id,
        state=node.state.value,
        reason=f"{node.info.name} removed by the operator",
    )
    log.info("node %s (%s) removed", node_id, node.info.name)
    fx.report()
    return NodeRemoval(detail, None)


def place_instance(
    st: ClusterState, fx: Effects, request: PlaceInstanceRequest
) -> PlaceInstanceResponse:
    """Decide a node for a new instance and send the DEPLOY, or refuse with reasons."""
    existing = st.instances.get(request.instance_id)
    if existing is not None and not existing.state.terminal:
        return PlaceInstanceResponse(
            accepted=True,
            instance_id=existing.id,
            node_id=existing.node_id,
            node_name=st.node_name(existing.node_id) if existing.node_id else None,
            explanation=f"already placed ({existing.state.value})",
        )
    name = st.settings.name
    if request.constraints.cluster is not None and request.constraints.cluster != name:
        reason = f"cluster {request.constraints.cluster} required"
        fx.count("edge_cluster_placements_total", {"result": "rejected"})
        return PlaceInstanceResponse(
            accepted=False,
            instance_id=request.instance_id,
            reasons={reason: max(1, len(st.nodes))},
            explanation=f"this is cluster {name}",
        )
    pinned = request.constraints.node
    if pinned is not None and not any(n.info.name == pinned for n in st.nodes.values()):
        reason = f"node {pinned} not in this cluster"
        fx.count("edge_cluster_placements_total", {"result": "rejected"})
        return PlaceInstanceResponse(
            accepted=False,
            instance_id=request.instance_id,
            reasons={reason[:128]: 1},
            explanation=reason,
        )
    inst = InstanceRecord.from_request(request, fx.now.wall)
    decision = decide(st, fx, inst, exclude=set())
    if decision.chosen is None:
        reasons = dict(decision.rejections)
        if not reasons:
            reasons = {"no nodes joined": 1}
        return PlaceInstanceResponse(
            accepted=False,
            instance_id=request.instance_id,
            reasons={k[:128]: v for k, v in reasons.items()},
            explanation=decision.explain()[:1024],
        )
    if existing is not None:
        st.set_node(existing, None)
    st.instances[inst.id] = inst
    transition(
        st,
        fx,
        inst,
        InstanceState.SCHEDULED,
        "accepted by the cluster",
        report=False,
        persist=False,
    )
    assign(st, fx, inst, decision, "", report=False)
    return PlaceInstanceResponse(
        accepted=True,
        instance_id=inst.id,
        node_id=decision.chosen.id,
        node_name=decision.chosen.name or None,
        explanation=decision.explain()[:1024],
    )


def _new_node_id() -> str:
    return "n" + uuid.uuid4().hex[:16]
