"""Rolling updates of a job's spec: versions, starting a rollout, and advancing it
(its next step is decided by the pure `rollout_plans.plan_advance`, whose effects
`applier.apply` executes: progress, complete, failed, rolled back, cancelled).

Functions over the shared `state.RootState`; `service.RootService` is their facade.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from root_orchestrator import applier, lookups, rollout_plans, texts, writes
from root_orchestrator import events as event_log
from root_orchestrator.errors import Invalid
from root_orchestrator.records import (
    JOB_VERSIONS,
    JobRecord,
    VersionRecord,
    version_id,
)
from root_orchestrator.replicas import InstanceFacts
from root_orchestrator.rollout import (
    Rollout,
    RolloutState,
    RolloutStep,
)
from root_orchestrator.spec_update import PatchInvalid, SpecChange, apply_patch
from root_orchestrator.state import (
    MAX_VERSIONS,
    RootState,
)
from schemas.job import InstanceState
from schemas.root_api import JobPatch

log = logging.getLogger(__name__)


def _save_version(st: RootState, new: VersionRecord, old: VersionRecord | None) -> VersionRecord:
    # A version document left by a root that crashed before its job record named
    # it is overwritten: nothing refers to it.
    new = replace(new, version=(old.version if old else 0) + 1)
    st.persister.put(JOB_VERSIONS, new.id, new)
    lookups.versions_of(st, new.job_id)[new.number] = new
    return new


def _set_version_state(
    st: RootState, job_id: str, number: int, state: str, reason: str = ""
) -> None:
    old = lookups.versions_of(st, job_id).get(number)
    if old is None or (old.state == state and old.reason == reason):
        return
    finished = st.clock() if state != "rolling_out" else None
    _save_version(
        st, replace(old, state=state, reason=texts.short(reason), finished_at=finished), old
    )


def _prune_versions(st: RootState, job: JobRecord, keep: Iterable[int]) -> None:
    """Drop the oldest versions beyond MAX_VERSIONS; never one in `keep` or one that
    an active instance runs (its placement request is built from it)."""
    versions = lookups.versions_of(st, job.id)
    running = {i.job_version for i in lookups.job_instances(st, job.id) if not i.state.terminal}
    kept = set(sorted(versions, reverse=True)[:MAX_VERSIONS]) | set(keep) | running
    for number in [n for n in versions if n not in kept]:
        st.persister.delete(JOB_VERSIONS, version_id(job.id, number))
        versions.pop(number, None)


def running_now(st: RootState, job_id: str) -> int:
    """How many instances of a job run now (terminating ones not counted)."""
    return sum(
        1
        for i in lookups.job_instances(st, job_id)
        if i.state is InstanceState.RUNNING and not i.terminate
    )


def start_rollout(st: RootState, job: JobRecord, change: SpecChange) -> JobRecord:
    """A new version of the job's spec becomes its target; a rollout begins."""
    now = st.clock()
    number = job.latest_version + 1
    previous = job.rollout
    stable = previous.stable_version if previous is not None else job.job_version
    versions = lookups.versions_of(st, job.id)
    if stable not in versions and stable == job.job_version:
        # the first change of this job: its spec so far becomes version `stable`
        _save_version(
            st,
            VersionRecord(
                job_id=job.id,
                number=stable,
                spec=job.spec,
                created_at=job.created_at,
                state="current",
            ),
            None,
        )
    if previous is not None and previous.state is RolloutState.PROGRESSING:
        _set_version_state(
            st,
            job.id,
            previous.to_version,
            "superseded",
            f"superseded by version {number} before its rollout finished",
        )
    _save_version(
        st,
        VersionRecord(
            job_id=job.id,
            number=number,
            spec=change.spec,
            created_at=now,
            state="rolling_out",
            changed=change.versioned,
        ),
        versions.get(number),
    )
    baseline = (
        previous.baseline if previous is not None and previous.active else running_now(st, job.id)
    )
    fields = ", ".join(change.versioned)
    rollout = Rollout(
        state=RolloutState.PROGRESSING,
        from_version=stable,
        to_version=number,
        started_at=now,
        progress_at=now,
        baseline=baseline,
        reason=texts.short(f"rolling update to version {number}: {fields} changed"),
    )
    old_target, old_spec = job.job_version, job.spec
    job = writes.save_job(
        st,
        replace(
            job,
            spec=change.spec,
            job_version=number,
            latest_version=number,
            rollout=rollout,
            updated_at=now,
        ),
        job,
    )
    _prune_versions(st, job, (stable, number))
    data: dict[str, Any] = {
        "version": {"from": old_target, "to": number},
        "changed": list(change.changed),
    }
    for key in ("replicas", "priority"):
        if key in change.changed:
            data[key] = {"from": getattr(old_spec, key), "to": getattr(change.spec, key)}
    event_log.emit(
        st,
        "job.updated",
        job.id,
        job_id=job.id,
        reason=f"version {number}: {', '.join(change.changed)} changed",
        data=data,
    )
    _emit_rollout(st, job, rollout.reason)
    st.dirty.add(job.id)
    return job


def _emit_rollout(st: RootState, job: JobRecord, reason: str) -> None:
    facts = [i.facts() for i in lookups.job_instances(st, job.id)]
    applier.apply(st, [rollout_plans.rollout_event(job, facts, st.clock(), reason)])


def advance_rollout(
    st: RootState, job: JobRecord, facts: list[InstanceFacts]
) -> tuple[JobRecord, RolloutStep | None]:
    """Look at an active rollout: finish it, fail it (and roll back), or return
    the starts and stops it wants now (`rollout_plans.plan_advance`, applied)."""
    versions = lookups.versions_of(st, job.id)
    advance = rollout_plans.plan_advance(job, facts, versions, st.clock())
    applier.apply(st, advance.effects)
    return st.jobs.get(job.id, advance.job), advance.step


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
