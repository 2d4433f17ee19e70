"""`GET /api/v1/instances/{id}/logs`: an instance's output, read from its node over MQTT.

The core says where the instance is (node, state); `LogRequests` asks the node and
waits for its answer. With a `cursor` and `wait_s`, the request is a long poll: the
node is asked again every `POLL_INTERVAL_S` until there is new output, the instance
has ended, or `wait_s` has passed (the root follows logs this way).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status

from cluster_orchestrator.core import NotFound
from cluster_orchestrator.deps import OperatorAuth, ServicesDep
from cluster_orchestrator.logs import NodeLogs, NodeLogsError, NodeLogsRefused, NodeLogsTimeout
from schemas.cluster import InstanceLogs
from schemas.cluster_api import API_ERRORS
from schemas.common import ID_PATTERN
from schemas.job import InstanceState
from schemas.mqtt import CURSOR_PATTERN, MAX_LOGS_BYTES, MAX_LOGS_TAIL
from schemas.node import Liveness

__all__ = ["router"]

router = APIRouter(
    prefix="/api/v1/instances",
    tags=["instances"],
    dependencies=[OperatorAuth],
    responses=API_ERRORS,
)

POLL_INTERVAL_S = 0.5
MAX_WAIT_S = 30.0
DEFAULT_MAX_BYTES = 256 * 1024


@dataclass(frozen=True)
class _Target:
    """Where an instance is, as the core sees it."""

    state: InstanceState
    node_id: str | None
    node_name: str = ""
    liveness: Liveness | None = None


def _unavailable(text: str) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, text)


@router.get(
    "/{instance_id}/logs",
    response_model=InstanceLogs,
    summary="Read an instance's output from its node",
    responses={
        404: {"description": "no such instance"},
        409: {"description": "the instance is on no node, or its node no longer has its output"},
        422: {"description": "a bad query value (the field is named)"},
        503: {"description": "the node is offline, lost, busy or did not answer in time"},
    },
)
async def instance_logs(
    services: ServicesDep,
    instance_id: Annotated[str, Path(pattern=ID_PATTERN)],
    tail: Annotated[
        int, Query(ge=0, le=MAX_LOGS_TAIL, description="lines before the end (no cursor)")
    ] = 100,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR_PATTERN, description="`cursor` of the previous answer: what follows"),
    ] = None,
    wait_s: Annotated[
        float,
        Query(ge=0, le=MAX_WAIT_S, description="with a cursor: wait this long for new output"),
    ] = 0.0,
    max_bytes: Annotated[
        int, Query(ge=1024, le=MAX_LOGS_BYTES, description="at most this much output")
    ] = DEFAULT_MAX_BYTES,
) -> InstanceLogs:
    """The last `tail` lines, or the output after `cursor`, with the cursor to go on."""
    core = services.core
    logs = services.logs
    if logs is None:
        raise _unavailable("log reads are not available (no broker connection)")

    def locate() -> _Target:
        view = core.get_instance(instance_id)
        if view.node_id is None:
            return _Target(view.state, None)
        try:
            node = core.get_node(view.node_id)
        except NotFound:
            return _Target(view.state, view.node_id)
        return _Target(view.state, view.node_id, node.info.name, node.liveness)

    try:
        target = await core.run(locate)
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    node_id = target.node_id
    if node_id is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"instance {instance_id} is {target.state.value} and on no node: it has no output yet",
        )
    name = target.node_name
    who = f"node {name} ({node_id})" if name else f"node {node_id}"
    if target.liveness is None:
        raise _unavailable(f"{who} of instance {instance_id} is no longer in this cluster")
    if target.liveness in (Liveness.OFFLINE, Liveness.LOST):
        raise _unavailable(
            f"{who} is {target.liveness.value}: the logs of instance {instance_id} cannot be "
            "read until it is back"
        )
    deadline = time.monotonic() + (wait_s if cursor else 0.0)
    while True:
        try:
            answer = await logs.read(
                node_id, instance_id, tail=tail, cursor=cursor, max_bytes=max_bytes
            )
        except NodeLogsRefused as exc:
            raise _refused(exc, who, instance_id) from None
        except NodeLogsTimeout as exc:
            raise _unavailable(f"{who} did not answer the logs request in time ({exc})") from None
        except NodeLogsError as exc:
            raise _unavailable(f"cannot ask {who} for logs: {exc}") from None
        left = deadline - time.monotonic()
        if answer.text or answer.ended or answer.skipped or left <= 0:
            break
        cursor = answer.cursor or cursor
        await asyncio.sleep(min(POLL_INTERVAL_S, left))
    return _view(instance_id, node_id, name, target.state, answer)


def _refused(exc: NodeLogsRefused, who: str, instance_id: str) -> HTTPException:
    if exc.code == "unknown_instance":
        return HTTPException(
            status.HTTP_409_CONFLICT, f"{who} no longer has the output of {instance_id}: {exc}"
        )
    if exc.code == "bad_cursor":
        return HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            [{"loc": ["query", "cursor"], "msg": str(exc), "type": "value_error"}],
        )
    return _unavailable(f"{who} could not read the logs of {instance_id}: {exc}")


def _view(
    instance_id: str, node_id: str, node_name: str, state: InstanceState, answer: NodeLogs
) -> InstanceLogs:
    return InstanceLogs(
        instance_id=instance_id,
        node_id=node_id,
        node_name=node_name,
        text=answer.text,
        cursor=answer.cursor,
        eof=answer.ended and not answer.more,
        more=answer.more,
        skipped=answer.skipped,
        incomplete=answer.incomplete,
        state=state,
        task_state=answer.task_state,
        exit_code=answer.exit_code,
    )
