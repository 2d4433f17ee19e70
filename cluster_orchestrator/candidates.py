"""Turn nodes (static info + latest status + reservations) into placement candidates. Pure.

Free capacity of a node, per dimension::

    free cpu            = cores - reservations
    free memory / disk  = capacity - max(reported usage, reservations)

Reservations are the resources requested by the instances this cluster assigned to
the node and that are not finished; they are charged from the moment of the decision,
so a burst of placements spreads before any status shows it. Reported usage comes from
the node's latest status (CPU percent of all cores, memory not available, disk not
free).

CPU is compressible: a node busy with work the scheduler did not place (the OS, other
programs, a test suite on the same host) runs a new task slower, it does not fail it.
So, as in Kubernetes and Nomad, CPU feasibility counts requests only; the measured use
goes to the candidate as ``cpu_used``, which the allocation scorers count (spread
prefers the less loaded node), and a node that cannot keep up at all is marked
``overloaded`` (its engine is shedding work, or, when ``overload_cpu_percent`` is set,
its CPU is at or above it) and refused by the ``overloaded`` filter. Memory and disk
are not compressible (a task that does not get its memory is killed), so what a node
reports in use there still counts against feasibility.

A node's labels for placement are the cluster's labels (settings ``labels``, also
sent to the root at registration) overlaid by the node's own: a job constrained on
``region=eu`` set on the cluster fits every node that does not say otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from placement import Candidate, Request
from placement.from_spec import request_for
from schemas.cluster import PlaceInstanceRequest
from schemas.node import Liveness, NodeInfo, NodeStatus
from schemas.resources import Resources

__all__ = [
    "Usage",
    "build_candidate",
    "capacity_accelerators",
    "effective_labels",
    "node_overloaded",
    "reported_usage",
    "reservations",
    "reserved_usage",
]


@dataclass(slots=True)
class Usage:
    """An amount of resources in use or reserved on one node."""

    cpu: float = 0.0
    memory_mib: int = 0
    disk_mib: int = 0
    accelerators: dict[str, int] = field(default_factory=dict)

    def add(self, resources: Resources) -> None:
        """Add a request's resources (a reservation)."""
        self.cpu += resources.cpu
        self.memory_mib += resources.memory_mib
        self.disk_mib += resources.disk_mib
        for kind, count in resources.accelerators.items():
            self.accelerators[kind] = self.accelerators.get(kind, 0) + count


def reserved_usage(requested: Iterable[Resources]) -> Usage:
    """The sum of some requests. CPU is summed with `math.fsum` (correctly rounded), so
    the result does not depend on the order: an index kept up to date instance by
    instance gives exactly what a pass over all instances gives."""
    items = list(requested)
    accelerators: dict[str, int] = {}
    for resources in items:
        for kind, count in resources.accelerators.items():
            accelerators[kind] = accelerators.get(kind, 0) + count
    return Usage(
        cpu=math.fsum(r.cpu for r in items),
        memory_mib=sum(r.memory_mib for r in items),
        disk_mib=sum(r.disk_mib for r in items),
        accelerators=accelerators,
    )


def reservations(assigned: Iterable[tuple[str, Resources]]) -> dict[str, Usage]:
    """Sum the resources of (node_id, resources) pairs per node (see `reserved_usage`)."""
    per_node: dict[str, list[Resources]] = {}
    for node_id, resources in assigned:
        per_node.setdefault(node_id, []).append(resources)
    return {node_id: reserved_usage(items) for node_id, items in per_node.items()}


def reported_usage(info: NodeInfo, status: NodeStatus | None) -> Usage:
    """What the node says it uses (zero when it has not reported yet)."""
    if status is None:
        return Usage()
    return Usage(
        cpu=status.cpu_percent / 100.0 * info.cpu_cores,
        memory_mib=max(0, status.memory.total_mib - status.memory.available_mib),
        disk_mib=max(0, status.disk.total_mib - status.disk.free_mib),
    )


def capacity_accelerators(info: NodeInfo) -> dict[str, int]:
    """Accelerator counts by kind from the node's join info."""
    out: dict[str, int] = {}
    for acc in info.accelerators:
        out[acc.kind] = out.get(acc.kind, 0) + acc.count
    return out


def node_temperature(status: NodeStatus | None) -> float | None:
    """Hottest sensor of the latest status (None when unknown)."""
    if status is None:
        return None
    if status.max_temperature_c is not None:
        return status.max_temperature_c
    if status.temperatures_c:
        return max(status.temperatures_c.values())
    return None


def node_throttled(status: NodeStatus | None) -> bool:
    """True when the latest status says the device is throttled right now."""
    return status is not None and status.throttling.throttled


def node_overloaded(status: NodeStatus | None, overload_cpu_percent: float | None) -> bool:
    """True when the node cannot keep up with its work: its engine is shedding (holding
    tasks back under pressure), or its CPU is at or above `overload_cpu_percent`."""
    if status is None:
        return False
    if status.shedding:
        return True
    return overload_cpu_percent is not None and status.cpu_percent >= overload_cpu_percent


def effective_labels(
    cluster_labels: Mapping[str, str], node_labels: Mapping[str, str]
) -> dict[str, str]:
    """The labels placement matches: the cluster's, overlaid by the node's own."""
    return {**cluster_labels, **node_labels}


def build_candidate(
    *,
    node_id: str,
    info: NodeInfo,
    status: NodeStatus | None,
    liveness: Liveness,
    draining: bool,
    reserved: Usage | None,
    cluster_labels: Mapping[str, str] | None = None,
    overload_cpu_percent: float | None = None,
) -> Candidate:
    """The placement candidate for one node (see the module docstring)."""
    used = reported_usage(info, status)
    res = reserved or Usage()
    cap_disk = info.disk_mib
    if status is not None and status.disk.total_mib > 0:
        cap_disk = status.disk.total_mib
    cap_mem = info.memory_mib
    acc_cap = capacity_accelerators(info)
    acc_free = {k: max(0, n - res.accelerators.get(k, 0)) for k, n in acc_cap.items()}
    runtimes = status.runtimes if status is not None and status.runtimes else info.runtimes
    return Candidate(
        id=node_id,
        name=info.name,
        free_cpu=max(0.0, info.cpu_cores - res.cpu),
        free_memory_mib=max(0, cap_mem - max(used.memory_mib, res.memory_mib)),
        free_disk_mib=max(0, cap_disk - max(used.disk_mib, res.disk_mib)),
        capacity_cpu=info.cpu_cores,
        capacity_memory_mib=cap_mem,
        capacity_disk_mib=cap_disk,
        free_accelerators=acc_free,
        runtimes=frozenset(r.value for r in runtimes),
        archs=frozenset({info.arch.value}),
        labels=effective_labels(cluster_labels or {}, info.labels),
        temperature_c=node_temperature(status),
        throttled=node_throttled(status),
        draining=draining,
        ready=liveness is Liveness.READY,
        cpu_used=used.cpu if status is not None else None,
        overloaded=node_overloaded(status, overload_cpu_percent),
    )


def request_from_place(req: PlaceInstanceRequest, pinned_id: str | None = None) -> Request:
    """Shortcut for a `PlaceInstanceRequest`."""
    policy = req.placement_policy.value if req.placement_policy else None
    return request_for(req.spec, req.constraints, policy, pinned_id=pinned_id)


def replicas_by_node(pairs: Iterable[tuple[str, str]], job_id: str) -> Mapping[str, int]:
    """How many active instances of `job_id` each node holds, from (node_id, job_id) pairs."""
    out: dict[str, int] = {}
    for node_id, jid in pairs:
        if jid == job_id:
            out[node_id] = out.get(node_id, 0) + 1
    return out
