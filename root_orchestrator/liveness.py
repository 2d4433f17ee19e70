"""Cluster liveness: READY -> UNREACHABLE -> LOST from a cluster's silence, and what that does
to its instances.

Functions over the shared `state.RootState`; `service.RootService` is their facade.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from root_orchestrator import events as event_log
from root_orchestrator import lifecycle, lookups, texts, writes
from root_orchestrator.records import ClusterRecord
from root_orchestrator.state import RootState
from schemas.cluster import ClusterLiveness

log = logging.getLogger(__name__)


def check_liveness(st: RootState) -> None:
    """Mark silent clusters UNREACHABLE, then LOST (their instances LOST too)."""
    settings = st.settings
    with st.lock:
        now = st.clock()
        for old in list(st.clusters.values()):
            silent = now - st.seen_at.get(old.id, now)
            rec = old
            if rec.liveness is ClusterLiveness.READY and silent > (
                settings.cluster_unreachable_after
            ):
                rec = _set_liveness(
                    st, rec, ClusterLiveness.UNREACHABLE, f"no report for {silent:.1f}s"
                )
            if rec.liveness is not ClusterLiveness.LOST and silent > (settings.cluster_lost_after):
                rec = _set_liveness(st, rec, ClusterLiveness.LOST, f"no report for {silent:.1f}s")
            if rec.liveness is ClusterLiveness.READY:
                continue
            for inst in lookups.cluster_instances(st, rec.id):
                if inst.state.terminal:  # lost earlier in this loop
                    continue
                if rec.liveness is ClusterLiveness.LOST:
                    lifecycle.lose(st, inst, f"cluster {rec.name} lost (silent {silent:.0f}s)")
                    continue
                job = st.jobs.get(inst.job_id)
                grace = job.spec.lost_grace_s if job else None
                if grace is not None and silent > grace:
                    lifecycle.lose(
                        st,
                        inst,
                        f"cluster {rec.name} unreachable for {silent:.0f}s "
                        f"> the job's lost_grace_s {grace:g}",
                    )
        lifecycle.settle(st)


def _set_liveness(
    st: RootState, rec: ClusterRecord, liveness: ClusterLiveness, reason: str
) -> ClusterRecord:
    new = replace(rec, liveness=liveness, liveness_since=st.clock(), reason=reason)
    new = writes.save_cluster(st, new, rec)
    event_log.emit(
        st,
        "cluster.liveness",
        rec.id,
        cluster_id=rec.id,
        state=liveness.value,
        reason=reason,
        data={"from": rec.liveness.value},
    )
    if liveness is not ClusterLiveness.READY:
        st.reservations.pop(rec.id, None)
    return new


def liveness_wake_in(st: RootState) -> float | None:
    """Seconds until a cluster's silence crosses the next liveness threshold (or a
    job's lost_grace_s while it is UNREACHABLE), so that a silent cluster is
    marked (and its instances replaced) when it is due, not up to a reconcile
    interval later."""
    now = st.clock()
    settings = st.settings
    soonest: float | None = None
    for rec in st.clusters.values():
        if rec.liveness is ClusterLiveness.LOST:
            continue
        seen = st.seen_at.get(rec.id, now)
        limits = [settings.cluster_lost_after]
        if rec.liveness is ClusterLiveness.READY:
            limits.append(settings.cluster_unreachable_after)
        for limit in limits:
            soonest = texts.soonest(soonest, seen + limit - now + 0.01)
    return soonest if soonest is None or soonest > 0 else 0.01
