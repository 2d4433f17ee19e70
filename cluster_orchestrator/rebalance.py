"""Which instance of a spread job to move when its replicas sit unevenly on the nodes.

A spread job's replicas pile up on the nodes that stayed when another node was lost
(its instances were rescheduled there). When that node returns, the cluster moves them
back, one replica per job at a time, so the job is spread again (docs/cluster-
orchestrator.md, "Rebalancing"). This module only decides *what* may move and *where it
may go*; the core runs the normal placement pipeline over the allowed nodes (so every
filter applies and the decision is explained) and does the move.

Pure: plain data in, plain data out, no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

__all__ = ["Move", "Placed", "rebalance_moves"]


@dataclass(frozen=True, slots=True)
class Placed:
    """One unfinished instance of a spread job and where it is."""

    instance_id: str
    job_id: str
    node_id: str
    #: RUNNING (a replica still on its way blocks its job's rebalancing)
    running: bool
    #: may move at all (not pinned to its node by constraints.node)
    movable: bool = True


@dataclass(frozen=True, slots=True)
class Move:
    """Move `instance_id` off `source` to one of `allowed` (chosen by placement)."""

    instance_id: str
    job_id: str
    source: str
    allowed: frozenset[str]
    #: replicas of the job per node before the move (for the explanation)
    counts: dict[str, int]


def rebalance_moves(instances: Iterable[Placed], targets: Collection[str]) -> list[Move]:
    """At most one move per job: from its fullest node to the nodes of `targets` that
    hold at least two replicas fewer (so a move always narrows the gap and two nodes
    never trade a replica back and forth).

    Jobs with a replica that is not RUNNING yet (one that is starting, or the previous
    move still under way) are left for a later pass.
    """
    by_job: dict[str, list[Placed]] = {}
    for inst in instances:
        by_job.setdefault(inst.job_id, []).append(inst)
    moves: list[Move] = []
    for job_id in sorted(by_job):
        group = by_job[job_id]
        if len(group) < 2 or not all(i.running for i in group):
            continue
        counts: dict[str, int] = {}
        for inst in group:
            counts[inst.node_id] = counts.get(inst.node_id, 0) + 1
        for node in targets:
            counts.setdefault(node, 0)
        movable = [i for i in group if i.movable]
        sources = {i.node_id for i in movable}
        if not sources:
            continue
        source = min(sources, key=lambda n: (-counts[n], n))
        allowed = frozenset(t for t in targets if counts[t] <= counts[source] - 2)
        if not allowed:
            continue
        chosen = max((i for i in movable if i.node_id == source), key=lambda i: i.instance_id)
        moves.append(Move(chosen.instance_id, job_id, source, allowed, dict(counts)))
    return moves
