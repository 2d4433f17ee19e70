"""What a placement plan sees of the root's state: the clusters' snapshots (capacity
as last reported, less reservations), the clusters that refused an instance recently,
the cluster a job pins, and the job's other replicas by cluster.

Reads of `state.RootState` (the lock held by the caller); `placing` hands them to the
pure `placement_plan.plan_placement`, `jobs.plan_update` to `plan_placements`.
"""

from __future__ import annotations

from collections.abc import Iterable

from root_orchestrator import lookups
from root_orchestrator.placement_plan import PinnedCluster
from root_orchestrator.scheduler import ClusterSnapshot
from root_orchestrator.state import REFUSAL_TTL_S, RootState
from schemas.cluster import ClusterLiveness
from schemas.root_api import ClusterRejection

__all__ = ["existing_replicas", "pinned_cluster", "recent_refusals", "snapshots"]


def snapshots(
    st: RootState, exclude: Iterable[str], *, prune: bool = True
) -> list[ClusterSnapshot]:
    """What the plan sees of each cluster (liveness, report, reservations), by id; stale
    reservations (older than 3 report intervals) are dropped unless `prune` is off."""
    now = st.clock()
    max_age = max(3 * st.settings.report_interval, 10.0)
    skip = set(exclude)
    snaps = []
    for rec in sorted(st.clusters.values(), key=lambda c: c.id):
        if rec.id in skip:
            continue
        reserved = st.reservations.get(rec.id, {})
        for iid, (_req, at) in list(reserved.items()):
            if prune and now - at > max_age:
                del reserved[iid]
        snaps.append(
            ClusterSnapshot(
                id=rec.id,
                name=rec.name,
                ready=rec.liveness is ClusterLiveness.READY,
                report=rec.report,
                labels=rec.labels,
                reserved=tuple(req for req, _at in reserved.values()),
            )
        )
    return snaps


def recent_refusals(st: RootState, instance_id: str) -> dict[str, ClusterRejection]:
    """Clusters that refused this instance recently and have not grown since.

    They are not asked again until their report shows more capacity or
    REFUSAL_TTL_S has passed, so a refusing cluster is not hammered every pass.
    """
    now = st.clock()
    out: dict[str, ClusterRejection] = {}
    refusals = st.refusals.get(instance_id, {})
    for cluster_id, (rejection, at, version) in list(refusals.items()):
        fresh = now - at < REFUSAL_TTL_S
        if fresh and version == st.capacity_version.get(cluster_id, 0):
            out[cluster_id] = rejection
        else:
            del refusals[cluster_id]
    return out


def pinned_cluster(st: RootState, ref: str | None) -> PinnedCluster | None:
    """The cluster named by a spec's `constraints.cluster` as the plan sees it (None:
    the spec names none)."""
    if ref is None:
        return None
    cluster = lookups.cluster_by_ref(st, ref)
    if cluster is None:
        return PinnedCluster(ref)
    return PinnedCluster(ref, cluster.id, cluster.name, cluster.liveness)


def existing_replicas(st: RootState, job_id: str, instance_id: str) -> dict[str, int]:
    """The job's other live replicas by cluster id (the plan spreads them)."""
    existing: dict[str, int] = {}
    for other in lookups.job_instances(st, job_id):
        if other.cluster_id and not other.state.terminal and other.id != instance_id:
            existing[other.cluster_id] = existing.get(other.cluster_id, 0) + 1
    return existing
