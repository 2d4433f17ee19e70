"""The jobs resource's decisions as pure functions: records and the clock value in,
typed effects (`effects.py`) out, applied by `applier.apply`.

`plan_submit` (a new job and its first instances), `plan_spec_change` (a PATCH that
makes no new version: replicas, priority, the update strategy, changed in place) and
`plan_delete`. They read no clock, store, lock or random source: the caller passes
the time, the new job's id and the Idempotency-Key; what a PATCH that makes a new
version does is `rollout_plans.plan_start` (applied by `rollouts.start_rollout`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from root_orchestrator.effects import (
    CreateInstance,
    Emit,
    PutDocument,
    Reconcile,
    RootEffect,
    SaveJob,
)
from root_orchestrator.records import IDEMPOTENCY, JobRecord
from root_orchestrator.replicas import JobState
from root_orchestrator.spec_update import SpecChange
from schemas.job import JobSpec

__all__ = ["IdempotencyKey", "plan_delete", "plan_spec_change", "plan_submit"]


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A first use of an Idempotency-Key: its store id and the hash of the body."""

    id: str
    body_hash: str


def plan_submit(
    spec: JobSpec, job_id: str, now: float, *, key: IdempotencyKey | None = None
) -> list[RootEffect]:
    """A new job `job_id` with `spec`, submitted at `now`, and one PENDING instance per
    replica (replica r gets generation r: the job record reserves them as it is
    created, one write fewer than reserving them afterwards, and still before any
    instance exists); `key` is remembered with the job's id."""
    effects: list[RootEffect] = []
    if key is not None:
        doc = {"job_id": job_id, "body_hash": key.body_hash, "created_at": now}
        effects.append(PutDocument(IDEMPOTENCY, key.id, doc))
    job = JobRecord(
        id=job_id,
        name=spec.name,
        spec=spec,
        state=JobState.PENDING if spec.replicas > 0 else JobState.STOPPED,
        created_at=now,
        updated_at=now,
        next_generation=spec.replicas,
    )
    effects.append(SaveJob(job, None))
    effects.append(
        Emit(
            "job.submitted",
            job_id,
            state=job.state.value,
            job_id=job_id,
            reason=f"{spec.replicas} replicas of {spec.runtime.value} job {spec.name}",
            data={"replicas": spec.replicas, "priority": spec.priority},
        )
    )
    effects.extend(
        CreateInstance(job_id, replica, replica, 0, f"replica {replica} created")
        for replica in range(spec.replicas)
    )
    effects.append(Reconcile(job_id))
    return effects


def plan_spec_change(job: JobRecord, change: SpecChange, now: float) -> list[RootEffect]:
    """A change that makes no new version (replicas, priority, the update strategy),
    applied to the job in place: `job.scaled` when the replicas change, else
    `job.updated`, each field with its old and new value. No change: no effect."""
    if change.versioned:
        raise ValueError("a change that makes a new version starts a rollout")
    if not change.changed:
        return []
    data: dict[str, Any] = {}
    before = job.spec
    for key in change.changed:
        if key in ("replicas", "priority"):
            data[key] = {"from": getattr(before, key), "to": getattr(change.spec, key)}
        else:
            data[key] = {
                "from": before.model_dump(mode="json")[key],
                "to": change.spec.model_dump(mode="json")[key],
            }
    kind = "job.scaled" if "replicas" in change.changed else "job.updated"
    text = ", ".join(
        f"{k} {v['from']} -> {v['to']}" if k in ("replicas", "priority") else f"{k}"
        for k, v in data.items()
    )
    return [
        SaveJob(replace(job, spec=change.spec, updated_at=now), job),
        Emit(kind, job.id, job_id=job.id, reason=text, data=data),
        Reconcile(job.id),
    ]


def plan_delete(job: JobRecord, now: float) -> list[RootEffect]:
    """Delete a live job at `now`: its replicas go to 0 (the reconciliation terminates
    every instance; the job ends TERMINATED once they are gone). A job already
    deleted: no effect."""
    if job.deleted_at is not None:
        return []
    return [
        SaveJob(replace(job, deleted_at=now, updated_at=now), job),
        Emit("job.deleted", job.id, job_id=job.id, reason="deleted by operator"),
        Reconcile(job.id),
    ]
