"""The state tables of the cluster core: everything it knows, in memory, in one place.

`ClusterState` is a plain dataclass. The plan functions (`inbound`, `commands`,
`admission`, `timers`) read and change it and describe their side effects as values
(`effects`); the core loop (`core.ClusterCore`) owns it on one thread and runs the
effects. Nothing in this module does I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from cluster_orchestrator.candidates import Usage, build_candidate
from cluster_orchestrator.placement_index import PlacementIndex
from cluster_orchestrator.records import InstanceRecord, NodeRecord
from cluster_orchestrator.settings import ClusterSettings
from placement import Candidate
from schemas.mqtt import CommandMessage
from schemas.node import InferenceStats

__all__ = ["ClusterState", "PendingCommand"]


@dataclass(slots=True)
class PendingCommand:
    """A command waiting for its ack."""

    message: CommandMessage
    kind: str
    node_id: str
    instance_id: str
    deadline: float
    sent: int = 1
    orphan: bool = False


@dataclass(slots=True, eq=False)
class ClusterState:
    """Nodes, instances, commands in flight and timers of one cluster (one owner thread).

    `settings` and `rng` are what the decisions depend on besides the tables: the
    cluster's configuration and the tie-breaking random source (seeded in tests).
    """

    settings: ClusterSettings
    rng: random.Random = field(default_factory=random.Random)
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    #: tombstones of removed nodes by id (see `admission.remove_node`)
    removed_nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    instances: dict[str, InstanceRecord] = field(default_factory=dict)
    #: node id -> ids of the instances assigned there (may hold finished ones)
    by_node: dict[str, set[str]] = field(default_factory=dict)
    #: reservations, replicas per job and candidates, kept current (see `scheduling.decide`)
    index: PlacementIndex = field(init=False)
    #: command id -> the command waiting for its ack
    pending: dict[str, PendingCommand] = field(default_factory=dict)
    #: instance id -> id of its pending DEPLOY (at most one: `sending.deploy` drops older ones)
    deploying: dict[str, str] = field(default_factory=dict)
    #: (node id, instance id) -> id of the pending TERMINATE
    terminating: dict[tuple[str, str], str] = field(default_factory=dict)
    #: latest figures of inference tasks from node statuses (memory only: they are a
    #: second old at best and a restart loses nothing worth keeping)
    inference: dict[str, InferenceStats] = field(default_factory=dict)
    #: status ingestion lags since the last tick (seconds)
    lags: list[float] = field(default_factory=list)
    next_reconcile: float = 0.0
    next_snapshot: float = 0.0
    next_gauges: float = 0.0
    #: monotonic time of the next rebalancing pass (None: nothing to look at)
    rebalance_at: float | None = None

    def __post_init__(self) -> None:
        self.index = PlacementIndex(self._build_candidate)

    # ---------------------------------------------------------------- reads

    def node_name(self, node_id: str | None) -> str:
        """The node's name (its id when unknown, ``-`` for none)."""
        if node_id is None:
            return "-"
        node = self.nodes.get(node_id)
        return node.info.name if node else node_id

    def instances_on(self, node_id: str) -> list[InstanceRecord]:
        """The instances assigned to `node_id`, by id."""
        out = []
        for iid in sorted(self.by_node.get(node_id, ())):
            inst = self.instances.get(iid)
            if inst is not None and inst.node_id == node_id:
                out.append(inst)
        return out

    def candidate(self, node: NodeRecord, reserved: Usage | None) -> Candidate:
        """One node as a placement candidate: its labels overlaid on the cluster's, CPU
        free by reservations, measured load for scoring and the overload filter."""
        return build_candidate(
            node_id=node.id,
            info=node.info,
            status=node.status,
            liveness=node.liveness.state,
            draining=node.draining or node.cordoned,  # placement: neither takes new work
            reserved=reserved,
            cluster_labels=self.settings.labels,
            overload_cpu_percent=self.settings.overload_cpu_percent,
        )

    def _build_candidate(self, node_id: str, reserved: Usage | None) -> Candidate:
        return self.candidate(self.nodes[node_id], reserved)

    def candidates(self, exclude: set[str] | frozenset[str] = frozenset()) -> list[Candidate]:
        """Candidates for every known node except `exclude` (from the placement index)."""
        return [self.index.candidate(nid) for nid in self.nodes if nid not in exclude]

    # ---------------------------------------------------------------- changes

    def set_node(self, inst: InstanceRecord, node_id: str | None) -> None:
        """Assign `inst` to `node_id` (None: to no node), keeping the indexes current."""
        if inst.node_id is not None:
            ids = self.by_node.get(inst.node_id)
            if ids is not None:
                ids.discard(inst.id)
        inst.node_id = node_id
        if node_id is not None:
            self.by_node.setdefault(node_id, set()).add(inst.id)
        self.index.sync(inst)

    def drop_pending_deploys(self, instance_id: str) -> None:
        """Forget the DEPLOY waiting for an ack for this instance, if any."""
        cid = self.deploying.pop(instance_id, None)
        if cid is not None:
            self.pending.pop(cid, None)

    def pop_pending(self, command_id: str) -> PendingCommand | None:
        """Forget a pending command (and the deploy index entry pointing at it)."""
        pending = self.pending.pop(command_id, None)
        if (
            pending is not None
            and pending.kind == "deploy"
            and self.deploying.get(pending.instance_id) == command_id
        ):
            del self.deploying[pending.instance_id]
        return pending

    def arm_rebalance(self, at: float) -> None:
        """Ask for a rebalancing pass at `at` (or earlier, if one is already due)."""
        if self.settings.rebalance and (self.rebalance_at is None or at < self.rebalance_at):
            self.rebalance_at = at
