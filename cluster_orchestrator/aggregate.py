"""Aggregate a cluster's nodes into the `ClusterReport` the root schedules with. Pure.

What counts (DESIGN.md section 4):

* ``nodes_by_liveness`` counts every joined node; ``nodes_cordoned`` those an operator
  cordoned or is draining;
* ``total``, ``free``, ``largest_free_*``, ``nodes`` (the per-node summary), runtimes,
  archs, accelerators and labels describe the *schedulable* nodes only: READY, not
  draining and not overloaded (the cluster's own placement refuses the others, so a
  node the cluster would refuse must not attract work at the root);
* free values are the candidates' (see `candidates`): CPU is cores minus
  reservations, the same figure the cluster's placement judges a request by, so the
  root and the cluster agree on what fits;
* labels: ``labels`` (key -> values) lists the nodes' effective labels (the cluster's
  registration labels overlaid by the node's own, what the cluster matches); a
  per-node summary carries the node's own labels only, because the root overlays
  them on the registration labels itself (``{**cluster_labels, **node.labels}``, the
  same rule) and both sets together could exceed the wire limit of 32;
* ``nodes`` lists at most `MAX_NODE_SUMMARIES` nodes, largest free memory (then CPU)
  first, so the summary keeps the nodes that can take the biggest jobs;
* ``thermal`` covers every READY node (draining ones too): it describes the site.

Quantities are clamped to the limits of the wire models (4096 cores per `Resources`,
64 per accelerator kind), so a very large cluster reports "at least that much".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from placement import Candidate
from schemas.cluster import (
    MAX_NODE_SUMMARIES,
    ClusterReport,
    InstanceChange,
    NodeCapacity,
    ThermalSummary,
)
from schemas.common import Arch, Runtime
from schemas.node import Liveness, NodeInfo
from schemas.resources import Resources

__all__ = ["HOT_THRESHOLD_C", "NodeSnapshot", "aggregate"]

#: A node at or above this temperature counts as hot in the thermal summary.
HOT_THRESHOLD_C = 75.0

_MAX_CPU = 4096.0
_MAX_MEMORY = 64 * 1024 * 1024
_MAX_DISK = 1024 * 1024 * 1024
_MAX_ACCEL = 64
_MAX_ACCEL_KINDS = 8
_MAX_LABEL_KEYS = 256
_MAX_LABEL_VALUES = 64


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """One node as the aggregator sees it: liveness, join info and its candidate."""

    liveness: Liveness
    info: NodeInfo
    candidate: Candidate

    @property
    def schedulable(self) -> bool:
        """READY, not draining, not overloaded: the cluster's placement may use it."""
        cand = self.candidate
        return self.liveness is Liveness.READY and not cand.draining and not cand.overloaded


def _resources(cpu: float, memory: int, disk: int, accel: dict[str, int]) -> Resources:
    kinds = sorted(accel)[:_MAX_ACCEL_KINDS]
    return Resources(
        cpu=round(min(max(cpu, 0.0), _MAX_CPU), 6),
        memory_mib=min(max(memory, 0), _MAX_MEMORY),
        disk_mib=min(max(disk, 0), _MAX_DISK),
        accelerators={k: min(max(accel[k], 0), _MAX_ACCEL) for k in kinds},
    )


def _add(into: dict[str, int], counts: Iterable[tuple[str, int]]) -> None:
    for kind, count in counts:
        into[kind] = into.get(kind, 0) + count


def aggregate(
    nodes: Sequence[NodeSnapshot],
    *,
    ts: float,
    seq: int,
    full: bool,
    instances: Sequence[InstanceChange] = (),
) -> ClusterReport:
    """Build the report for these nodes and instance changes."""
    by_liveness: dict[Liveness, int] = {}
    total_cpu = free_cpu = 0.0
    total_mem = free_mem = total_disk = free_disk = 0
    total_acc: dict[str, int] = {}
    free_acc: dict[str, int] = {}
    largest_cpu = 0.0
    largest_mem = 0
    runtimes: set[str] = set()
    archs: set[str] = set()
    labels: dict[str, set[str]] = {}
    summaries: list[tuple[int, float, str, NodeCapacity]] = []
    max_temp: float | None = None
    hot = throttled = cordoned = 0

    for node in nodes:
        by_liveness[node.liveness] = by_liveness.get(node.liveness, 0) + 1
        cand = node.candidate
        cordoned += int(cand.draining)
        if node.liveness is Liveness.READY:
            temp = cand.temperature_c
            if temp is not None:
                max_temp = temp if max_temp is None else max(max_temp, temp)
                if temp >= HOT_THRESHOLD_C:
                    hot += 1
            if cand.throttled:
                throttled += 1
        if not node.schedulable:
            continue
        total_cpu += cand.capacity_cpu
        total_mem += cand.capacity_memory_mib
        total_disk += cand.capacity_disk_mib
        free_cpu += cand.free_cpu
        free_mem += cand.free_memory_mib
        free_disk += cand.free_disk_mib
        _add(total_acc, ((a.kind, a.count) for a in node.info.accelerators))
        _add(free_acc, cand.free_accelerators.items())
        largest_cpu = max(largest_cpu, cand.free_cpu)
        largest_mem = max(largest_mem, cand.free_memory_mib)
        runtimes.update(cand.runtimes)
        archs.update(cand.archs)
        for key, value in cand.labels.items():
            labels.setdefault(key, set()).add(value)
        summary = NodeCapacity(
            free=_resources(
                cand.free_cpu,
                cand.free_memory_mib,
                cand.free_disk_mib,
                dict(cand.free_accelerators),
            ),
            arch=node.info.arch,
            runtimes=sorted(Runtime(r) for r in cand.runtimes),
            labels=dict(node.info.labels),
            temperature_c=cand.temperature_c,
            throttled=cand.throttled,
        )
        summaries.append((cand.free_memory_mib, cand.free_cpu, cand.id, summary))

    summaries.sort(key=lambda s: (-s[0], -s[1], s[2]))
    label_keys = sorted(labels)[:_MAX_LABEL_KEYS]
    return ClusterReport(
        ts=ts,
        seq=seq,
        full=full,
        nodes_by_liveness=by_liveness,
        nodes_cordoned=cordoned,
        total=_resources(total_cpu, total_mem, total_disk, total_acc),
        free=_resources(free_cpu, free_mem, free_disk, free_acc),
        largest_free_cpu=round(largest_cpu, 6),
        largest_free_memory_mib=largest_mem,
        nodes=[s[3] for s in summaries[:MAX_NODE_SUMMARIES]],
        runtimes=sorted(Runtime(r) for r in runtimes),
        archs=sorted(Arch(a) for a in archs),
        accelerators={k: min(v, _MAX_ACCEL) for k, v in sorted(total_acc.items())[:8]},
        labels={k: sorted(labels[k])[:_MAX_LABEL_VALUES] for k in label_keys},
        thermal=ThermalSummary(
            max_temperature_c=max_temp, hot_nodes=hot, throttled_nodes=throttled
        ),
        instances=list(instances),
    )
