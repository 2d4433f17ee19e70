"""What the cluster's placement reads, kept current instead of recomputed per decision.

A decision at 1,000 nodes used to rebuild 1,000 candidates, and sum the resources of
every instance to get the reservations, every time. `PlacementIndex` keeps instead:

* per instance that holds capacity (assigned to a node and not finished): its node
  and job, so that the reservations of a node and the replicas of a job per node
  (``job_spread``) are known without a pass over all instances;
* per node, its placement candidate, rebuilt only after something it depends on
  changed (a status, a liveness transition, drain or cordon, a new join info, an
  instance assigned, unassigned or finished there);
* one `CandidateTable` over all nodes, in the core's node order, whose stale rows
  are rewritten in place before a decision (rebuilt when nodes join or leave).

The owner (`ClusterCore`, on its thread) reports every such change (`sync`,
`node_changed`, `nodes_changed`); the result equals what a from-scratch computation
gives: CPU reservations are summed with `math.fsum` (see
`candidates.reserved_usage`), so the order of the instances does not matter, and
tests/unit/test_placement_index.py checks it on random clusters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from cluster_orchestrator.candidates import Usage, reserved_usage
from cluster_orchestrator.records import InstanceRecord
from placement import Candidate, CandidateTable
from schemas.resources import Resources

__all__ = ["PlacementIndex"]

#: Builds the candidate of a node from its id and its reservations (None: nothing reserved).
BuildFn = Callable[[str, Usage | None], Candidate]


class PlacementIndex:
    """Reservations, replicas per job and candidates of the nodes (owner thread only)."""

    __slots__ = (
        "_active",
        "_build",
        "_candidates",
        "_jobs",
        "_on_node",
        "_reserved",
        "_stale",
        "_table",
    )

    def __init__(self, build: BuildFn) -> None:
        self._build = build
        #: instance id -> (node id, job id) for instances that hold capacity
        self._active: dict[str, tuple[str, str]] = {}
        #: node id -> instance id -> resources of the instances holding capacity there
        self._on_node: dict[str, dict[str, Resources]] = {}
        #: job id -> node id -> replicas holding capacity there
        self._jobs: dict[str, dict[str, int]] = {}
        #: node id -> its reservations (None: nothing), computed when first needed
        self._reserved: dict[str, Usage | None] = {}
        self._candidates: dict[str, Candidate] = {}
        #: nodes whose table row is out of date
        self._stale: set[str] = set()
        self._table: CandidateTable | None = None

    # ------------------------------------------------------------------ changes

    def sync(self, inst: InstanceRecord) -> None:
        """Take note of an instance's current node and state (call after any change)."""
        node_id = inst.node_id
        key = (node_id, inst.job_id) if node_id is not None and not inst.state.terminal else None
        old = self._active.get(inst.id)
        if old == key:
            return
        if old is not None:
            del self._active[inst.id]
            old_node, old_job = old
            self._on_node[old_node].pop(inst.id, None)
            counts = self._jobs[old_job]
            counts[old_node] -= 1
            if not counts[old_node]:
                del counts[old_node]
                if not counts:
                    del self._jobs[old_job]
            self._reserved.pop(old_node, None)
            self.node_changed(old_node)
        if key is not None:
            node, job = key
            self._active[inst.id] = key
            self._on_node.setdefault(node, {})[inst.id] = inst.spec.resources
            counts = self._jobs.setdefault(job, {})
            counts[node] = counts.get(node, 0) + 1
            self._reserved.pop(node, None)
            self.node_changed(node)

    def reset(self, instances: Iterable[InstanceRecord]) -> None:
        """Forget everything and take note of `instances` (after loading the store)."""
        self._active.clear()
        self._on_node.clear()
        self._jobs.clear()
        self._reserved.clear()
        self.nodes_changed()
        for inst in instances:
            self.sync(inst)

    def node_changed(self, node_id: str) -> None:
        """Something the node's candidate depends on changed (a status, liveness, drain,
        cordon, join info): rebuild it when next needed."""
        self._candidates.pop(node_id, None)
        self._stale.add(node_id)

    def nodes_changed(self) -> None:
        """Nodes joined or left (or their info changed): rebuild everything when needed."""
        self._candidates.clear()
        self._stale.clear()
        self._table = None

    # ------------------------------------------------------------------ reads

    def reserved(self, node_id: str) -> Usage | None:
        """What the instances holding capacity on the node requested (None: nothing)."""
        if node_id in self._reserved:
            return self._reserved[node_id]
        held = self._on_node.get(node_id)
        usage = reserved_usage(held.values()) if held else None
        self._reserved[node_id] = usage
        return usage

    def replicas(self, job_id: str, *, without: str | None = None) -> dict[str, int]:
        """Node id -> replicas of `job_id` holding capacity there (a copy), not counting
        the instance `without` (the one being placed)."""
        counts = dict(self._jobs.get(job_id, {}))
        if without is not None:
            own = self._active.get(without)
            if own is not None and own[1] == job_id:
                left = counts[own[0]] - 1
                if left:
                    counts[own[0]] = left
                else:
                    del counts[own[0]]
        return counts

    def candidate(self, node_id: str) -> Candidate:
        """The node's candidate, rebuilt if something changed since the last one."""
        candidate = self._candidates.get(node_id)
        if candidate is None:
            candidate = self._candidates[node_id] = self._build(node_id, self.reserved(node_id))
        return candidate

    def table(self, node_ids: Sequence[str] | Mapping[str, object]) -> CandidateTable:
        """The table of every node in `node_ids` (the core's node order), up to date.

        Owned by the index and updated in place: use it for one decision at a time.
        """
        table = self._table
        if table is None or len(table) != len(node_ids) or len(self._stale) > len(table) // 4:
            table = self._table = CandidateTable(self.candidate(nid) for nid in node_ids)
        else:
            index = table.index
            for node_id in self._stale:
                if node_id in index:
                    table.update(self.candidate(node_id))
        self._stale.clear()
        return table
