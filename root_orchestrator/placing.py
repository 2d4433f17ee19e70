"""Placement, first half: `begin_placement(s)` takes what the plan needs
(`placement_inputs`), asks the pure `placement_plan.plan_placement` and applies the
plan (PENDING with its reasons, or SCHEDULED with a reservation and the call to make,
`cluster_calls.placement_step`), and waits until it is stored. The reconciler then
calls the cluster; `confirmations` applies the answer.

Functions over the shared `state.RootState`; `service.RootService` is their facade,
and reaches the other halves through the names re-exported here
(`finish_placement(s)`, `termination_work`, `finish_termination`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from placement import Decision
from root_orchestrator import events as event_log
from root_orchestrator import lifecycle, lookups, placement_plan, texts, writes
from root_orchestrator.cluster_calls import placement_step, termination_work
from root_orchestrator.confirmations import (
    finish_placement,
    finish_placements,
    finish_termination,
)
from root_orchestrator.placement_inputs import (
    existing_replicas,
    pinned_cluster,
    recent_refusals,
    snapshots,
)
from root_orchestrator.placement_plan import PlacementPlan, StayPending
from root_orchestrator.records import ClusterRecord, InstanceRecord, JobRecord
from root_orchestrator.state import RootState
from root_orchestrator.steps import PlacementStep
from schemas.cluster import ClusterLiveness
from schemas.job import InstanceState
from schemas.root_api import ClusterRejection, PlacementInfo

__all__ = [
    "begin_placement",
    "begin_placements",
    "finish_placement",
    "finish_placements",
    "finish_termination",
    "termination_work",
]


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
                return placement_step(st, inst, job, cluster, pinned=False)
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
    rejections = {**recent_refusals(st, inst.id), **rejections}
    started = time.perf_counter()
    spec = lookups.spec_for(st, job, inst.job_version)
    pinned = pinned_cluster(st, spec.constraints.cluster)
    plan = placement_plan.plan_placement(
        inst.id,
        spec,
        snapshots(st, ()) if pinned is None else (),
        rejections,
        pinned=pinned,
        existing=existing_replicas(st, job.id, inst.id) if pinned is None else {},
        policy=st.settings.placement_policy,
        rng=st.rng,
        now=st.clock(),
    )
    step = _apply_plan(st, inst, job, plan, rejections)
    st.metrics.decision_seconds.observe(time.perf_counter() - started)
    lifecycle.settle(st)
    return step


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
    return placement_step(st, inst, job, cluster, pinned=pinned)


def _decision_data(info: PlacementInfo) -> dict[str, Any] | None:
    """The decision as event data (JSON)."""
    return info.decision.model_dump(mode="json") if info.decision is not None else None


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
