"""Adapt cluster reports to `placement/` candidates and job specs to requests. Pure.

The root sees a cluster only through its latest `ClusterReport`. A cluster becomes
one `Candidate` whose `units` are the per-node summaries (`ClusterReport.nodes`), so
`placement` only chooses a cluster where one node can take the whole replica.

Constraints that `placement.Unit` does not model are applied here, per request:

* node labels (`constraints.labels`): only nodes whose labels (merged with the
  cluster's registration labels) carry every required label become units; the
  candidate shows the required labels when at least one node has them, so the label
  filter rejects exactly the clusters where no node has them;
* temperature (`constraints.max_temperature_c`) and throttling: hot or throttled
  nodes are left out of the units; the candidate's temperature is that of its
  coolest eligible node, and it counts as throttled only when every node is.

Reservations (replicas sent to a cluster since its report was made) are taken out
of the candidates with `placement.reserve_in`, so a burst does not all land on the
cluster that looked emptiest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from placement import Candidate, CandidateTable, Request, Unit, reserve_all, reserve_in
from placement.from_spec import request_for as request_for
from schemas.cluster import ClusterReport, NodeCapacity
from schemas.node import Liveness

__all__ = [
    "ClusterSnapshot",
    "build_candidate",
    "build_candidates",
    "request_for",
]


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """What the root knows about one cluster when it schedules.

    `ready` is the root's liveness verdict (READY); `report` the latest report (None
    before the first one); `reserved` the requests placed there since that report.
    """

    id: str
    name: str
    ready: bool
    report: ClusterReport | None
    labels: Mapping[str, str] = field(default_factory=dict)
    reserved: tuple[Request, ...] = ()


def _node_labels(node: NodeCapacity, cluster_labels: Mapping[str, str]) -> dict[str, str]:
    return {**cluster_labels, **node.labels}


def _eligible(request: Request, node: NodeCapacity, cluster_labels: Mapping[str, str]) -> bool:
    """Node-level checks `placement.Unit` cannot express: labels, heat, throttling."""
    if node.throttled:
        return False
    limit = request.max_temperature_c
    if limit is not None and node.temperature_c is not None and node.temperature_c > limit:
        return False
    labels = _node_labels(node, cluster_labels)
    return all(labels.get(k) == v for k, v in request.labels.items())


def _unit(node: NodeCapacity) -> Unit:
    return Unit(
        free_cpu=node.free.cpu,
        free_memory_mib=node.free.memory_mib,
        free_disk_mib=node.free.disk_mib,
        arch=node.arch.value,
        runtimes=frozenset(r.value for r in node.runtimes),
        free_accelerators=dict(node.free.accelerators),
    )


def _fallback_units(report: ClusterReport) -> tuple[Unit, ...]:
    """Units for a report without per-node summaries: the largest free node, per arch."""
    ready = report.nodes_by_liveness.get(Liveness.READY, 0)
    if ready <= 0:
        return ()
    runtimes = frozenset(r.value for r in report.runtimes)
    return tuple(
        Unit(
            free_cpu=report.largest_free_cpu,
            free_memory_mib=report.largest_free_memory_mib,
            free_disk_mib=report.free.disk_mib,
            arch=arch.value,
            runtimes=runtimes,
            free_accelerators=dict(report.free.accelerators),
        )
        for arch in report.archs
    )


def _min_temperature(temps: Iterable[float | None]) -> float | None:
    known = [t for t in temps if t is not None]
    return min(known) if known else None


def _unreserved(request: Request, snapshot: ClusterSnapshot) -> Candidate:
    """One cluster as a placement candidate for `request`, from its report alone."""
    report = snapshot.report
    if report is None:
        return Candidate(id=snapshot.id, name=snapshot.name, ready=False, units=())
    cluster_labels = dict(snapshot.labels)
    labels: dict[str, str] = dict(cluster_labels)
    if report.nodes:
        label_ok = [
            n
            for n in report.nodes
            if all(_node_labels(n, cluster_labels).get(k) == v for k, v in request.labels.items())
        ]
        if label_ok and request.labels:
            labels.update(request.labels)
        eligible = [n for n in report.nodes if _eligible(request, n, cluster_labels)]
        units = tuple(_unit(n) for n in eligible)
        temperature = _min_temperature(n.temperature_c for n in (label_ok or report.nodes))
        throttled = all(n.throttled for n in report.nodes)
    else:
        for key, values in report.labels.items():
            if request.labels.get(key) in values:
                labels[key] = request.labels[key]
        units = _fallback_units(report)
        temperature = report.thermal.max_temperature_c
        throttled = False
    accelerators = {kind: report.free.accelerators.get(kind, 0) for kind in report.accelerators}
    accelerators.update(report.free.accelerators)
    return Candidate(
        id=snapshot.id,
        name=snapshot.name,
        free_cpu=report.free.cpu,
        free_memory_mib=report.free.memory_mib,
        free_disk_mib=report.free.disk_mib,
        capacity_cpu=report.total.cpu,
        capacity_memory_mib=report.total.memory_mib,
        capacity_disk_mib=report.total.disk_mib,
        free_accelerators=accelerators,
        runtimes=frozenset(r.value for r in report.runtimes),
        archs=frozenset(a.value for a in report.archs),
        labels=labels,
        temperature_c=temperature,
        throttled=throttled,
        ready=snapshot.ready,
        units=units,
    )


def build_candidate(request: Request, snapshot: ClusterSnapshot) -> Candidate:
    """One cluster as a placement candidate for `request`, reservations applied (a
    request the report already shows less room for than was reserved takes nothing)."""
    return reserve_all(_unreserved(request, snapshot), snapshot.reserved)


def build_candidates(request: Request, snapshots: Sequence[ClusterSnapshot]) -> CandidateTable:
    """Every cluster as a candidate for `request` (order kept), reservations applied, as
    the table `place` decides on (the reservations of all clusters checked together)."""
    table = CandidateTable(_unreserved(request, s) for s in snapshots)
    reserve_in(table, {s.id: s.reserved for s in snapshots if s.reserved})
    return table
