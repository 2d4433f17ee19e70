"""The placement `Request` for one replica of a job: resources from its task spec,
filters from its constraints. One builder for the root (over clusters) and the
cluster (over nodes), so both levels ask the same question."""

from __future__ import annotations

from placement.model import Request
from schemas.job import Constraints, TaskSpec

__all__ = ["request_for"]


def request_for(
    spec: TaskSpec,
    constraints: Constraints,
    policy: str | None = None,
    *,
    pinned_id: str | None = None,
) -> Request:
    """The request for one replica; `pinned_id`: the node a `constraints.node` name was
    resolved to (the cluster's business: the root pins clusters elsewhere)."""
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
