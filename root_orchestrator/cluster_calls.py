"""The calls the reconciler makes to clusters, built from the state: the placement
request of a SCHEDULED instance (`placement_step`) and the DELETEs to send
(`termination_work`). The reconciler makes them outside the lock; `confirmations`
applies the answers.

Functions over the shared `state.RootState` (lock held by the caller, except
`termination_work`, which takes it).
"""

from __future__ import annotations

from root_orchestrator import lookups
from root_orchestrator.records import ClusterRecord, InstanceRecord, JobRecord
from root_orchestrator.state import RootState
from root_orchestrator.steps import PlacementStep, TerminateStep
from schemas.cluster import ClusterLiveness, PlaceInstanceRequest

__all__ = ["placement_step", "termination_work"]


def placement_step(
    st: RootState, inst: InstanceRecord, job: JobRecord, cluster: ClusterRecord, *, pinned: bool
) -> PlacementStep:
    """The placement call for `inst` on `cluster` (the instance is in flight from now)."""
    st.in_flight.add(inst.id)
    spec = lookups.spec_for(st, job, inst.job_version)
    request = PlaceInstanceRequest(
        instance_id=inst.id,
        job_id=job.id,
        job_name=job.name,
        replica=inst.replica,
        spec=spec.task_spec(),
        constraints=spec.constraints,
        placement_policy=spec.placement_policy,
        lost_grace_s=spec.lost_grace_s,
        job_version=inst.job_version,
    )
    return PlacementStep(
        instance_id=inst.id,
        cluster_id=cluster.id,
        cluster_name=cluster.name,
        url=cluster.url,
        token=cluster.api_token,
        request=request,
        pinned=pinned,
    )


def termination_work(st: RootState) -> list[TerminateStep]:
    """DELETEs to send: instances the root wants gone, and strays on clusters."""
    with st.lock:
        steps = []
        for iid in sorted(st.to_terminate):
            inst = st.instances[iid]
            if not inst.terminate or inst.state.terminal or inst.id in st.in_flight:
                continue
            cluster = st.clusters.get(inst.cluster_id or "")
            if cluster is None:
                continue
            if cluster.liveness is ClusterLiveness.READY:
                steps.append(
                    TerminateStep(
                        inst.id,
                        cluster.id,
                        cluster.name,
                        cluster.url,
                        cluster.api_token,
                        stray=False,
                    )
                )
        for cluster_id, iid in sorted(st.strays):
            cluster = st.clusters.get(cluster_id)
            if cluster is None:
                del st.strays[(cluster_id, iid)]
                continue
            if cluster.liveness is ClusterLiveness.READY:
                steps.append(
                    TerminateStep(
                        iid,
                        cluster.id,
                        cluster.name,
                        cluster.url,
                        cluster.api_token,
                        stray=True,
                    )
                )
        return steps
