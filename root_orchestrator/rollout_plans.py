"""A rollout's start and its next steps as pure functions: the job record, its
instances' facts, its kept versions and the clock value in; the typed effects
(`effects.py`) of what changed out (and, for a step, the job as it ends up and the
starts and stops the rollout wants now).

`plan_start` is what `rollouts.start_rollout` applies to a PATCH that makes a new
version: the version records (the first one kept, the one it supersedes, the new
one), the job targeting the new version with a PROGRESSING rollout, the versions
pruned beyond `MAX_VERSIONS`, and the `job.updated` and `job.rollout` events.

`plan_advance` is what `lifecycle_plans.plan_reconcile` runs at every reconciliation
of a job with an active rollout: finish it (complete, rolled back), fail it (and roll
back to the last complete version when `update.auto_rollback` is on), cancel it (the
job is deleted), or note progress (more healthy target replicas). The starts and
stops themselves come from `rollout.plan_rollout` and are merged with the replica
diff by `plan_reconcile`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from root_orchestrator.effects import (
    DropVersion,
    Emit,
    Reconcile,
    RootEffect,
    SaveJob,
    SaveVersion,
)
from root_orchestrator.records import JobRecord, VersionRecord
from root_orchestrator.replicas import InstanceFacts
from root_orchestrator.rollout import (
    Rollout,
    RolloutState,
    RolloutStep,
    plan_rollout,
    rollout_counts,
)
from root_orchestrator.spec_update import SpecChange
from root_orchestrator.state import MAX_VERSIONS
from root_orchestrator.texts import short
from schemas.job import InstanceState, JobSpec

__all__ = [
    "RolloutAdvance",
    "plan_advance",
    "plan_start",
    "rollout_event",
    "running_count",
    "starting_rollout",
]


@dataclass(slots=True)
class RolloutAdvance:
    """What one look at an active rollout decided: the job as it ends up, the step to
    merge with the replica diff (None: the rollout ended, nothing to start or stop
    for it) and the effects."""

    job: JobRecord
    step: RolloutStep | None
    effects: list[RootEffect] = field(default_factory=list)


def rollout_event(job: JobRecord, facts: Sequence[InstanceFacts], now: float, reason: str) -> Emit:
    """The `job.rollout` event of `job`'s rollout as it is now, with its counts."""
    rollout = job.rollout
    assert rollout is not None
    counts = rollout_counts(
        job.desired, facts, rollout.target_version, now, job.spec.update.min_healthy_s
    )
    return Emit(
        "job.rollout",
        job.id,
        job_id=job.id,
        state=rollout.state.value,
        reason=reason,
        data={
            "from_version": rollout.from_version,
            "to_version": rollout.to_version,
            "target_version": rollout.target_version,
            "replicas": counts.replicas,
            "updated": counts.updated,
            "healthy": counts.healthy,
            "unavailable": counts.unavailable,
        },
    )


class _Plan:
    """The job and its versions as the plan changes them, and the effects so far."""

    def __init__(
        self,
        job: JobRecord,
        facts: Sequence[InstanceFacts],
        versions: Mapping[int, VersionRecord],
        now: float,
    ) -> None:
        self.job = job
        self.facts = facts
        self.versions = dict(versions)
        self.now = now
        self.effects: list[RootEffect] = []

    def save_job(self, new: JobRecord) -> JobRecord:
        self.effects.append(SaveJob(new, self.job))
        self.job = new
        return new

    def version_state(self, number: int, state: str, reason: str = "") -> None:
        old = self.versions.get(number)
        if old is None or (old.state == state and old.reason == reason):
            return
        finished = self.now if state != "rolling_out" else None
        new = replace(old, state=state, reason=short(reason), finished_at=finished)
        self.effects.append(SaveVersion(new, old))
        self.versions[number] = new

    def save_version(self, new: VersionRecord) -> None:
        # A version document left by a root that crashed before its job record named
        # it is overwritten: nothing refers to it.
        self.effects.append(SaveVersion(new, self.versions.get(new.number)))
        self.versions[new.number] = new

    def event(self, reason: str) -> None:
        self.effects.append(rollout_event(self.job, self.facts, self.now, reason))


def running_count(facts: Iterable[InstanceFacts]) -> int:
    """How many of these instances run now (terminating ones not counted): a new
    rollout's baseline."""
    return sum(1 for f in facts if f.state is InstanceState.RUNNING and not f.terminating)


def starting_rollout(
    job: JobRecord, facts: Sequence[InstanceFacts], now: float, reason: str = ""
) -> Rollout:
    """The PROGRESSING rollout a new version of `job`'s spec begins at `now`: from the
    last complete version to the one after the latest, its baseline kept from a rollout
    still active (superseded) or else the instances running now (`facts`). Used by
    `plan_start` and by the dry run of an update (`jobs.update_plan`)."""
    previous = job.rollout
    return Rollout(
        state=RolloutState.PROGRESSING,
        from_version=previous.stable_version if previous is not None else job.job_version,
        to_version=job.latest_version + 1,
        started_at=now,
        progress_at=now,
        baseline=previous.baseline
        if previous is not None and previous.active
        else running_count(facts),
        reason=reason,
    )


def plan_start(
    job: JobRecord,
    change: SpecChange,
    versions: Mapping[int, VersionRecord],
    facts: Sequence[InstanceFacts],
    now: float,
) -> list[RootEffect]:
    """A change that makes a new version of `job`'s spec, at `now`: the version after
    the latest becomes the job's target and a PROGRESSING rollout begins from the
    last complete version (`versions`: the kept ones by number; `facts`: the job's
    instances).

    The job's first change keeps its spec so far as a `current` version; a rollout
    still progressing is superseded (newest wins) but keeps its baseline; the oldest
    versions beyond `MAX_VERSIONS` are dropped, never the stable or the new one nor
    one an active instance runs.
    """
    if not change.versioned:
        raise ValueError("a change that makes no new version is made in place")
    plan = _Plan(job, facts, versions, now)
    number = job.latest_version + 1
    rollout = starting_rollout(
        job,
        facts,
        now,
        reason=short(f"rolling update to version {number}: {', '.join(change.versioned)} changed"),
    )
    previous, stable = job.rollout, rollout.from_version
    if stable not in plan.versions and stable == job.job_version:
        # the first change of this job: its spec so far becomes version `stable`
        plan.save_version(
            VersionRecord(
                job_id=job.id,
                number=stable,
                spec=job.spec,
                created_at=job.created_at,
                state="current",
            )
        )
    if previous is not None and previous.state is RolloutState.PROGRESSING:
        plan.version_state(
            previous.to_version,
            "superseded",
            f"superseded by version {number} before its rollout finished",
        )
    plan.save_version(
        VersionRecord(
            job_id=job.id,
            number=number,
            spec=change.spec,
            created_at=now,
            state="rolling_out",
            changed=change.versioned,
        )
    )
    plan.save_job(
        replace(
            job,
            spec=change.spec,
            job_version=number,
            latest_version=number,
            rollout=rollout,
            updated_at=now,
        )
    )
    running = {f.job_version for f in facts if not f.state.terminal}
    kept = set(sorted(plan.versions, reverse=True)[:MAX_VERSIONS]) | {stable, number} | running
    for pruned in [n for n in plan.versions if n not in kept]:
        plan.effects.append(DropVersion(job.id, pruned))
        del plan.versions[pruned]
    data: dict[str, Any] = {
        "version": {"from": job.job_version, "to": number},
        "changed": list(change.changed),
    }
    for key in ("replicas", "priority"):
        if key in change.changed:
            data[key] = {"from": getattr(job.spec, key), "to": getattr(change.spec, key)}
    plan.effects.append(
        Emit(
            "job.updated",
            job.id,
            job_id=job.id,
            reason=f"version {number}: {', '.join(change.changed)} changed",
            data=data,
        )
    )
    plan.event(rollout.reason)
    plan.effects.append(Reconcile(job.id))
    return plan.effects


def plan_advance(
    job: JobRecord,
    facts: Sequence[InstanceFacts],
    versions: Mapping[int, VersionRecord],
    now: float,
) -> RolloutAdvance:
    """Look at `job`'s active rollout at `now` (`facts`: its instances; `versions`:
    its kept spec versions by number)."""
    plan = _Plan(job, facts, versions, now)
    if job.deleted_at is not None:
        _end(plan, RolloutState.CANCELLED, "job deleted")
        return RolloutAdvance(plan.job, None, plan.effects)
    for _ in range(3):
        job = plan.job
        rollout = job.rollout
        assert rollout is not None
        step = plan_rollout(rollout, job.desired, facts, job.spec.update, now)
        if step.verdict == "failed":
            forward = rollout.state is RolloutState.PROGRESSING
            if forward and job.spec.update.auto_rollback:
                _roll_back(plan, step.reason)  # or failed, when that version is gone
                continue
            _end(plan, RolloutState.FAILED, step.reason)
            return RolloutAdvance(plan.job, None, plan.effects)
        if step.verdict == "complete":
            done = (
                RolloutState.COMPLETE
                if rollout.state is RolloutState.PROGRESSING
                else RolloutState.ROLLED_BACK
            )
            _end(plan, done, rollout.reason)
            return RolloutAdvance(plan.job, None, plan.effects)
        if step.counts.healthy > rollout.healthy:
            progressed = replace(rollout, healthy=step.counts.healthy, progress_at=now)
            plan.save_job(replace(job, rollout=progressed))
            counts = step.counts
            plan.event(
                f"{counts.healthy}/{counts.replicas} replicas healthy at version "
                f"{rollout.target_version}"
            )
        return RolloutAdvance(plan.job, step, plan.effects)
    return RolloutAdvance(plan.job, None, plan.effects)


def _roll_back(plan: _Plan, reason: str) -> None:
    """The rolled-out version failed: the job's target goes back to the last complete
    version (replicas, priority and strategy stay as they are now); when that version
    is not kept, the rollout fails instead."""
    job = plan.job
    rollout = job.rollout
    assert rollout is not None
    stable = plan.versions.get(rollout.from_version)
    if stable is None:
        why = f"{reason}; version {rollout.from_version} is not kept"
        _end(plan, RolloutState.FAILED, why)
        return
    spec = JobSpec.model_validate(
        {
            **stable.spec.model_dump(),
            "replicas": job.spec.replicas,
            "priority": job.spec.priority,
            "update": job.spec.update,
        }
    )
    plan.version_state(rollout.to_version, "failed", reason)
    counts = rollout_counts(
        job.desired, plan.facts, rollout.from_version, plan.now, spec.update.min_healthy_s
    )
    back = replace(
        rollout,
        state=RolloutState.ROLLING_BACK,
        reason=short(reason),
        progress_at=plan.now,
        healthy=counts.healthy,
    )
    plan.save_job(
        replace(job, spec=spec, job_version=rollout.from_version, rollout=back, updated_at=plan.now)
    )
    plan.event(f"rolling back to version {rollout.from_version}: {reason}")
    plan.effects.append(Reconcile(job.id))


def _end(plan: _Plan, state: RolloutState, reason: str) -> None:
    job = plan.job
    rollout = job.rollout
    assert rollout is not None
    if state is RolloutState.COMPLETE:
        plan.version_state(rollout.to_version, "current")
        if rollout.from_version != rollout.to_version:
            plan.version_state(
                rollout.from_version, "superseded", f"replaced by version {rollout.to_version}"
            )
        reason = f"version {rollout.to_version} rolled out to {job.desired} replicas"
    elif state is RolloutState.ROLLED_BACK:
        reason = f"rolled back to version {rollout.from_version}: {rollout.reason}"
    elif rollout.state is RolloutState.PROGRESSING:
        plan.version_state(
            rollout.to_version, "failed" if state is RolloutState.FAILED else "cancelled", reason
        )
    if state is RolloutState.FAILED and rollout.state is RolloutState.PROGRESSING:
        reason = f"rollout stopped (auto_rollback off), nothing more is replaced: {reason}"
    ended = replace(rollout, state=state, reason=short(reason), finished_at=plan.now)
    plan.save_job(replace(job, rollout=ended, updated_at=plan.now))
    plan.event(ended.reason)
