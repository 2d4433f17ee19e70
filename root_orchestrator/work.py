"""What a reconcile pass has to do (liveness, job reconciliation, placements, terminations).

Functions over the shared `state.RootState`; `service.RootService` is their facade.
"""

from __future__ import annotations

from root_orchestrator import lifecycle, rollouts, texts, writes
from root_orchestrator import liveness as liveness_ops
from root_orchestrator import placing as placing_ops
from root_orchestrator.state import RootState
from root_orchestrator.steps import PassWork
from schemas.job import InstanceState


def reconcile_all(st: RootState) -> None:
    """Replica diffing for every live job (the periodic, level-triggered pass)."""
    with st.lock:
        st.dirty.update(st.jobs)
        lifecycle.settle(st)


def pass_work(st: RootState, *, sweep: bool) -> PassWork:
    """One reconcile pass's look at the state, under one hold of the lock.

    Liveness first, then (with `sweep`) the replica diff of every job, then the
    DELETEs to send and the instances to place. One call instead of four keeps a
    pass from queueing for the lock four times behind API calls and reports.
    """
    with st.lock:
        since = writes.mark(st)
        liveness_ops.check_liveness(st)
        if sweep:
            reconcile_all(st)
        else:
            # health windows end without an event: every pass looks at the rollouts
            st.dirty.update(
                j.id for j in st.jobs.values() if j.rollout is not None and j.rollout.active
            )
            lifecycle.settle(st)
        work = PassWork(
            terminations=placing_ops.termination_work(st),
            placements=placement_work(st),
            wake_in=texts.soonest(rollouts.rollout_wake_in(st), liveness_ops.liveness_wake_in(st)),
        )
        mark = writes.mark(st)
    if work.terminations:
        writes.durable(st, since, mark)  # a DELETE goes out once the root's wish to stop is stored
    return work


def placement_work(st: RootState) -> list[str]:
    """Instances to place now: PENDING, or SCHEDULED but never acknowledged.

    Highest priority first, then oldest first.
    """
    with st.lock:
        work = []
        for iid in st.to_place:
            inst = st.instances[iid]
            if inst.id in st.in_flight or inst.terminate:
                continue
            job = st.jobs.get(inst.job_id)
            if job is None or job.deleted_at is not None:
                continue
            if inst.state is InstanceState.PENDING or (
                inst.state is InstanceState.SCHEDULED and inst.assigned_at is None
            ):
                work.append((-job.spec.priority, inst.pending_since or 0.0, inst.id))
        return [iid for _p, _t, iid in sorted(work)]
