"""Events: recorded in order with each change (`emit`), listed for the API, pruned.

Functions over the shared `state.RootState`; `service.RootService` is their facade.
"""

from __future__ import annotations

from typing import Any

from root_orchestrator import texts, writes
from root_orchestrator.records import EVENTS
from root_orchestrator.state import (
    PRUNE_BATCH,
    RootState,
)
from schemas.root_api import EventList, EventRecord


def emit(
    st: RootState,
    kind: str,
    subject: str,
    *,
    reason: str = "",
    state: str | None = None,
    job_id: str | None = None,
    instance_id: str | None = None,
    cluster_id: str | None = None,
    node_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Record an event (next seq) with the change that caused it; queued for the store,
    published to live streams once durable."""
    st.seq += 1
    seq = st.seq
    doc: dict[str, Any] = {
        "_id": f"ev{seq:012d}",
        "seq": seq,
        "ts": st.clock(),
        "kind": kind,
        "category": kind.split(".", 1)[0],
        "subject": subject,
        "job_id": job_id,
        "instance_id": instance_id,
        "cluster_id": cluster_id,
        "node_id": node_id,
        "state": state,
        "reason": texts.short(reason),
        "data": data or {},
    }
    st.persister.event(EVENTS, doc)


def list_events(
    st: RootState,
    *,
    since: int = 0,
    limit: int = 100,
    kind: str | None = None,
    category: str | None = None,
    job_id: str | None = None,
    instance_id: str | None = None,
    cluster_id: str | None = None,
    subject: str | None = None,
) -> EventList:
    """Events with seq > since, oldest first, filtered by equality on each field."""
    where = texts.where(
        kind=kind,
        category=category,
        job_id=job_id,
        instance_id=instance_id,
        cluster_id=cluster_id,
        subject=subject,
    )
    docs = st.store.find(
        EVENTS,
        where,
        order_by="seq",
        after=("seq", since) if since > 0 else None,
        limit=limit,
    )
    events = [EventRecord.model_validate(texts.event_out(d)) for d in docs]
    return EventList(events=events, next_since=events[-1].seq if events else since)


def latest_seq(st: RootState) -> int:
    """The seq of the newest durable event (the live streams have every one up to it)."""
    with st.lock:
        newest = st.seq
        backlog = st.persister.backlog
    if backlog:
        writes.settled_store(st)
    return newest


def prune_events(st: RootState) -> int:
    """Delete the oldest events beyond `event_retention` (a batch per call)."""
    with st.lock:
        keep_from = st.seq - st.settings.event_retention
        start = st.pruned_to + 1
        end = min(keep_from, start + PRUNE_BATCH - 1)
    if end < start:
        return 0
    writes.settled_store(st)  # never delete an event before it is written
    for seq in range(start, end + 1):
        st.store.delete(EVENTS, f"ev{seq:012d}")
    with st.lock:
        st.pruned_to = max(st.pruned_to, end)
    return end - start + 1
