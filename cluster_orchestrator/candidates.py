"""Turn nodes (static info + latest status + reservations) into placement candidates. Pure.

Free capacity of a node, per dimension::

    free = capacity - max(reported usage, reservations of its assigned instances)

Reported usage comes from the node's latest status (CPU percent of all cores, memory
not available, disk not free); reservations are the resources requested by the
instances this cluster assigned to the node and that are not finished. Taking the
larger of the two means a burst of placements is charged at once (before any status
shows it), while work the scheduler did not place (the OS, other programs) still
counts once the node reports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from placement import Candidate, Request
from schemas.cluster import PlaceInstanceRequest
from schemas.job import Constraints, TaskSpec
from schemas.node import Liveness, NodeInfo, NodeStatus
from schemas.resources import Resources

__all__ = [
    "Usage",
    "build_candidate",
    "capacity_accelerators",
    "placement_request",
    "reported_usage",
    "reservations",
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


def reservations(assigned: Iterable[tuple[str, Resources]]) -> dict[str, Usage]:
    """Sum the resources of (node_id, resources) pairs per node."""
    out: dict[str, Usage] = {}
    for node_id, resources in assigned:
        out.setdefault(node_id, Usage()).add(resources)
    return out


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


def build_candidate(
    *,
    node_id: str,
    info: NodeInfo,
    status: NodeStatus | None,
    liveness: Liveness,
    draining: bool,
    reserved: Usage | None,
) -> Candidate:
    """The placement candidate for one node."""
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
        free_cpu=max(0.0, info.cpu_cores - max(used.cpu, res.cpu)),
        free_memory_mib=max(0, cap_mem - max(used.memory_mib, res.memory_mib)),
        free_disk_mib=max(0, cap_disk - max(used.disk_mib, res.disk_mib)),
        capacity_cpu=info.cpu_cores,
        capacity_memory_mib=cap_mem,
        capacity_disk_mib=cap_disk,
        free_accelerators=acc_free,
        runtimes=frozenset(r.value for r in runtimes),
        archs=frozenset({info.arch.value}),
        labels=dict(info.labels),
        temperature_c=node_temperature(status),
        throttled=node_throttled(status),
        draining=draining,
        ready=liveness is Liveness.READY,
    )


def placement_request(
    spec: TaskSpec,
    constraints: Constraints,
    *,
    policy: str | None,
    pinned_id: str | None = None,
) -> Request:
    """The `placement.Request` for one instance (resources from the spec, filters from
    the constraints; a `constraints.node` name must be resolved to `pinned_id`)."""
    res = spec.resources
    return Request(
        cpu=res.cpu,
        memory_mib=res.memory_mib,
        disk_mib=res.disk_mib,
        accelerators=dict(res.accelerators),
        runtime=spec.runtime.value,
        labels=dict(constraints.labels),
        archs=frozenset(a.value for a in constraints.arch) if constraints.arch else None,
        accelerator=constraints.accelerator,
        max_temperature_c=constraints.max_temperature_c,
        pinned_id=pinned_id,
        policy=policy,
    )


def request_from_place(req: PlaceInstanceRequest, pinned_id: str | None = None) -> Request:
    """Shortcut for a `PlaceInstanceRequest`."""
    policy = req.placement_policy.value if req.placement_policy else None
    return placement_request(req.spec, req.constraints, policy=policy, pinned_id=pinned_id)


def replicas_by_node(pairs: Iterable[tuple[str, str]], job_id: str) -> Mapping[str, int]:
    """How many active instances of `job_id` each node holds, from (node_id, job_id) pairs."""
    out: dict[str, int] = {}
    for node_id, jid in pairs:
        if jid == job_id:
            out[node_id] = out.get(node_id, 0) + 1
    return out
