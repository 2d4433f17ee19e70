"""The applier: every change of a job, instance, cluster or version record lands in memory
and is queued, in order, for the store writer (`persister.Persister`) under the lock; callers
wait for durability (`durable`) after releasing it. Also the in-memory indexes kept with them.

Functions over the shared `state.RootState`; `service.RootService` is their facade.

Deferred durability: the service's async methods (`RootService.*_async`) run a
call's function on the event loop inside `deferring()`. There `durable` only notes
the marks to wait for and `kick` only notes that listeners want a call; once the
function has returned (and released the lock), `wait_deferred` awaits the marks
(`Persister.wait_async`: the loop runs on meanwhile) and then kicks. The call still
answers only once its writes are durable, and wakes the reconciler only then.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

from root_orchestrator.records import (
    CLUSTERS,
    INSTANCES,
    JOBS,
    ClusterRecord,
    InstanceRecord,
    JobRecord,
)
from root_orchestrator.replicas import JobState
from root_orchestrator.state import (
    DURABLE_TIMEOUT_S,
    RootState,
)
from schemas.job import InstanceState

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Deferred:
    """What a function run inside `deferring()` left to do after it returned."""

    #: (since, mark) of each `durable` call, in order
    waits: list[tuple[int, int]] = field(default_factory=list)
    #: `kick` was called
    kick: bool = False


_DEFERRED: ContextVar[Deferred | None] = ContextVar("root_deferred_durability", default=None)


@contextmanager
def deferring() -> Iterator[Deferred]:
    """Within this block (no `await` in it), `durable` and `kick` are only noted, in
    the returned `Deferred`; `wait_deferred` does them afterwards."""
    box = Deferred()
    token = _DEFERRED.set(box)
    try:
        yield box
    finally:
        _DEFERRED.reset(token)


async def wait_deferred(st: RootState, box: Deferred) -> None:
    """Await the writes noted in `box` (as `durable` would have waited), then kick the
    listeners if the call asked to. StoreError as `durable`; no kick then."""
    for since, upto in box.waits:
        await st.persister.wait_async(upto, DURABLE_TIMEOUT_S, since=since)
    if box.kick:
        kick(st)


def mark(st: RootState) -> int:
    """The store writer's mark for everything queued so far (take it under the lock)."""
    return st.persister.mark()


def durable(st: RootState, since: int, mark: int) -> None:
    """Wait (never under the lock) until the writes up to `mark` are in the store;
    StoreError (503) if they are not within DURABLE_TIMEOUT_S, or if one of the
    call's own writes (after `since`) failed. Inside `deferring()`: only noted."""
    box = _DEFERRED.get()
    if box is not None:
        box.waits.append((since, mark))
        return
    st.persister.wait(mark, DURABLE_TIMEOUT_S, since=since)


def find(st: RootState, collection: str, where: dict[str, Any]) -> list[dict[str, Any]]:
    """`store.find(collection, where)` as it will be once the queued writes land
    (equality on top-level fields), without waiting for them."""
    docs = {d["_id"]: d for d in st.store.find(collection, where)}
    for doc_id, doc in st.persister.pending(collection):
        if doc is not None and all(doc.get(k) == v for k, v in where.items()):
            docs[doc_id] = doc
        else:
            docs.pop(doc_id, None)
    return list(docs.values())


def settled_store(st: RootState) -> None:
    """Wait until every queued write is in the store (before a query of it)."""
    st.persister.wait(st.persister.mark(), DURABLE_TIMEOUT_S)


def kick(st: RootState) -> None:
    """Tell every listener (the reconciler) that there may be new work (inside
    `deferring()`: once the call's writes are durable)."""
    box = _DEFERRED.get()
    if box is not None:
        box.kick = True
        return
    for callback in st.listeners:
        try:
            callback()
        except Exception:  # pragma: no cover - a listener must not break the service
            log.exception("work listener failed")


def save_job(st: RootState, new: JobRecord, old: JobRecord | None) -> JobRecord:
    """Record a job change in memory (and its name index) and queue it for the store."""
    new = replace(new, version=(old.version if old else 0) + 1)
    st.persister.put(JOBS, new.id, new)
    if old is not None and st.active_names.get(old.name) == old.id:
        del st.active_names[old.name]
    if new.state is JobState.TERMINATED:
        _evict(st, new.id)
    else:
        st.jobs[new.id] = new
        st.by_job.setdefault(new.id, set())
        if new.deleted_at is None:
            st.active_names[new.name] = new.id
    return new


def _evict(st: RootState, job_id: str) -> None:
    job = st.jobs.pop(job_id, None)
    if job is not None and st.active_names.get(job.name) == job_id:
        del st.active_names[job.name]
    st.versions.pop(job_id, None)
    for iid in st.by_job.pop(job_id, set()):
        index(st, st.instances.pop(iid, None), None)
        st.refusals.pop(iid, None)
        st.inference.pop(iid, None)
        drop_reservation(st, iid)


def save_instance(st: RootState, new: InstanceRecord, old: InstanceRecord | None) -> InstanceRecord:
    """Record an instance change in memory and the work indexes, and queue it for the store."""
    new = replace(new, version=(old.version if old else 0) + 1)
    st.persister.put(INSTANCES, new.id, new)
    index(st, st.instances.get(new.id), new)
    st.instances[new.id] = new
    st.by_job.setdefault(new.job_id, set()).add(new.id)
    return new


def index(st: RootState, old: InstanceRecord | None, new: InstanceRecord | None) -> None:
    """Move an instance between the indexes (old -> new record; None: absent)."""
    if old is not None:
        live = st.on_cluster.get(old.cluster_id or "")
        if live is not None:
            live.discard(old.id)
            if not live:
                del st.on_cluster[old.cluster_id or ""]
        st.to_place.discard(old.id)
        st.to_terminate.discard(old.id)
        st.pending_ids.discard(old.id)
    if new is None or new.state.terminal:
        return
    if new.cluster_id:
        st.on_cluster.setdefault(new.cluster_id, set()).add(new.id)
    if new.terminate:
        st.to_terminate.add(new.id)
    elif new.state is InstanceState.PENDING or (
        new.state is InstanceState.SCHEDULED and new.assigned_at is None
    ):
        st.to_place.add(new.id)
    if new.state is InstanceState.PENDING:
        st.pending_ids.add(new.id)


def save_cluster(st: RootState, new: ClusterRecord, old: ClusterRecord | None) -> ClusterRecord:
    """Record a cluster change in memory and queue it for the store."""
    new = replace(new, version=(old.version if old else 0) + 1)
    st.persister.put(CLUSTERS, new.id, new)
    st.cluster_saved_at[new.id] = st.clock()
    st.clusters[new.id] = new
    return new


def drop_reservation(st: RootState, instance_id: str) -> None:
    """Forget the capacity reserved for an instance on any cluster."""
    for reserved in st.reservations.values():
        reserved.pop(instance_id, None)
