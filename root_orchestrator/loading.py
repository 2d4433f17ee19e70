"""Loading the root's live state from the store at start, and stopping its store writer.

Functions over the shared `state.RootState`; `service.RootService` is their facade.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace

from root_orchestrator import writes
from root_orchestrator.records import (
    CLUSTERS,
    EVENTS,
    INSTANCES,
    JOB_VERSIONS,
    JOBS,
    REGISTRATION_TOKENS,
    ClusterRecord,
    InstanceRecord,
    JobRecord,
    RegistrationTokenRecord,
)
from root_orchestrator.replicas import JobState
from root_orchestrator.state import RootState

log = logging.getLogger(__name__)


def start(st: RootState) -> None:
    """Create indexes and load the live state from the store (once)."""
    with st.lock:
        if st.started:
            return
        store = st.store
        for coll, fields in (
            (JOBS, ("name", "state", "created_at")),
            (INSTANCES, ("job_id", "state", "cluster_id")),
            (EVENTS, ("seq", "job_id", "instance_id", "cluster_id", "kind", "category")),
            (CLUSTERS, ("name",)),
            (JOB_VERSIONS, ("job_id",)),
        ):
            for fld in fields:
                store.ensure_index(coll, fld)
        now = st.clock()
        for doc in store.find(CLUSTERS):
            rec = ClusterRecord.from_doc(doc)
            st.clusters[rec.id] = rec
            # A restarted root gives every cluster a fresh grace period: its own
            # downtime is not the clusters' silence.
            st.seen_at[rec.id] = max(rec.last_report_at or rec.registered_at, now)
        for doc in store.find(REGISTRATION_TOKENS):
            token = RegistrationTokenRecord.from_doc(doc)
            st.reg_tokens[token.id] = token
        for state in JobState:
            if state is JobState.TERMINATED:
                continue
            for doc in store.find(JOBS, {"state": state.value}):
                job = JobRecord.from_doc(doc)
                if job.rollout is not None and job.rollout.active:
                    # like clusters, a rollout gets a fresh progress deadline: the
                    # root's own downtime is not the new version's fault
                    fresh = replace(job.rollout, progress_at=max(job.rollout.progress_at, now))
                    job = replace(job, rollout=fresh)
                st.jobs[job.id] = job
                st.by_job.setdefault(job.id, set())
        for job_id in list(st.jobs):
            job = st.jobs[job_id]
            if job.deleted_at is None:
                st.active_names[job.name] = job.id
            for doc in store.find(INSTANCES, {"job_id": job_id}):
                inst = InstanceRecord.from_doc(doc)
                st.instances[inst.id] = inst
                st.by_job[job_id].add(inst.id)
                writes.index(st, None, inst)
        newest = store.find(JOBS, order_by="_id", descending=True, limit=1)
        if newest and len(newest[0]["_id"]) == 19:
            with contextlib.suppress(ValueError):
                st.last_id_ms = int(newest[0]["_id"][1:13], 16)
        last = store.find(EVENTS, order_by="seq", descending=True, limit=1)
        st.seq = int(last[0]["seq"]) if last else 0
        first = store.find(EVENTS, order_by="seq", limit=1)
        st.pruned_to = int(first[0]["seq"]) - 1 if first else st.seq
        st.persister.start()
        st.started = True
        log.info(
            "root state loaded: %d clusters, %d live jobs, %d instances, event seq %d",
            len(st.clusters),
            len(st.jobs),
            len(st.instances),
            st.seq,
        )


def stop(st: RootState, timeout: float = 10.0) -> None:
    """Write what is queued and stop the store writer (before the store closes)."""
    if not st.persister.stop(timeout):
        log.error("store writer stopped with writes still queued")
