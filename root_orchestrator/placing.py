"""Placement and termination in two halves around the cluster call: `begin_placement`
(take a snapshot, ask `placement_plan.plan_placement`, apply the plan: SCHEDULED, reserve,
persist, then the reconciler calls the cluster) / `finish_placement` (apply the cluster's
answer), and `termination_work` / `finish_termination`.

Functions over the shared `state.RootState`; `service.RootService` is their facade.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, Literal

from placement import Decision
from root_orchestrator import events as event_log
from root_orchestrator import lifecycle, lookups, placement_plan, texts, writes
from root_orchestrator.placement_plan import PinnedCluster, PlacementPlan, StayPending
from root_orchestrator.records import (
    ClusterRecord,
    InstanceRecord,
    JobRecord,
)
from root_orchestrator.scheduler import ClusterSnapshot
from root_orchestrator.state import (
    REFUSAL_TTL_S,
    RootState,
)
from root_orchestrator.steps import PlacementStep, TerminateStep
from schemas.cluster import (
    ClusterLiveness,
    PlaceInstanceRequest,
    PlaceInstanceResponse,
)
from schemas.job import InstanceState
from schemas.root_api import ClusterRejection, PlacementInfo

log = logging.getLogger(__name__)


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


def _recent_refusals(st: RootState, instance_id: str) -> dict[str, ClusterRejection]:
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


def begin_placement(
    st: RootState, instance_id: str, rejections: Mapping[str, ClusterRejection]
) -> PlacementStep | None:
    """Choose a cluster for a PENDING instance, record SCHEDULED and reserve.

    `rejections` holds the clusters that refused it during this attempt (they are
    left out). Returns the call to make, or None when the instance stays where it
    is (PENDING with its reasons, or no longer needs placing).
    """
    with st.lock:
        since = writes.mark(st)
        step = _begin(st, instance_id, rejections)
        mark = writes.mark(st)
    if step is not None:
        _durable_or_release(st, since, mark, [step])
    return step


def begin_placements(st: RootState, instance_ids: Iterable[str]) -> list[PlacementStep]:
    """`begin_placement` for several instances under one hold of the lock and one
    wait for the store (no clusters left out beyond their recent refusals)."""
    with st.lock:
        since = writes.mark(st)
        steps = [s for s in (_begin(st, i, {}) for i in instance_ids) if s is not None]
        mark = writes.mark(st)
    if steps:
        _durable_or_release(st, since, mark, steps)
    return steps


def _durable_or_release(st: RootState, since: int, mark: int, steps: list[PlacementStep]) -> None:
    """Wait until the decisions are stored before the clusters are asked; if they
    cannot be, the steps are not sent (a later pass resumes them, SCHEDULED)."""
    try:
        writes.durable(st, since, mark)
    except BaseException:
        with st.lock:
            for step in steps:
                st.in_flight.discard(step.instance_id)
        raise


def _begin(
    st: RootState, instance_id: str, rejections: Mapping[str, ClusterRejection]
) -> PlacementStep | None:
    """The decision part of `begin_placement` (lock held)."""
    inst = st.instances.get(instance_id)
    if inst is None or instance_id in st.in_flight or inst.terminate:
        return None
    job = st.jobs.get(inst.job_id)
    if job is None or job.deleted_at is not None:
        return None
    if inst.state is InstanceState.SCHEDULED and inst.assigned_at is None:
        cluster = st.clusters.get(inst.cluster_id or "")
        if cluster is not None and cluster.id not in rejections:
            if cluster.liveness is ClusterLiveness.READY:
                # Resume an unanswered placement (e.g. after a restart of the
                # root): the cluster's placement is idempotent by instance id.
                return _step(st, inst, job, cluster, pinned=False)
            if cluster.liveness is ClusterLiveness.UNREACHABLE:
                return None
        inst = lifecycle.transition(
            st,
            inst,
            InstanceState.PENDING,
            "placement not confirmed; placing again",
            cluster_id=None,
            node_id=None,
            node_name=None,
        )
    if inst.state is not InstanceState.PENDING:
        return None
    rejections = {**_recent_refusals(st, inst.id), **rejections}
    started = time.perf_counter()
    spec = lookups.spec_for(st, job, inst.job_version)
    pinned = pinned_cluster(st, spec.constraints.cluster)
    plan = placement_plan.plan_placement(
        inst.id,
        spec,
        snapshots(st, ()) if pinned is None else (),
        rejections,
        pinned=pinned,
        existing=_existing(st, job.id, inst.id) if pinned is None else {},
        policy=st.settings.placement_policy,
        rng=st.rng,
        now=st.clock(),
    )
    step = _apply_plan(st, inst, job, plan, rejections)
    st.metrics.decision_seconds.observe(time.perf_counter() - started)
    lifecycle.settle(st)
    return step


def pinned_cluster(st: RootState, ref: str | None) -> PinnedCluster | None:
    """The cluster named by a spec's `constraints.cluster` as the plan sees it (None:
    the spec names none)."""
    if ref is None:
        return None
    cluster = lookups.cluster_by_ref(st, ref)
    if cluster is None:
        return PinnedCluster(ref)
    return PinnedCluster(ref, cluster.id, cluster.name, cluster.liveness)


def _existing(st: RootState, job_id: str, instance_id: str) -> dict[str, int]:
    """The job's other live replicas by cluster id (the plan spreads them)."""
    existing: dict[str, int] = {}
    for other in lookups.job_instances(st, job_id):
        if other.cluster_id and not other.state.terminal and other.id != instance_id:
            existing[other.cluster_id] = existing.get(other.cluster_id, 0) + 1
    return existing


def _apply_plan(
    st: RootState,
    inst: InstanceRecord,
    job: JobRecord,
    plan: PlacementPlan,
    rejections: Mapping[str, ClusterRejection],
) -> PlacementStep | None:
    """Apply a placement plan (lock held): PENDING with its reasons, or SCHEDULED on
    the chosen cluster with a reservation there, and the call to make."""
    if isinstance(plan, StayPending):
        _pending(st, inst, plan.text, plan.decision, rejections)
        return None
    cluster = st.clusters[plan.cluster_id]
    if plan.pinned:
        st.metrics.placements.inc("forwarded")
    if plan.reserve is not None:
        st.reservations.setdefault(cluster.id, {})[inst.id] = (plan.reserve, st.clock())
    return _schedule(st, inst, job, cluster, plan.info, pinned=plan.pinned)


def _schedule(
    st: RootState,
    inst: InstanceRecord,
    job: JobRecord,
    cluster: ClusterRecord,
    info: PlacementInfo,
    *,
    pinned: bool,
) -> PlacementStep:
    inst = lifecycle.transition(
        st,
        inst,
        InstanceState.SCHEDULED,
        info.explanation,
        cluster_id=cluster.id,
        node_id=None,
        node_name=None,
        placement=info,
    )
    event_log.emit(
        st,
        "scheduling.decision",
        inst.id,
        job_id=job.id,
        instance_id=inst.id,
        cluster_id=cluster.id,
        reason=info.explanation,
        data={"outcome": info.outcome, "decision": _decision_data(info)},
    )
    return _step(st, inst, job, cluster, pinned=pinned)


def _decision_data(info: PlacementInfo) -> dict[str, Any] | None:
    """The decision as event data (JSON)."""
    return info.decision.model_dump(mode="json") if info.decision is not None else None


def _step(
    st: RootState, inst: InstanceRecord, job: JobRecord, cluster: ClusterRecord, *, pinned: bool
) -> PlacementStep:
    st.in_flight.add(inst.id)
    spec = lookups.spec_for(st, job, inst.job_version)
    request = PlaceInstanceRequest(
        instance_id=inst.id,
        job_id=job.id,
        job_name=job.name,
        replica=inst.replica,
        spec=spec.task_spec(),
        constraints=spec.constraints,
        placement_policy=spec.placement_policy,
        lost_grace_s=spec.lost_grace_s,
        job_version=inst.job_version,
    )
    return PlacementStep(
        instance_id=inst.id,
        cluster_id=cluster.id,
        cluster_name=cluster.name,
        url=cluster.url,
        token=cluster.api_token,
        request=request,
        pinned=pinned,
    )


def _pending(
    st: RootState,
    inst: InstanceRecord,
    text: str,
    decision: Decision | None,
    rejections: Mapping[str, ClusterRejection],
) -> None:
    """Leave an instance PENDING with its reasons (an event only when they change)."""
    st.metrics.placements.inc("pending")
    explanation = texts.short(text)
    if inst.placement is not None and inst.placement.explanation == explanation:
        return
    info = PlacementInfo(
        at=st.clock(),
        instance_id=inst.id,
        outcome="pending",
        explanation=explanation,
        decision=placement_plan.typed_decision(decision),
        cluster_rejections=list(rejections.values()),
    )
    writes.save_instance(st, replace(inst, placement=info, reason=info.explanation), inst)
    event_log.emit(
        st,
        "scheduling.pending",
        inst.id,
        job_id=inst.job_id,
        instance_id=inst.id,
        state=InstanceState.PENDING.value,
        reason=info.explanation,
        data={
            "rejections": decision.rejections if decision else {},
            "cluster_rejections": {r.cluster_name: r.reasons for r in rejections.values()},
        },
    )
    st.dirty.add(inst.job_id)


def finish_placements(
    st: RootState,
    answers: list[tuple[PlacementStep, PlaceInstanceResponse | None, str | None]],
) -> list[tuple[Literal["accepted", "rejected", "gone"], ClusterRejection | None]]:
    """`finish_placement` for each (step, answer, error), under one hold of the lock."""
    with st.lock:
        return [finish_placement(st, step, resp, err) for step, resp, err in answers]


def finish_placement(
    st: RootState,
    step: PlacementStep,
    response: PlaceInstanceResponse | None,
    error: str | None = None,
) -> tuple[Literal["accepted", "rejected", "gone"], ClusterRejection | None]:
    """Record a cluster's answer to a placement (or the error that replaced it).

    Returns the outcome and, for a refusal, what the next attempt must know.
    """
    with st.lock:
        st.in_flight.discard(step.instance_id)
        inst = st.instances.get(step.instance_id)
        accepted = response is not None and response.accepted
        if inst is None or inst.state.terminal or inst.cluster_id != step.cluster_id:
            if accepted:
                st.strays.setdefault((step.cluster_id, step.instance_id), st.clock())
                writes.kick(st)
            return "gone", None
        if accepted:
            assert response is not None
            st.metrics.placements.inc("accepted")
            node = response.node_name or response.node_id or "?"
            changes: dict[str, Any] = {"assigned_at": st.clock()}
            if response.node_id:
                changes["node_id"] = response.node_id
            if response.node_name:
                changes["node_name"] = response.node_name
            if inst.pending_since is not None:
                st.metrics.scheduling_seconds.observe(max(0.0, st.clock() - inst.pending_since))
            if inst.state is InstanceState.SCHEDULED:
                lifecycle.transition(
                    st,
                    inst,
                    InstanceState.ASSIGNED,
                    f"accepted by cluster {step.cluster_name} on node {node}",
                    **changes,
                )
            else:
                writes.save_instance(st, replace(inst, **changes), inst)
            lifecycle.settle(st)
            if inst.terminate:
                writes.kick(st)
            return "accepted", None
        st.metrics.placements.inc("error" if response is None else "rejected")
        if response is not None:
            rejection = ClusterRejection(
                cluster_id=step.cluster_id,
                cluster_name=step.cluster_name,
                reasons=dict(response.reasons),
                explanation=response.explanation or texts.format_reasons(response.reasons),
            )
        else:
            rejection = ClusterRejection(
                cluster_id=step.cluster_id,
                cluster_name=step.cluster_name,
                reasons={"cluster unavailable": 1},
                explanation=texts.short(error or "no answer"),
            )
        event_log.emit(
            st,
            "scheduling.rejected",
            inst.id,
            job_id=inst.job_id,
            instance_id=inst.id,
            cluster_id=step.cluster_id,
            reason=f"cluster {step.cluster_name} refused: {rejection.explanation}",
            data={"reasons": rejection.reasons, "error": response is None},
        )
        if response is None:
            # The cluster may have taken it before the error: if it reports it
            # later, the report marks it a stray and the root deletes it there.
            log.warning("placement of %s on %s failed: %s", inst.id, step.cluster_name, error)
        if inst.terminate:
            lifecycle.transition(
                st,
                inst,
                InstanceState.TERMINATED,
                inst.terminate_reason or "terminated",
                cluster_id=None,
            )
        else:
            lifecycle.transition(
                st,
                inst,
                InstanceState.PENDING,
                f"cluster {step.cluster_name} refused: {rejection.explanation}",
                cluster_id=None,
                node_id=None,
                node_name=None,
            )
        st.refusals.setdefault(inst.id, {})[step.cluster_id] = (
            rejection,
            st.clock(),
            st.capacity_version.get(step.cluster_id, 0),
        )
        lifecycle.settle(st)
        return "rejected", rejection


def termination_work(st: RootState) -> list[TerminateStep]:
    """DELETEs to send: instances the root wants gone, and strays on clusters."""
    with st.lock:
        steps = []
        for iid in sorted(st.to_terminate):
            inst = st.instances[iid]
            if not inst.terminate or inst.state.terminal or inst.id in st.in_flight:
                continue
            cluster = st.clusters.get(inst.cluster_id or "")
            if cluster is None:
                continue
            if cluster.liveness is ClusterLiveness.READY:
                steps.append(
                    TerminateStep(
                        inst.id,
                        cluster.id,
                        cluster.name,
                        cluster.url,
                        cluster.api_token,
                        stray=False,
                    )
                )
        for cluster_id, iid in sorted(st.strays):
            cluster = st.clusters.get(cluster_id)
            if cluster is None:
                del st.strays[(cluster_id, iid)]
                continue
            if cluster.liveness is ClusterLiveness.READY:
                steps.append(
                    TerminateStep(
                        iid,
                        cluster.id,
                        cluster.name,
                        cluster.url,
                        cluster.api_token,
                        stray=True,
                    )
                )
        return steps


def finish_termination(
    st: RootState, step: TerminateStep, ok: bool, error: str | None = None
) -> None:
    """Record the answer to a DELETE (ok: the cluster no longer runs it)."""
    with st.lock:
        if step.stray:
            if ok:
                st.strays.pop((step.cluster_id, step.instance_id), None)
                event_log.emit(
                    st,
                    "cluster.stray_deleted",
                    step.cluster_id,
                    cluster_id=step.cluster_id,
                    instance_id=step.instance_id,
                    reason=f"cluster {step.cluster_name} ran an instance the root placed "
                    "elsewhere or ended; deleted there",
                )
            return
        inst = st.instances.get(step.instance_id)
        if inst is None or inst.state.terminal or inst.cluster_id != step.cluster_id:
            return
        if ok:
            lifecycle.transition(
                st,
                inst,
                InstanceState.TERMINATED,
                inst.terminate_reason or "terminated by the root",
            )
            lifecycle.settle(st)
        else:
            log.warning("terminating %s on %s failed: %s", inst.id, step.cluster_name, error)
