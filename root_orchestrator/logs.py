"""Task logs at the root: find the instance's cluster, read through it, follow.

The root keeps no logs. `GET /api/v1/jobs/{job}/instances/{id}/logs` asks the
instance's cluster (`ClusterClient.logs`), which asks the node over MQTT. Following
(`follow=1`) is a loop of long polls with the cursor of the previous answer
(`FOLLOW_WAIT_S` each), streamed as text until the instance ends (a last line says how)
or the client goes away. A cluster or node that stops answering mid-stream gets one
notice line and is retried with a growing pause; an instance that is gone ends the
stream with a line saying so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from root_orchestrator.cluster_client import ClusterClient, ClusterRefused, ClusterUnavailable
from schemas.cluster import ClusterLiveness, InstanceLogs
from schemas.job import InstanceState
from schemas.mqtt import MAX_LOGS_BYTES

__all__ = ["FOLLOW_WAIT_S", "LogTarget", "LogsUnavailable", "end_line", "follow", "read_first"]

log = logging.getLogger(__name__)

FOLLOW_WAIT_S = 5.0
"""Long-poll wait of each follow request to the cluster."""
RETRY_MAX_S = 10.0


@dataclass(frozen=True)
class LogTarget:
    """Where an instance of a job is, for reading its logs (from `RootService`)."""

    job_id: str
    job_name: str
    instance_id: str
    replica: int
    state: InstanceState
    cluster_id: str | None
    cluster_name: str
    cluster_url: str
    token: str | None
    liveness: ClusterLiveness | None


class LogsUnavailable(Exception):
    """The logs cannot be read now; `status` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _where(target: LogTarget) -> str:
    return f"cluster {target.cluster_name}"


async def read_first(client: ClusterClient, target: LogTarget, tail: int) -> InstanceLogs:
    """The first read (the last `tail` lines), or `LogsUnavailable` with the status."""
    if target.cluster_id is None or not target.cluster_url:
        raise LogsUnavailable(
            409,
            f"instance {target.instance_id} is {target.state.value} and not on a cluster: "
            "it has no output yet",
        )
    if target.liveness is ClusterLiveness.LOST:
        raise LogsUnavailable(
            503, f"{_where(target)} is LOST: the logs of {target.instance_id} cannot be read"
        )
    try:
        return await client.logs(
            target.cluster_url,
            target.token,
            target.instance_id,
            tail=tail,
            max_bytes=MAX_LOGS_BYTES,
        )
    except ClusterRefused as exc:
        status = exc.status if exc.status in (404, 409, 503) else 502
        raise LogsUnavailable(status, f"{_where(target)}: {exc.detail}") from None
    except ClusterUnavailable as exc:
        state = f" ({target.liveness.value})" if target.liveness else ""
        raise LogsUnavailable(503, f"{_where(target)}{state} does not answer: {exc}") from None


def end_line(instance_id: str, page: InstanceLogs) -> str:
    """The last line of a followed stream once the instance has ended."""
    state = page.state.value if page.state.terminal else (page.task_state or page.state).value
    code = f", exit code {page.exit_code}" if page.exit_code is not None else ""
    return f"--- {instance_id} ended: {state}{code} ---\n"


def _newline(text: str) -> str:
    return "" if not text or text.endswith("\n") else "\n"


async def follow(
    client: ClusterClient, target: LogTarget, first: InstanceLogs
) -> AsyncIterator[bytes]:
    """The text of `first`, then new output as it comes, until the instance ends."""
    page = first
    last_text = page.text
    if page.text:
        yield page.text.encode()
    delay = 0.5
    noticed = False
    while not page.eof:
        try:
            page = await client.logs(
                target.cluster_url,
                target.token,
                target.instance_id,
                tail=0,
                cursor=page.cursor,
                wait_s=FOLLOW_WAIT_S,
            )
        except ClusterRefused as exc:
            if exc.status in (404, 409, 422):
                why = f"--- logs of {target.instance_id} end: {exc.detail} ---\n"
                yield (_newline(last_text) + why).encode()
                return
            notice = f"{_where(target)}: {exc.detail}"
        except ClusterUnavailable as exc:
            notice = f"{_where(target)} does not answer: {exc}"
        else:
            delay, noticed = 0.5, False
            if page.text:
                last_text = page.text
                yield page.text.encode()
            continue
        if not noticed:  # one line per outage, not one per retry
            noticed = True
            yield f"{_newline(last_text)}--- {notice}; retrying ---\n".encode()
            last_text = "\n"
        log.info("following logs of %s: %s", target.instance_id, notice)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)
    yield (_newline(last_text) + end_line(target.instance_id, page)).encode()
