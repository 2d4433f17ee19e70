"""Instance lifecycle: state transitions, creation, termination requests, and bringing a
job's replicas to what its spec asks (`reconcile_job`, `settle`).

Functions over the shared `state.RootState`; `service.RootService` is their facade.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from root_orchestrator import events as event_log
from root_orchestrator import lookups, rollouts, texts, writes
from root_orchestrator.records import (
    InstanceRecord,
    JobRecord,
)
from root_orchestrator.replicas import diff_replicas, job_state
from root_orchestrator.rollout import (
    RolloutStep,
    merge_plans,
)
from root_orchestrator.state import RootState
from schemas.job import InstanceState

log = logging.getLogger(__name__)


def transition(
    st: RootState, inst: InstanceRecord, state: InstanceState, reason: str, **changes: Any
) -> InstanceRecord:
    """Record a state change of an instance, with its event."""
    now = st.clock()
    if state is InstanceState.PENDING and inst.state is not InstanceState.PENDING:
        changes.setdefault("pending_since", now)
    if state is InstanceState.RUNNING:
        if inst.state is not InstanceState.RUNNING:
            changes.setdefault("running_since", now)  # the health window starts
            job = st.jobs.get(inst.job_id)
            if job is not None and job.rollout is not None and job.rollout.active:
                writes.kick(st)  # a pass computes when the window ends (reports only)
    else:
        changes["running_since"] = None
    new = replace(inst, state=state, reason=texts.short(reason), updated_at=now, **changes)
    new = writes.save_instance(st, new, inst)
    if state.terminal or state is InstanceState.PENDING:
        writes.drop_reservation(st, inst.id)
    if state is not inst.state:
        event_log.emit(
            st,
            "instance.state",
            inst.id,
            state=state.value,
            reason=reason,
            job_id=inst.job_id,
            instance_id=inst.id,
            cluster_id=new.cluster_id or inst.cluster_id,
            node_id=new.node_id,
            data={
                "from": inst.state.value,
                "replica": inst.replica,
                "job_version": inst.job_version,
            },
        )
    st.dirty.add(inst.job_id)
    return new


def create_instance(
    st: RootState, job: JobRecord, generation: int, replica: int, restarts: int, why: str
) -> None:
    """A new PENDING instance; its generation was reserved in the job record first."""
    now = st.clock()
    inst = InstanceRecord(
        id=f"{job.id}-{replica}-{generation}",
        job_id=job.id,
        replica=replica,
        state=InstanceState.PENDING,
        created_at=now,
        updated_at=now,
        restarts=restarts,
        reason=why,
        pending_since=now,
        job_version=job.job_version,
    )
    writes.save_instance(st, inst, None)
    event_log.emit(
        st,
        "instance.state",
        inst.id,
        state=InstanceState.PENDING.value,
        reason=why,
        job_id=job.id,
        instance_id=inst.id,
        data={
            "from": None,
            "replica": replica,
            "restarts": restarts,
            "job_version": job.job_version,
        },
    )
    st.dirty.add(job.id)


def _request_termination(st: RootState, inst: InstanceRecord, reason: str) -> None:
    """Stop an instance: at once if no cluster has it, else via DELETE to its cluster."""
    if inst.state.terminal or inst.terminate:
        return
    if inst.state is InstanceState.PENDING and inst.id not in st.in_flight:
        transition(st, inst, InstanceState.TERMINATED, reason)
        return
    writes.save_instance(
        st, replace(inst, terminate=True, terminate_reason=reason, updated_at=st.clock()), inst
    )
    event_log.emit(
        st,
        "instance.terminating",
        inst.id,
        reason=reason,
        state=inst.state.value,
        job_id=inst.job_id,
        instance_id=inst.id,
        cluster_id=inst.cluster_id,
        node_id=inst.node_id,
        data={"replica": inst.replica, "job_version": inst.job_version},
    )
    st.dirty.add(inst.job_id)
    writes.kick(st)


def _reconcile_job(st: RootState, job: JobRecord) -> None:
    """Close the gap between desired replicas and instances for one job (and move
    its rollout on, if one is active: root_orchestrator/rollout.py)."""
    facts = [i.facts() for i in lookups.job_instances(st, job.id)]
    step: RolloutStep | None = None
    if job.rollout is not None and job.rollout.active:
        job, step = rollouts.advance_rollout(st, job, facts)
    spec = job.spec
    plan = diff_replicas(
        job.desired,
        facts,
        spec.restart_policy,
        spec.max_restarts,
        spec.on_shed,
    )
    merged = merge_plans(plan, step, facts, job.job_version)
    for iid, given in merged.terminate:
        inst = st.instances[iid]
        if given is not None:
            why = given
        elif job.deleted_at is not None:
            why = "job deleted"
        elif inst.replica >= job.desired:
            why = f"scaled down to {job.desired} replicas"
        else:
            why = "shed by its node; rescheduling (on_shed=reschedule)"
        _request_termination(st, inst, why)
    if merged.create:
        # Reserve the generations (instance ids) in the job record before creating
        # the instances: a crash in between can never hand out an id twice.
        current = st.jobs[job.id]
        first = current.next_generation
        job = writes.save_job(
            st,
            replace(current, next_generation=first + len(merged.create), updated_at=st.clock()),
            current,
        )
        for offset, (replica, restarts, given) in enumerate(merged.create):
            why = given or (
                f"replica {replica} created"
                if restarts == 0
                else f"replica {replica} replaced (restart {restarts})"
            )
            create_instance(st, job, first + offset, replica, restarts, why)
        writes.kick(st)


def settle(st: RootState) -> None:
    """Reconcile and re-summarise every job touched since the last call."""
    for _ in range(10):
        if not st.dirty:
            return
        dirty, st.dirty = st.dirty, set()
        for job_id in sorted(dirty):
            job = st.jobs.get(job_id)
            if job is None:
                continue
            _reconcile_job(st, job)
            _update_job_state(st, st.jobs.get(job_id, job))


def _update_job_state(st: RootState, job: JobRecord) -> None:
    if job.id not in st.jobs:
        return
    spec = job.spec
    state = job_state(
        job.desired,
        job.deleted_at is not None,
        [i.facts() for i in lookups.job_instances(st, job.id)],
        spec.restart_policy,
        spec.max_restarts,
    )
    if state is job.state:
        return
    new = replace(job, state=state, updated_at=st.clock())
    writes.save_job(st, new, job)
    event_log.emit(
        st, "job.state", job.id, state=state.value, job_id=job.id, data={"from": job.state.value}
    )


def lose(st: RootState, inst: InstanceRecord, reason: str) -> None:
    """Mark an instance LOST with `reason` (noting a termination that could not be confirmed)."""
    if inst.terminate:
        reason = f"{reason}; termination could not be confirmed"
    transition(st, inst, InstanceState.LOST, reason)
