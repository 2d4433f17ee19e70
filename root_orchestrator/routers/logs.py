"""`/api/v1/jobs/{job}/instances/{instance_id}/logs`: a task's output, read through its
cluster from its node (see `root_orchestrator.logs` and docs/api.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from root_orchestrator.auth import require_operator
from root_orchestrator.deps import DepsDep
from root_orchestrator.logs import LogsUnavailable, end_line, follow, read_first
from schemas.common import ID_PATTERN
from schemas.mqtt import MAX_LOGS_TAIL

__all__ = ["router"]

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_operator)])

TEXT = "text/plain; charset=utf-8"


@router.get(
    "/{job}/instances/{instance_id}/logs",
    response_class=PlainTextResponse,
    response_model=None,
    responses={
        200: {"content": {"text/plain": {}}, "description": "the output (streamed with follow)"},
        401: {"description": "missing or wrong bearer token"},
        404: {"description": "no such job, or no such instance of this job"},
        409: {"description": "the instance is on no cluster or node, or its output is gone"},
        422: {"description": "a bad query value (the field is named)"},
        503: {"description": "its cluster or node is unreachable or did not answer in time"},
    },
)
async def instance_logs(
    job: Annotated[str, Path(pattern=ID_PATTERN, description="job id or name")],
    instance_id: Annotated[str, Path(pattern=ID_PATTERN)],
    deps: DepsDep,
    tail: Annotated[
        int, Query(ge=0, le=MAX_LOGS_TAIL, description="lines before the end to show first")
    ] = 100,
    follow_: Annotated[
        bool,
        Query(alias="follow", description="keep streaming new output until the instance ends"),
    ] = False,
) -> Response:
    """The last `tail` lines of an instance's stdout and stderr as text; with `follow=1`
    a text stream that goes on with new lines and ends with a line saying how the
    instance ended. Headers: `X-Edge-Node`, `X-Edge-Cursor`."""
    target = await run_in_threadpool(deps.service.log_target, job, instance_id)
    try:
        first = await read_first(deps.client, target, tail)
    except LogsUnavailable as exc:
        deps.metrics.cluster_calls.inc("logs", "error")
        raise HTTPException(exc.status, exc.detail) from None
    deps.metrics.cluster_calls.inc("logs", "ok")
    headers = {"X-Edge-Node": first.node_name or first.node_id, "X-Edge-Cursor": first.cursor}
    if not follow_:
        return PlainTextResponse(first.text, media_type=TEXT, headers=headers)
    if first.eof:
        newline = "" if not first.text or first.text.endswith("\n") else "\n"
        body = first.text + newline + end_line(target.instance_id, first)
        return PlainTextResponse(body, media_type=TEXT, headers=headers)
    return StreamingResponse(
        follow(deps.client, target, first),
        media_type=TEXT,
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
