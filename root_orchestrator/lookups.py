"""Reads of the in-memory tables shared by the other modules (jobs by reference, a job's
instances, a cluster by name or id, spec versions).

Functions over the shared `state.RootState`; `service.RootService` is their facade.
"""

from __future__ import annotations

from root_orchestrator import texts, writes
from root_orchestrator.errors import Conflict, NotFound
from root_orchestrator.records import (
    INSTANCES,
    JOB_VERSIONS,
    JOBS,
    ClusterRecord,
    InstanceRecord,
    JobRecord,
    VersionRecord,
)
from root_orchestrator.state import RootState
from schemas.job import JobSpec


def cluster_instances(st: RootState, cluster_id: str) -> list[InstanceRecord]:
    """The live instances the root has on a cluster."""
    return [st.instances[i] for i in sorted(st.on_cluster.get(cluster_id, ()))]


def job_instances(st: RootState, job_id: str) -> list[InstanceRecord]:
    """Every instance of a live job, from memory."""
    return [st.instances[i] for i in st.by_job.get(job_id, ()) if i in st.instances]


def versions_of(st: RootState, job_id: str) -> dict[int, VersionRecord]:
    """The kept versions of a job's spec (loaded from the store on first use)."""
    versions = st.versions.get(job_id)
    if versions is None:
        versions = {}
        for doc in writes.find(st, JOB_VERSIONS, {"job_id": job_id}):
            rec = VersionRecord.from_doc(doc)
            versions[rec.number] = rec
        if job_id in st.jobs:
            st.versions[job_id] = versions
    return versions


def spec_for(st: RootState, job: JobRecord, number: int) -> JobSpec:
    """The spec an instance of version `number` runs (its placement request)."""
    if number == job.job_version:
        return job.spec
    rec = versions_of(st, job.id).get(number)
    return rec.spec if rec is not None else job.spec


def load_job(st: RootState, job_id: str) -> JobRecord | None:
    """A job by id: from memory, else from the store (an evicted, TERMINATED job)."""
    job = st.jobs.get(job_id)
    if job is not None:
        return job
    doc = st.persister.get(JOBS, job_id)
    return JobRecord.from_doc(doc) if doc else None


def resolve_job(st: RootState, ref: str) -> JobRecord:
    """A job by id, else by name (the active one, else the newest).

    A reference that can be neither an id nor a name (too long, other characters)
    is not found, without asking the store (whose keys it could not be anyway).
    """
    if not texts.ID_RE.fullmatch(ref):
        if not texts.NAME_RE.fullmatch(ref):
            raise NotFound(f"no job {texts.shown(ref)}")
    else:
        job = load_job(st, ref)
        if job is not None:
            return job
    active = st.active_names.get(ref)
    if active is not None:
        return st.jobs[active]
    docs = sorted(writes.find(st, JOBS, {"name": ref}), key=lambda d: d["created_at"])
    if docs:
        return st.jobs.get(docs[-1]["_id"]) or JobRecord.from_doc(docs[-1])
    raise NotFound(f"no job {texts.shown(ref)}")


def live_job(st: RootState, ref: str) -> JobRecord:
    """A job by id or name that is not deleted (Conflict if it is)."""
    job = resolve_job(st, ref)
    if job.deleted_at is not None or job.id not in st.jobs:
        raise Conflict(f"job {job.id} is deleted")
    return job


def instances_of(st: RootState, job: JobRecord) -> list[InstanceRecord]:
    """Every instance of a job: from memory when it is live, else from the store."""
    if job.id in st.jobs:
        return job_instances(st, job.id)
    return [InstanceRecord.from_doc(d) for d in writes.find(st, INSTANCES, {"job_id": job.id})]


def cluster_by_ref(st: RootState, ref: str) -> ClusterRecord | None:
    """A cluster by id or name (None when unknown)."""
    rec = st.clusters.get(ref)
    if rec is not None:
        return rec
    for candidate in st.clusters.values():
        if candidate.name == ref:
            return candidate
    return None
