"""The clusters resource: reports (instance changes, inference figures, missing
instances) and the cluster endpoints used for logs and node actions.

Functions over the shared `state.RootState`; `service.RootService` is their facade.
Registration and authentication are in `cluster_identity`, liveness in `liveness`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from root_orchestrator import events as event_log
from root_orchestrator import lifecycle, lookups, texts, writes
from root_orchestrator.errors import NotFound, Unauthorized
from root_orchestrator.logs import LogTarget
from root_orchestrator.records import (
    INSTANCES,
    ClusterRecord,
    InstanceRecord,
)
from root_orchestrator.state import (
    MISSING_GRACE_S,
    RootState,
)
from schemas.cluster import (
    ClusterLiveness,
    ClusterReport,
    InstanceChange,
)
from schemas.job import InstanceState
from schemas.node import InferenceStats

log = logging.getLogger(__name__)


def apply_report(st: RootState, cluster_id: str, report: ClusterReport) -> ClusterLiveness:
    """Take a cluster's aggregated capacity and instance changes."""
    with st.lock:
        since = writes.mark(st)
        old = st.clusters.get(cluster_id)
        if old is None:
            raise Unauthorized("unknown cluster")
        now = st.clock()
        st.metrics.reports.inc("true" if report.full else "false")
        st.seen_at[cluster_id] = now
        newer = old.report is None or report.ts >= old.report.ts or report.seq == 0
        rec = replace(
            old,
            last_report_at=now,
            report=report if newer else old.report,
            liveness=ClusterLiveness.READY,
            liveness_since=now if old.liveness is not ClusterLiveness.READY else old.liveness_since,
            reason="reporting",
        )
        # The capacity part of a report is volatile (the next report replaces it,
        # and a restarted root gives every cluster a fresh grace period), so the
        # record is written when its liveness or reason changes and otherwise at
        # most once per report_interval, not on every report (reports come with
        # every change of an instance). Instance changes are written as always.
        saved = st.cluster_saved_at.get(cluster_id)
        if (
            old.liveness is not ClusterLiveness.READY
            or old.reason != rec.reason
            or saved is None
            or now - saved >= st.settings.report_interval
        ):
            rec = writes.save_cluster(st, rec, old)
        else:
            rec = replace(rec, version=old.version)
            st.clusters[cluster_id] = rec
        if old.liveness is not ClusterLiveness.READY:
            event_log.emit(
                st,
                "cluster.liveness",
                cluster_id,
                cluster_id=cluster_id,
                state=ClusterLiveness.READY.value,
                reason="reporting again",
                data={"from": old.liveness.value},
            )
        reserved = st.reservations.get(cluster_id, {})
        for change in report.instances:
            reserved.pop(change.instance_id, None)
            _apply_change(st, rec, change)
        if report.full:
            _check_missing(st, rec, report, now)
        lifecycle.settle(st)
        wake = bool(st.strays or st.pending_ids or st.to_terminate)
        grew = old.report is None or texts.capacity_grew(old.report, report)
        if grew:
            st.capacity_version[cluster_id] = st.capacity_version.get(cluster_id, 0) + 1
        mark = writes.mark(st)
    writes.durable(st, since, mark)  # the cluster drops what it reported once we answer
    if wake and (grew or old.liveness is not ClusterLiveness.READY or st.strays):
        writes.kick(st)
    return ClusterLiveness.READY


def _apply_change(st: RootState, cluster: ClusterRecord, change: InstanceChange) -> None:
    inst = st.instances.get(change.instance_id)
    key = (cluster.id, change.instance_id)
    wanted_here = inst is not None and inst.cluster_id == cluster.id and not inst.state.terminal
    if not wanted_here:
        if not change.state.terminal:
            st.strays.setdefault(key, st.clock())
        else:
            st.strays.pop(key, None)
        return
    assert inst is not None
    take_inference(st, change)
    if change.ts < inst.cluster_ts:
        return  # older than what we already applied
    state = change.state
    if state is InstanceState.PENDING:
        state = InstanceState.SCHEDULED  # the cluster has it but no node yet
    changes: dict[str, Any] = {"cluster_ts": change.ts}
    if change.node_id is not None:
        changes["node_id"] = change.node_id
        node_name = change.data.get("node_name")
        if isinstance(node_name, str):
            changes["node_name"] = node_name
    if change.exit_code is not None:
        changes["exit_code"] = change.exit_code
    node_restarts = change.data.get("restarts")
    if isinstance(node_restarts, int) and node_restarts > inst.node_restarts:
        changes["node_restarts"] = node_restarts
    if inst.assigned_at is None:
        changes["assigned_at"] = st.clock()
    reason = change.reason or f"reported by cluster {cluster.name}"
    if state is inst.state and all(
        getattr(inst, k) == v for k, v in changes.items() if k != "cluster_ts"
    ):
        if change.ts > inst.cluster_ts:
            writes.save_instance(st, replace(inst, cluster_ts=change.ts), inst)
        return
    if state is inst.state:
        writes.save_instance(st, replace(inst, updated_at=st.clock(), **changes), inst)
        return
    lifecycle.transition(st, inst, state, reason, **changes)


def take_inference(st: RootState, change: InstanceChange) -> None:
    """Keep the inference figures a change carries (any report of the owning cluster
    has the latest ones; they are not persisted)."""
    raw = change.data.get("inference")
    stats = None
    if isinstance(raw, dict) and not change.state.terminal:
        try:
            stats = InferenceStats.model_validate(raw)
        except ValidationError:
            stats = None
    if stats is None:
        st.inference.pop(change.instance_id, None)
    else:
        st.inference[change.instance_id] = stats


def _check_missing(
    st: RootState, cluster: ClusterRecord, report: ClusterReport, now: float
) -> None:
    listed = {c.instance_id for c in report.instances}
    for inst in lookups.cluster_instances(st, cluster.id):
        if (
            inst.id not in listed
            and inst.id not in st.in_flight
            and inst.assigned_at is not None
            and inst.assigned_at < now - MISSING_GRACE_S
        ):
            if inst.terminate:
                lifecycle.transition(
                    st, inst, InstanceState.TERMINATED, inst.terminate_reason or "terminated"
                )
            else:
                lifecycle.transition(
                    st,
                    inst,
                    InstanceState.LOST,
                    f"cluster {cluster.name} no longer reports this instance",
                )


def cluster_endpoint(st: RootState, ref: str) -> tuple[ClusterRecord, str | None]:
    """(cluster, API token) for calling a cluster's API."""
    with st.lock:
        rec = lookups.cluster_by_ref(st, ref)
        if rec is None:
            raise NotFound(f"no cluster {texts.shown(ref)}")
        return rec, rec.api_token


def log_target(st: RootState, job_ref: str, instance_id: str) -> LogTarget:
    """Where an instance of a job (by id or name) runs, to read its logs there.

    NotFound for an unknown job, or an instance that is not one of the job's.
    """
    with st.lock:
        job = lookups.resolve_job(st, job_ref)
        inst = st.instances.get(instance_id)
        if inst is None:
            doc = st.persister.get(INSTANCES, instance_id)
            inst = InstanceRecord.from_doc(doc) if doc else None
        if inst is None or inst.job_id != job.id:
            raise NotFound(f"job {job.name} has no instance {instance_id!r}")
        cluster = st.clusters.get(inst.cluster_id) if inst.cluster_id else None
        return LogTarget(
            job_id=job.id,
            job_name=job.name,
            instance_id=inst.id,
            replica=inst.replica,
            state=inst.state,
            cluster_id=cluster.id if cluster else None,
            cluster_name=cluster.name if cluster else "",
            cluster_url=cluster.url if cluster else "",
            token=cluster.api_token if cluster else None,
            liveness=cluster.liveness if cluster else None,
        )


def record_node_action(
    st: RootState,
    cluster: ClusterRecord,
    node_id: str,
    node_name: str,
    action: str,
    *,
    moved: int = 0,
    stuck: int = 0,
) -> None:
    """Record an operator's drain, cordon or uncordon of a node (event ``node.<action>``)."""
    reason = f"{action} of node {node_name} on cluster {cluster.name} by an operator"
    if action == "drain":
        reason += f": {moved} instance(s) moved, {stuck} stuck"
    with st.lock:
        since = writes.mark(st)
        event_log.emit(
            st,
            f"node.{action}",
            node_id,
            reason=reason,
            cluster_id=cluster.id,
            node_id=node_id,
            data={"node_name": node_name, "moved": moved, "stuck": stuck},
        )
        mark = writes.mark(st)
    writes.durable(st, since, mark)
