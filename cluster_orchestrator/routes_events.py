"""Event API: every transition and decision kept in the store, newest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from cluster_orchestrator.deps import OperatorAuth, ServicesDep
from cluster_orchestrator.records import EVENTS, event_from_doc
from schemas.cluster_api import API_ERRORS
from schemas.job import Event

__all__ = ["EventList", "router"]

router = APIRouter(
    prefix="/api/v1/events", tags=["events"], dependencies=[OperatorAuth], responses=API_ERRORS
)


class EventList(BaseModel):
    """`GET /api/v1/events`."""

    model_config = ConfigDict(frozen=True)

    events: list[Event]
    count: int


@router.get("", response_model=EventList, summary="List events")
async def list_events(
    services: ServicesDep,
    instance_id: Annotated[str | None, Query(max_length=64)] = None,
    node_id: Annotated[str | None, Query(max_length=64)] = None,
    kind: Annotated[str | None, Query(max_length=64, description="e.g. node.liveness")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventList:
    """Events from the store (written asynchronously: the newest may lag by a moment)."""
    where: dict[str, Any] = {}
    if instance_id is not None:
        where["instance_id"] = instance_id
    if node_id is not None:
        where["node_id"] = node_id
    if kind is not None:
        where["kind"] = kind
    store = services.store
    if store is None:
        return EventList(events=[], count=0)
    docs = await run_in_threadpool(
        store.find, EVENTS, where or None, order_by="_id", descending=True, limit=limit
    )
    events = [event_from_doc(doc) for doc in docs]
    return EventList(events=events, count=len(events))
