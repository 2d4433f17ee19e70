"""Operator actions on a cluster's nodes through the root: drain, cordon, uncordon.

The root finds the node in the cluster's live node list (by id, else by name), asks
the cluster to act (its own API does the work and persists it), records a root event
and answers with what the cluster said, node names filled in. Pure helpers here; the
route is in `routers/clusters.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from root_orchestrator.service import Conflict, NotFound
from schemas.root_api import MovedInstance, StuckInstance

__all__ = ["moved_and_stuck", "node_name", "resolve_node"]


def node_name(node: Mapping[str, Any]) -> str:
    """The node's name from a cluster's node document ('' when it has none)."""
    info = node.get("info")
    return str(info.get("name", "")) if isinstance(info, Mapping) else ""


def resolve_node(nodes: Sequence[Any], ref: str, cluster: str) -> Mapping[str, Any]:
    """The node whose id is `ref`, else the one named `ref`.

    NotFound when none matches; Conflict naming every candidate's id when several
    nodes share the name (the operator then gives the id).
    """
    docs = [n for n in nodes if isinstance(n, Mapping)]
    for node in docs:
        if node.get("id") == ref:
            return node
    named = [n for n in docs if node_name(n) == ref]
    if not named:
        raise NotFound(f"no node {ref!r} in cluster {cluster}")
    if len(named) > 1:
        ids = ", ".join(sorted(str(n.get("id")) for n in named))
        raise Conflict(
            f"{len(named)} nodes are named {ref!r} in cluster {cluster}: {ids}; give the id"
        )
    return named[0]


def moved_and_stuck(
    answer: Mapping[str, Any], nodes: Sequence[Any]
) -> tuple[list[MovedInstance], list[StuckInstance]]:
    """The cluster's ``moved`` (instance -> node id) and ``stuck`` (instance -> why)."""
    names = {str(n.get("id")): node_name(n) for n in nodes if isinstance(n, Mapping)}
    moved_map = answer.get("moved") if isinstance(answer.get("moved"), Mapping) else {}
    stuck_map = answer.get("stuck") if isinstance(answer.get("stuck"), Mapping) else {}
    moved = [
        MovedInstance(instance_id=str(i), node_id=str(n), node_name=names.get(str(n)) or None)
        for i, n in sorted((moved_map or {}).items())
    ]
    stuck = [
        StuckInstance(instance_id=str(i), reason=str(r))
        for i, r in sorted((stuck_map or {}).items())
    ]
    return moved, stuck
