"""API read models: jobs, instances, versions, rollouts, clusters, and the metrics gauges.

Functions over the shared `state.RootState`; `service.RootService` is their facade.
"""

from __future__ import annotations

from root_orchestrator import lookups, texts, writes
from root_orchestrator.errors import NotFound
from root_orchestrator.metrics import GaugeFamily
from root_orchestrator.records import (
    CLUSTERS,
    INSTANCES,
    JOBS,
    ClusterRecord,
    InstanceRecord,
    JobRecord,
)
from root_orchestrator.replicas import JobState
from root_orchestrator.rollout import (
    plan_rollout,
    rollout_counts,
)
from root_orchestrator.state import (
    MAX_TERMINAL_LISTED,
    RootState,
)
from schemas.cluster import ClusterLiveness
from schemas.job import InstanceState
from schemas.root_api import (
    ClusterList,
    ClusterView,
    InstanceView,
    JobList,
    JobSummary,
    JobView,
    RolloutView,
    VersionList,
    VersionView,
)


def get_job(st: RootState, ref: str) -> JobView:
    """One job with its instances and placement explanation (by id or name)."""
    with st.lock:
        return job_view(st, lookups.resolve_job(st, ref))


def list_jobs(
    st: RootState,
    *,
    state: JobState | None = None,
    name: str | None = None,
    cluster: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> JobList:
    """A page of jobs in submission order, filtered by state, name and cluster."""
    writes.settled_store(st)  # the page comes from the store: every answered change in it
    with st.lock:
        where = texts.where(state=state.value if state else None, name=name)
        if cluster is not None:
            rec = lookups.cluster_by_ref(st, cluster)
            ids = sorted({i.job_id for i in (lookups.cluster_instances(st, rec.id) if rec else [])})
            if cursor:
                ids = [i for i in ids if i > cursor]
            jobs = [j for j in (lookups.load_job(st, i) for i in ids) if j is not None]
            jobs = [
                j
                for j in jobs
                if (state is None or j.state is state) and (name is None or j.name == name)
            ]
            page = jobs[: limit + 1]
        else:
            docs = st.store.find(
                JOBS,
                where,
                order_by="_id",
                after=("_id", cursor) if cursor else None,
                limit=limit + 1,
            )
            page = [st.jobs.get(d["_id"]) or JobRecord.from_doc(d) for d in docs]
        more = len(page) > limit
        page = page[:limit]
        return JobList(
            jobs=[_job_summary(st, j) for j in page],
            next_cursor=page[-1].id if more and page else None,
        )


def job_versions(st: RootState, ref: str) -> VersionList:
    """The kept versions of a job's spec, newest first, with their specs."""
    with st.lock:
        job = lookups.resolve_job(st, ref)
        return VersionList(
            job_id=job.id,
            name=job.name,
            job_version=job.job_version,
            versions=_version_views(st, job, with_spec=True),
        )


def _version_views(st: RootState, job: JobRecord, *, with_spec: bool) -> list[VersionView]:
    versions = lookups.versions_of(st, job.id)
    if not versions:
        return [
            VersionView(
                version=job.job_version,
                state="current",
                created_at=job.created_at,
                spec=job.spec if with_spec else None,
            )
        ]
    return [
        VersionView(
            version=rec.number,
            state=rec.state,
            created_at=rec.created_at,
            finished_at=rec.finished_at,
            reason=rec.reason,
            changed=list(rec.changed),
            spec=rec.spec if with_spec else None,
        )
        for rec in sorted(versions.values(), key=lambda r: r.number, reverse=True)
    ]


def _rollout_view(
    st: RootState, job: JobRecord, instances: list[InstanceRecord]
) -> RolloutView | None:
    rollout = job.rollout
    if rollout is None:
        return None
    facts = [i.facts() for i in instances]
    now = st.clock()
    strategy = job.spec.update
    counts = rollout_counts(job.desired, facts, rollout.target_version, now, strategy.min_healthy_s)
    waiting = ""
    if rollout.active:
        waiting = plan_rollout(rollout, job.desired, facts, strategy, now).waiting
    return RolloutView(
        state=rollout.state,
        from_version=rollout.from_version,
        to_version=rollout.to_version,
        target_version=rollout.target_version,
        started_at=rollout.started_at,
        progress_at=rollout.progress_at,
        finished_at=rollout.finished_at,
        replicas=counts.replicas,
        updated=counts.updated,
        healthy=counts.healthy,
        unavailable=counts.unavailable,
        old_instances=counts.old,
        reason=rollout.reason,
        waiting=waiting,
    )


def _job_summary(
    st: RootState, job: JobRecord, instances: list[InstanceRecord] | None = None
) -> JobSummary:
    if instances is None:
        instances = lookups.job_instances(st, job.id) if job.id in st.jobs else []
    running = sum(1 for i in instances if i.state is InstanceState.RUNNING)
    return JobSummary(
        id=job.id,
        name=job.name,
        state=job.state,
        desired_replicas=job.desired,
        actual_replicas=running,
        priority=job.spec.priority,
        runtime=job.spec.runtime.value,
        created_at=job.created_at,
        updated_at=job.updated_at,
        reason=_job_reason(st, job, instances),
        job_version=job.job_version,
        rollout_state=job.rollout.state if job.rollout else None,
    )


def _job_reason(st: RootState, job: JobRecord, instances: list[InstanceRecord]) -> str:
    if job.state is not JobState.PENDING and job.state is not JobState.DEGRADED:
        return ""
    pending = [i for i in instances if i.state is InstanceState.PENDING and i.placement]
    if not pending:
        return ""
    latest = max(pending, key=_placed_at)
    return latest.placement.explanation if latest.placement else ""


def _placed_at(inst: InstanceRecord) -> float:
    return inst.placement.at if inst.placement else 0.0


def _instance_view(st: RootState, inst: InstanceRecord) -> InstanceView:
    cluster = st.clusters.get(inst.cluster_id) if inst.cluster_id else None
    return InstanceView(
        id=inst.id,
        job_id=inst.job_id,
        replica=inst.replica,
        state=inst.state,
        cluster_id=inst.cluster_id,
        cluster_name=cluster.name if cluster else None,
        node_id=inst.node_id,
        node_name=inst.node_name,
        reason=inst.reason,
        created_at=inst.created_at,
        updated_at=inst.updated_at,
        exit_code=inst.exit_code,
        restarts=inst.restarts,
        terminating=inst.terminate and not inst.state.terminal,
        job_version=inst.job_version,
        placement=inst.placement,
        inference=None if inst.state.terminal else st.inference.get(inst.id),
    )


def job_view(st: RootState, job: JobRecord) -> JobView:
    """The API view of a job, its instances, placement explanation and rollout."""
    instances = lookups.instances_of(st, job)
    summary = _job_summary(st, job, instances)
    counts: dict[str, int] = {}
    for inst in instances:
        counts[inst.state.value] = counts.get(inst.state.value, 0) + 1
    active = sorted(
        (i for i in instances if not i.state.terminal), key=lambda i: (i.replica, i.created_at)
    )
    ended = sorted(
        (i for i in instances if i.state.terminal), key=lambda i: i.updated_at, reverse=True
    )[:MAX_TERMINAL_LISTED]
    placed = [i for i in instances if i.placement]
    placement = max(placed, key=_placed_at).placement if placed else None
    return JobView(
        **summary.model_dump(),
        spec=job.spec,
        deleted_at=job.deleted_at,
        instance_counts=counts,
        placement=placement,
        instances=[_instance_view(st, i) for i in active + ended],
        latest_version=job.latest_version,
        rollout=_rollout_view(st, job, instances),
        versions=_version_views(st, job, with_spec=False),
    )


def cluster_view(st: RootState, rec: ClusterRecord) -> ClusterView:
    """The API view of a cluster (liveness, capacity, no secrets)."""
    now = st.clock()
    counts: dict[str, int] = {}
    for inst in lookups.cluster_instances(st, rec.id):
        counts[inst.state.value] = counts.get(inst.state.value, 0) + 1
    return ClusterView(
        id=rec.id,
        name=rec.name,
        url=rec.url,
        location=rec.location,
        labels=dict(rec.labels),
        liveness=rec.liveness,
        liveness_since=rec.liveness_since,
        reason=rec.reason,
        registered_at=rec.registered_at,
        last_report_at=rec.last_report_at,
        seconds_since_report=now - rec.last_report_at if rec.last_report_at else None,
        has_api_token=rec.api_token is not None,
        instances=counts,
        report=rec.report,
        identity_reset_until=rec.identity_reset_until,
    )


def list_clusters(st: RootState) -> ClusterList:
    """Every registered cluster, by name."""
    with st.lock:
        recs = sorted(st.clusters.values(), key=lambda c: (c.name, c.id))
        return ClusterList(clusters=[cluster_view(st, c) for c in recs])


def get_cluster(st: RootState, ref: str) -> ClusterView:
    """One cluster by id or name."""
    with st.lock:
        rec = lookups.cluster_by_ref(st, ref)
        if rec is None:
            raise NotFound(f"no cluster {texts.shown(ref)}")
        return cluster_view(st, rec)


def pending_count(st: RootState) -> int:
    """How many instances wait for a cluster."""
    with st.lock:
        return len(st.pending_ids)


def gauges(st: RootState) -> list[GaugeFamily]:
    """Jobs, instances and clusters by state, counted in the store."""
    writes.settled_store(st)
    store = st.store
    jobs: dict[tuple[str, ...], float] = {
        (s.value,): float(store.count(JOBS, {"state": s.value})) for s in JobState
    }
    instances: dict[tuple[str, ...], float] = {
        (s.value,): float(store.count(INSTANCES, {"state": s.value})) for s in InstanceState
    }
    with st.lock:
        clusters: dict[tuple[str, ...], float] = {(s.value,): 0.0 for s in ClusterLiveness}
        for rec in st.clusters.values():
            clusters[(rec.liveness.value,)] += 1
        pending = float(len(st.in_flight))
        strays = float(len(st.strays))
    return [
        GaugeFamily("edge_root_jobs", "Jobs by state.", ("state",), jobs),
        GaugeFamily("edge_root_instances", "Instances by state.", ("state",), instances),
        GaugeFamily("edge_root_clusters", "Clusters by liveness.", ("liveness",), clusters),
        GaugeFamily(
            "edge_root_placements_in_flight",
            "Placement calls to clusters awaiting an answer.",
            (),
            {(): pending},
        ),
        GaugeFamily(
            "edge_root_stray_instances",
            "Instances clusters run that the root wants deleted there.",
            (),
            {(): strays},
        ),
        GaugeFamily(
            "edge_root_event_stream_subscribers",
            "Live event streams.",
            (),
            {(): float(st.bus.subscribers)},
        ),
    ]


def ping_store(st: RootState) -> None:
    """Raise if the store does not answer (health check)."""
    st.store.count(CLUSTERS)
