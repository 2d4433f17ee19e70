"""Instance lifecycle: state transitions, creation, and bringing a job's replicas to
what its spec asks (`settle`).

The decisions are the pure plans of `lifecycle_plans` (a transition, a termination,
a job's reconciliation, its state); the functions here read their inputs from the
shared `state.RootState` and hand the effects to `applier.apply`. `create_instance`
is how the applier executes a `CreateInstance`. `service.RootService` is their facade.
"""

from __future__ import annotations

import logging
from typing import Any

from root_orchestrator import applier, lifecycle_plans, lookups, writes
from root_orchestrator import events as event_log
from root_orchestrator.records import (
    InstanceRecord,
    JobRecord,
)
from root_orchestrator.state import RootState
from schemas.job import InstanceState

log = logging.getLogger(__name__)


def transition(
    st: RootState, inst: InstanceRecord, state: InstanceState, reason: str, **changes: Any
) -> InstanceRecord:
    """Record a state change of an instance, with its event: the pure
    `lifecycle_plans.plan_transition`, applied; the instance's new record."""
    job = st.jobs.get(inst.job_id)
    applier.apply(
        st,
        lifecycle_plans.plan_transition(inst, state, reason, st.clock(), job=job, changes=changes),
    )
    return st.instances[inst.id]


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


def _reconcile_job(st: RootState, job: JobRecord) -> None:
    """Close the gap between desired replicas and instances for one job (and move
    its rollout on, if one is active): `lifecycle_plans.plan_reconcile`, applied."""
    rollout = job.rollout
    versions = lookups.versions_of(st, job.id) if rollout is not None and rollout.active else {}
    effects = lifecycle_plans.plan_reconcile(
        job,
        lookups.job_instances(st, job.id),
        st.clock(),
        versions=versions,
        in_flight=st.in_flight,
    )
    applier.apply(st, effects)


def settle(st: RootState) -> None:
    """Reconcile and re-summarise every job touched since the last call (each job's
    plans see the tables as the previous plans left them)."""
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
    """The job's state from its instances as they are now: `plan_job_state`, applied
    (nothing for a job no longer in memory: it ended TERMINATED)."""
    if job.id not in st.jobs:
        return
    instances = lookups.job_instances(st, job.id)
    applier.apply(st, lifecycle_plans.plan_job_state(job, instances, st.clock()))


def lose(st: RootState, inst: InstanceRecord, reason: str) -> None:
    """Mark an instance LOST with `reason` (noting a termination that could not be confirmed)."""
    if inst.terminate:
        reason = f"{reason}; termination could not be confirmed"
    transition(st, inst, InstanceState.LOST, reason)
