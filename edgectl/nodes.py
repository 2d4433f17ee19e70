"""Finding a node across clusters for `edgectl nodes drain|cordon|uncordon` (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgectl.client import EdgectlError
from schemas.cluster_api import NodeDetail

__all__ = ["NodeHit", "find_node"]


@dataclass(frozen=True, slots=True)
class NodeHit:
    """A node and the cluster it belongs to."""

    cluster_id: str
    cluster_name: str
    node_id: str
    node_name: str


def _hits(nodes: Sequence[tuple[str, str, NodeDetail]]) -> list[NodeHit]:
    return [NodeHit(cid, cname, node.id, node.info.name) for cid, cname, node in nodes]


def find_node(
    nodes: Sequence[tuple[str, str, NodeDetail]],
    ref: str,
    *,
    unreachable: Sequence[str] = (),
) -> NodeHit:
    """The node whose id is `ref`, else the one named `ref`, among (cluster id, cluster
    name, node) triples of every cluster.

    An EdgectlError when none matches (naming the clusters that did not answer, where
    it might be) or when several nodes have that name (listing each with its cluster
    and id, so the operator can pick with --cluster or the id).
    """
    hits = _hits(nodes)
    by_id = [h for h in hits if h.node_id == ref]
    if len(by_id) == 1:
        return by_id[0]
    named = by_id or [h for h in hits if h.node_name == ref]
    if len(named) == 1:
        return named[0]
    if not named:
        where = f"; not asked: {', '.join(unreachable)} (unreachable)" if unreachable else ""
        raise EdgectlError(
            f"no node {ref!r} in any cluster{where}",
            hint="`edgectl nodes ls` lists the nodes with their ids",
        )
    listed = ", ".join(f"{h.cluster_name}/{h.node_name} ({h.node_id})" for h in named)
    raise EdgectlError(
        f"{len(named)} nodes match {ref!r}: {listed}",
        hint="give the node id, or the cluster with --cluster",
    )
