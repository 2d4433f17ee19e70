"""Rolling updates of a job's spec: starting a rollout (decided by the pure
`rollout_plans.plan_start`, whose effects `applier.apply` executes), the PATCH
applied to a spec, and when the reconciler should look at an active rollout again.
Each step of a rollout is `rollout_plans.plan_advance`, run by
`lifecycle_plans.plan_reconcile`.

Functions over the shared `state.RootState`; `service.RootService` is their facade.
"""

from __future__ import annotations

import logging

from root_orchestrator import applier, lookups, rollout_plans
from root_orchestrator.errors import Invalid
from root_orchestrator.records import JobRecord
from root_orchestrator.spec_update import PatchInvalid, SpecChange, apply_patch
from root_orchestrator.state import RootState
from schemas.job import InstanceState
from schemas.root_api import JobPatch

log = logging.getLogger(__name__)


def start_rollout(st: RootState, job: JobRecord, change: SpecChange) -> JobRecord:
    """A new version of the job's spec becomes its target; a rollout begins: the pure
    `rollout_plans.plan_start`, applied; the job's new record."""
    versions = lookups.versions_of(st, job.id)
    facts = [i.facts() for i in lookups.job_instances(st, job.id)]
    applier.apply(st, rollout_plans.plan_start(job, change, versions, facts, st.clock()))
    return st.jobs[job.id]


def change_for(st: RootState, job: JobRecord, patch: JobPatch) -> SpecChange:
    """A PATCH applied to a job's spec (Invalid naming the field when it does not apply)."""
    try:
        return apply_patch(job.spec, patch.given())
    except PatchInvalid as exc:
        raise Invalid(exc.errors) from None


def rollout_wake_in(st: RootState) -> float | None:
    """Seconds until the next health window or progress deadline of an active
    rollout ends (so the reconciler looks again right then)."""
    now = st.clock()
    soonest: float | None = None
    for job in st.jobs.values():
        rollout = job.rollout
        if rollout is None or not rollout.active:
            continue
        strategy = job.spec.update
        times = [rollout.progress_at + strategy.progress_deadline_s]
        for inst in lookups.job_instances(st, job.id):
            if (
                inst.job_version == rollout.target_version
                and inst.state is InstanceState.RUNNING
                and inst.running_since is not None
                and not inst.terminate
            ):
                times.append(inst.running_since + strategy.min_healthy_s)
        for at in times:
            if at > now and (soonest is None or at - now < soonest):
                soonest = at - now
    return soonest
