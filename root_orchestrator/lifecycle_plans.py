"""An instance's lifecycle and a job's replicas as pure decisions: records and the clock
value in, typed effects (`effects.py`) out, applied by `applier.apply`.

* `plan_transition`: one instance changes state (its record, its `instance.state`
  event, the reservation freed when it ends or is PENDING again);
* `plan_termination`: stop one instance, at once when no cluster may have it, else
  by marking it for the DELETE the reconciler sends;
* `plan_reconcile`: close the gap between a job's desired replicas and its instances
  (and move its active rollout on: `rollout_plans.plan_advance`): which instances to
  stop, which replicas to create, with their generations reserved in the job first;
* `plan_job_state`: the job's summary state derived from its instances.

They read no clock, store, lock or random source: `lifecycle` (`transition`,
`settle`) passes the records as memory holds them, the clock value and which
instances have a placement call in flight, and applies what they return.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from root_orchestrator import rollout_plans
from root_orchestrator.effects import (
    CreateInstance,
    DropReservation,
    Emit,
    Kick,
    Reconcile,
    RootEffect,
    SaveInstance,
    SaveJob,
)
from root_orchestrator.records import InstanceRecord, JobRecord, VersionRecord
from root_orchestrator.replicas import diff_replicas, job_state
from root_orchestrator.rollout import RolloutStep, merge_plans
from root_orchestrator.texts import short
from schemas.job import InstanceState

__all__ = ["plan_job_state", "plan_reconcile", "plan_termination", "plan_transition"]


def plan_transition(
    inst: InstanceRecord,
    state: InstanceState,
    reason: str,
    now: float,
    *,
    job: JobRecord | None = None,
    changes: Mapping[str, Any] | None = None,
) -> list[RootEffect]:
    """`inst` moves to `state` at `now` for `reason`, with the record's other `changes`.

    Becoming PENDING starts `pending_since`, becoming RUNNING starts `running_since`
    (the health window of a rollout: while `job`'s rollout is active the reconciler
    is woken, so a pass computes when the window ends), any other state clears it.
    An instance that ends or is PENDING again holds no reservation. The event comes
    only with a change of state; the job is reconciled in any case.
    """
    fields = dict(changes or {})
    effects: list[RootEffect] = []
    if state is InstanceState.PENDING and inst.state is not InstanceState.PENDING:
        fields.setdefault("pending_since", now)
    if state is InstanceState.RUNNING:
        if inst.state is not InstanceState.RUNNING:
            fields.setdefault("running_since", now)
            if job is not None and job.rollout is not None and job.rollout.active:
                effects.append(Kick())
    else:
        fields["running_since"] = None
    new = replace(inst, state=state, reason=short(reason), updated_at=now, **fields)
    effects.append(SaveInstance(new, inst))
    if state.terminal or state is InstanceState.PENDING:
        effects.append(DropReservation(inst.id))
    if state is not inst.state:
        effects.append(
            Emit(
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
        )
    effects.append(Reconcile(inst.job_id))
    return effects


def plan_termination(
    inst: InstanceRecord,
    reason: str,
    now: float,
    *,
    in_flight: bool,
    job: JobRecord | None = None,
) -> list[RootEffect]:
    """Stop `inst` for `reason`: a PENDING instance no cluster can have (no placement
    call `in_flight`) is TERMINATED at once; any other is marked `terminate`, with its
    `instance.terminating` event, for the reconciler's DELETE to its cluster. One that
    has ended or is already being stopped: no effect."""
    if inst.state.terminal or inst.terminate:
        return []
    if inst.state is InstanceState.PENDING and not in_flight:
        return plan_transition(inst, InstanceState.TERMINATED, reason, now, job=job)
    marked = replace(inst, terminate=True, terminate_reason=reason, updated_at=now)
    return [
        SaveInstance(marked, inst),
        Emit(
            "instance.terminating",
            inst.id,
            reason=reason,
            state=inst.state.value,
            job_id=inst.job_id,
            instance_id=inst.id,
            cluster_id=inst.cluster_id,
            node_id=inst.node_id,
            data={"replica": inst.replica, "job_version": inst.job_version},
        ),
        Reconcile(inst.job_id),
        Kick(),
    ]


def plan_reconcile(
    job: JobRecord,
    instances: Sequence[InstanceRecord],
    now: float,
    *,
    versions: Mapping[int, VersionRecord] | None = None,
    in_flight: Collection[str] = (),
) -> list[RootEffect]:
    """Bring `job`'s `instances` (every one it has, in memory's order) to what it
    asks for at `now`.

    An active rollout is looked at first (`rollout_plans.plan_advance` over
    `versions`, the job's kept spec versions: needed only then); its starts and
    stops are merged with the replica diff (`replicas.diff_replicas`). Each
    instance to stop gets `plan_termination` (`in_flight`: the instances with a
    placement call under way), with the reason it goes; the replicas to create get
    their generations (instance ids) reserved in one `SaveJob` before any
    `CreateInstance`, so a crash in between never hands out an id twice, and the
    reconciler is woken for them.
    """
    effects: list[RootEffect] = []
    facts = [i.facts() for i in instances]
    step: RolloutStep | None = None
    if job.rollout is not None and job.rollout.active:
        advance = rollout_plans.plan_advance(job, facts, versions or {}, now)
        effects.extend(advance.effects)
        job, step = advance.job, advance.step
    spec = job.spec
    diff = diff_replicas(job.desired, facts, spec.restart_policy, spec.max_restarts, spec.on_shed)
    merged = merge_plans(diff, step, facts, job.job_version)
    by_id = {i.id: i for i in instances}
    for iid, given in merged.terminate:
        inst = by_id[iid]
        if given is not None:
            why = given
        elif job.deleted_at is not None:
            why = "job deleted"
        elif inst.replica >= job.desired:
            why = f"scaled down to {job.desired} replicas"
        else:
            why = "shed by its node; rescheduling (on_shed=reschedule)"
        effects.extend(plan_termination(inst, why, now, in_flight=iid in in_flight, job=job))
    if merged.create:
        first = job.next_generation
        reserved = replace(job, next_generation=first + len(merged.create), updated_at=now)
        effects.append(SaveJob(reserved, job))
        for offset, (replica, restarts, given) in enumerate(merged.create):
            why = given or (
                f"replica {replica} created"
                if restarts == 0
                else f"replica {replica} replaced (restart {restarts})"
            )
            effects.append(CreateInstance(job.id, first + offset, replica, restarts, why))
        effects.append(Kick())
    return effects


def plan_job_state(
    job: JobRecord, instances: Sequence[InstanceRecord], now: float
) -> list[RootEffect]:
    """`job`'s state derived from its `instances` (`replicas.job_state`): when it
    differs from the recorded one, the job saved with it at `now` and a `job.state`
    event; else no effect."""
    spec = job.spec
    state = job_state(
        job.desired,
        job.deleted_at is not None,
        [i.facts() for i in instances],
        spec.restart_policy,
        spec.max_restarts,
    )
    if state is job.state:
        return []
    return [
        SaveJob(replace(job, state=state, updated_at=now), job),
        Emit("job.state", job.id, state=state.value, job_id=job.id, data={"from": job.state.value}),
    ]
