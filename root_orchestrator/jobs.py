"""The jobs resource: submit, update (with its dry-run plan), scale/priority patch, delete.

Functions over the shared `state.RootState`; `service.RootService` is their facade.
"""

from __future__ import annotations

import logging
import random
import secrets
from typing import Any

from root_orchestrator import (
    applier,
    job_plans,
    lifecycle,
    lookups,
    placement_inputs,
    placement_plan,
    rollout_plans,
    rollouts,
    views,
    writes,
)
from root_orchestrator.effects import SaveJob
from root_orchestrator.errors import Conflict
from root_orchestrator.records import (
    IDEMPOTENCY,
    JobRecord,
)
from root_orchestrator.replicas import diff_replicas
from root_orchestrator.rollout import (
    simulate,
)
from root_orchestrator.state import RootState
from schemas.job import JobSpec
from schemas.root_api import JobPatch, JobView, PlanBatch, PlannedPlacement, PlanStop, UpdatePlan
from schemas.secrets import digest

log = logging.getLogger(__name__)


def submit_job(
    st: RootState, spec: JobSpec, idempotency_key: str | None = None
) -> tuple[JobView, bool]:
    """Create a job (or, for a repeated Idempotency-Key, return the one it created).

    Returns the job and whether it was created now, once its writes are durable.
    Conflict if the key was used for a different spec, or if an active job already
    has this name.
    """
    body_hash = digest(spec.model_dump_json())
    with st.lock:
        since = writes.mark(st)
        view, created = _submit(st, spec, idempotency_key, body_hash)
        mark = writes.mark(st)  # a repeated key: the first call may still be writing
    writes.durable(st, since, mark)
    if created:
        writes.kick(st)
    return view, created


def _submit(
    st: RootState, spec: JobSpec, idempotency_key: str | None, body_hash: str
) -> tuple[JobView, bool]:
    now = st.clock()
    job_id: str | None = None
    key_doc: dict[str, Any] | None = None
    key_id = None
    if idempotency_key is not None:
        key_id = digest("idem:" + idempotency_key)
        key_doc = st.persister.get(IDEMPOTENCY, key_id)
        if key_doc is not None:
            if key_doc["body_hash"] != body_hash:
                raise Conflict("Idempotency-Key was already used for a different job spec")
            job_id = key_doc["job_id"]
            existing = lookups.load_job(st, job_id)
            if existing is not None:
                return views.job_view(st, existing), False
    other_id = st.active_names.get(spec.name)
    if other_id is not None:
        raise Conflict(
            f"an active job named {spec.name!r} exists ({other_id}); "
            "delete it first or choose another name"
        )
    if job_id is None:
        job_id = _new_job_id(st, now)
    key = None
    if key_id is not None and key_doc is None:
        key = job_plans.IdempotencyKey(key_id, body_hash)
    effects = job_plans.plan_submit(spec, job_id, now, key=key)
    applier.apply(st, effects)
    lifecycle.settle(st)
    job = st.jobs.get(job_id) or next(e.new for e in effects if isinstance(e, SaveJob))
    return views.job_view(st, job), True


def _new_job_id(st: RootState, now: float) -> str:
    """Ids sort by submission: j + 12 hex digits of ms (strictly increasing) + 6 random."""
    ms = max(int(now * 1000), st.last_id_ms + 1)
    st.last_id_ms = ms
    return f"j{ms:012x}{secrets.token_hex(3)}"


def patch_job(st: RootState, ref: str, *, replicas: int | None, priority: int | None) -> JobView:
    """Scale a job and/or change its priority (applies to instances placed later)."""
    return update_job(st, ref, JobPatch(replicas=replicas, priority=priority))


def update_job(st: RootState, ref: str, patch: JobPatch) -> JobView:
    """Change a job's spec (`PATCH /jobs/{job}`).

    A change to what runs makes a new version and starts a rolling replacement
    (a change during a rollout starts a new one: newest wins); replicas, priority
    and the update strategy alone change the job in place (priority applies to
    placements made later). Conflict if the job is deleted, Invalid naming the
    field at fault.
    """
    with st.lock:
        since = writes.mark(st)
        job = lookups.live_job(st, ref)
        change = rollouts.change_for(st, job, patch)
        if change.versioned:
            job = rollouts.start_rollout(st, job, change)
        else:
            applier.apply(st, job_plans.plan_spec_change(job, change, st.clock()))
        if change.changed:
            lifecycle.settle(st)
        view = views.job_view(st, st.jobs.get(job.id, job))
        mark = writes.mark(st)
    writes.durable(st, since, mark)
    writes.kick(st)
    return view


def plan_update(st: RootState, ref: str, patch: JobPatch) -> UpdatePlan:
    """What `update_job` would do, without doing any of it (the dry run).

    The rollout's batches are replayed by the same planning functions the
    reconciler applies; each new replica's placement is decided by the root
    scheduler's own code on the clusters' current reports, with reservations
    kept local to this plan.
    """
    with st.lock:
        job = lookups.live_job(st, ref)
        change = rollouts.change_for(st, job, patch)
        spec = change.spec
        now = st.clock()
        facts = [i.facts() for i in lookups.job_instances(st, job.id)]
        live = {f.id: f for f in facts if not f.state.terminal}
        notes: list[str] = []
        batches: list[PlanBatch] = []
        replaced: list[str] = []
        new_version: int | None = None
        if change.versioned:
            previous = job.rollout
            replay = rollout_plans.starting_rollout(job, facts, now)
            new_version = replay.to_version
            steps, outcome = simulate(
                replay,
                spec.replicas,
                facts,
                spec.update,
                now,
                restart_policy=spec.restart_policy,
                max_restarts=spec.max_restarts,
                on_shed=spec.on_shed,
            )
            for step in steps:
                stops = []
                for iid, why in step.stop:
                    known = live.get(iid)
                    stops.append(
                        PlanStop(
                            instance_id=iid,
                            replica=known.replica if known else None,
                            job_version=known.job_version if known else None,
                            why=why,
                        )
                    )
                batches.append(
                    PlanBatch(
                        step=step.step,
                        start=list(step.start),
                        stop=stops,
                        available_at_least=step.available_at_least,
                        instances_at_most=step.instances_at_most,
                    )
                )
            replaced = sorted(i for i, f in live.items() if f.job_version != new_version)
            replicas = list(range(spec.replicas))
            if previous is not None and previous.active:
                notes.append(
                    f"version {previous.to_version} is still rolling out "
                    f"({previous.state.value}): version {new_version} replaces it "
                    "(newest wins)"
                )
            notes.append(
                "batches assume each new instance is placed at once and healthy after "
                f"min_healthy_s ({spec.update.min_healthy_s:g}s)"
            )
        else:
            plan = diff_replicas(
                spec.replicas, facts, spec.restart_policy, spec.max_restarts, spec.on_shed
            )
            replicas = [r for r, _restarts in plan.create]
            outcome = (
                "no new version: " + ", ".join(change.changed) if change.changed else "no change"
            )
            if plan.terminate:
                replaced = sorted(plan.terminate)
                notes.append(f"scaling down stops {len(plan.terminate)} instance(s)")
        placements = _plan_placements(st, job, spec, replicas, keep=not change.versioned)
        if placements:
            notes.append(
                "placements use the clusters' current reports; capacity that old "
                "instances free as they stop is not counted"
            )
        return UpdatePlan(
            job_id=job.id,
            name=job.name,
            changed=list(change.changed),
            current_version=job.job_version,
            new_version=new_version,
            replicas=spec.replicas,
            strategy=spec.update,
            replaced=replaced,
            batches=batches,
            outcome=outcome,
            placements=placements,
            pending=[p.replica for p in placements if p.outcome == "pending"],
            notes=notes,
            spec=spec,
        )


def _plan_placements(
    st: RootState, job: JobRecord, spec: JobSpec, replicas: list[int], *, keep: bool
) -> list[PlannedPlacement]:
    """Where each replica would go now: the scheduler's decision, with reservations
    made only in a local copy of the snapshots (nothing is reserved for real)."""
    pinned = placement_inputs.pinned_cluster(st, spec.constraints.cluster)
    if pinned is not None:
        return placement_plan.plan_placements(
            spec, replicas, (), pinned=pinned, existing={}, policy="", rng=st.rng
        )
    existing: dict[str, int] = {}
    if keep:
        for other in lookups.job_instances(st, job.id):
            if other.cluster_id and not other.state.terminal and not other.terminate:
                existing[other.cluster_id] = existing.get(other.cluster_id, 0) + 1
    rng = random.Random()
    rng.setstate(st.rng.getstate())
    return placement_plan.plan_placements(
        spec,
        replicas,
        placement_inputs.snapshots(st, (), prune=False),
        pinned=None,
        existing=existing,
        policy=st.settings.placement_policy,
        rng=rng,
    )


def delete_job(st: RootState, ref: str) -> JobView:
    """Terminate every instance of a job; it ends TERMINATED once they are all gone."""
    with st.lock:
        since = writes.mark(st)
        job = lookups.resolve_job(st, ref)
        effects = job_plans.plan_delete(job, st.clock()) if job.id in st.jobs else []
        if effects:
            applier.apply(st, effects)
            lifecycle.settle(st)
        view = views.job_view(st, st.jobs.get(job.id) or lookups.load_job(st, job.id) or job)
        mark = writes.mark(st)
    writes.durable(st, since, mark)
    writes.kick(st)
    return view
