"""`/api/v1/events`: the event log with a cursor, and a live stream (server-sent events)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from root_orchestrator.auth import require_operator
from root_orchestrator.deps import ServiceDep
from root_orchestrator.service import RootService
from schemas.common import MAX_INT64
from schemas.root_api import EventList

__all__ = ["router"]

router = APIRouter(prefix="/events", tags=["events"], dependencies=[Depends(require_operator)])

#: Seconds between keep-alive comments on an idle stream.
HEARTBEAT_S = 15.0
_PAGE = 500

Id = Annotated[str | None, Query(max_length=64)]


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Equality filters on events; None matches anything."""

    kind: str | None = None
    category: str | None = None
    job_id: str | None = None
    instance_id: str | None = None
    cluster_id: str | None = None
    subject: str | None = None

    def as_kwargs(self) -> dict[str, str | None]:
        """Keyword arguments for `RootService.list_events`."""
        return {
            "kind": self.kind,
            "category": self.category,
            "job_id": self.job_id,
            "instance_id": self.instance_id,
            "cluster_id": self.cluster_id,
            "subject": self.subject,
        }

    def matches(self, event: dict[str, Any]) -> bool:
        """True if a live event passes every filter."""
        category = str(event.get("kind", "")).split(".", 1)[0]
        if self.category is not None and category != self.category:
            return False
        for key in ("kind", "job_id", "instance_id", "cluster_id", "subject"):
            wanted = getattr(self, key)
            if wanted is not None and event.get(key) != wanted:
                return False
        return True


async def event_filter(
    kind: Annotated[str | None, Query(max_length=128, description="e.g. instance.state")] = None,
    category: Annotated[
        str | None, Query(max_length=32, description="job, instance, cluster, node or scheduling")
    ] = None,
    job_id: Id = None,
    instance_id: Id = None,
    cluster_id: Id = None,
    subject: Id = None,
) -> EventFilter:
    """Dependency: the event filters from the query string."""
    return EventFilter(kind, category, job_id, instance_id, cluster_id, subject)


Filters = Annotated[EventFilter, Depends(event_filter)]


def _page(service: RootService, filters: EventFilter, since: int) -> EventList:
    return service.list_events(since=since, limit=_PAGE, **filters.as_kwargs())


def _sse(event: dict[str, Any]) -> str:
    return f"id: {event['seq']}\nevent: {event['kind']}\ndata: {json.dumps(event)}\n\n"


async def _stream(
    service: RootService, filters: EventFilter, since: int, request: Request
) -> AsyncIterator[str]:
    subscription = service.bus.subscribe()  # before catching up: nothing falls in between
    last = since
    try:
        yield ": stream open\n\n"
        while True:
            page = await run_in_threadpool(_page, service, filters, last)
            for record in page.events:
                yield _sse(record.model_dump(mode="json"))
                last = record.seq
            if len(page.events) < _PAGE:
                break
        while not subscription.closed and not subscription.overflowed:
            items = await subscription.get(HEARTBEAT_S)
            if not items:
                # A quiet stream looks for a gone client here. While events flow, the
                # server notices it: uvicorn (ASGI 2.3) cancels the response on the
                # disconnect, a 2.4 server fails the next send.
                if await request.is_disconnected():
                    return
                yield ": keep-alive\n\n"
                continue
            for item in items:
                if item["seq"] <= last:
                    continue
                last = item["seq"]
                if filters.matches(item):
                    yield _sse(item)
    finally:
        subscription.close()


def _since(since: int | None, last_event_id: str | None, default: int) -> int:
    if since is not None:
        return since
    if last_event_id is not None and last_event_id.isascii() and last_event_id.isdigit():
        return min(int(last_event_id), MAX_INT64)
    return default


def _stream_response(
    service: RootService, filters: EventFilter, since: int, request: Request
) -> StreamingResponse:
    return StreamingResponse(
        _stream(service, filters, since, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong operator token"},
    422: {"description": "a bad query value (the field is named)"},
}


@router.get(
    "",
    response_model=EventList,
    responses={200: {"content": {"text/event-stream": {}}}, **_ERRORS},
)
async def list_events(
    request: Request,
    service: ServiceDep,
    filters: Filters,
    since: Annotated[
        int | None,
        Query(ge=0, le=MAX_INT64, description="only events with seq > since (the cursor)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    tail: Annotated[
        int | None,
        Query(ge=1, le=1000, description="only the newest N events of the log (overrides since)"),
    ] = None,
    follow: Annotated[bool, Query(description="stream (SSE) instead of one page")] = False,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> EventList | StreamingResponse:
    """Events oldest first after `since`; `follow=true` turns this into the live stream."""
    if follow:
        start = _since(since, last_event_id, await run_in_threadpool(service.latest_seq))
        return _stream_response(service, filters, start, request)
    if tail is not None:  # the newest events: where a dashboard starts its panel
        since, limit = max(0, await run_in_threadpool(service.latest_seq) - tail), tail
    return await run_in_threadpool(
        lambda: service.list_events(since=since or 0, limit=limit, **filters.as_kwargs())
    )


@router.get("/stream", responses={200: {"content": {"text/event-stream": {}}}, **_ERRORS})
async def stream_events(
    request: Request,
    service: ServiceDep,
    filters: Filters,
    since: Annotated[
        int | None,
        Query(ge=0, le=MAX_INT64, description="replay events after this seq first (default: now)"),
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> StreamingResponse:
    """Server-sent events: `id` is the seq, `event` the kind, `data` the event JSON."""
    start = _since(since, last_event_id, await run_in_threadpool(service.latest_seq))
    return _stream_response(service, filters, start, request)
