"""Log reads from node engines: a `logs_request` out, `logs_chunk` replies back.

`LogRequests` owns the table of pending requests. It lives on the HTTP server's event
loop: `read()` (awaited by the logs route) registers a request and publishes it; the
MQTT network thread only hands each decoded reply over with
`loop.call_soon_threadsafe` (`deliver`), so the table is read and changed on that one
thread, without locks, and no work happens on the network thread.

A reply is matched by its request id and must come from the node asked (another node
answering is rejected and counted as `logs_wrong_node`). A reply that arrives after
its request gave up is counted (`edge_cluster_logs_late_replies_total`) and dropped.
When the deadline passes with only part of an answer in (QoS 0 chunks can be lost),
the chunks that arrived in order from the first are returned with the cursor of the
last of them (`incomplete`); the reader continues from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster_orchestrator.metrics import Metrics
from schemas.common import new_id
from schemas.job import TaskState
from schemas.mqtt import LogsChunk, LogsChunkMessage, LogsRequest, LogsRequestMessage

__all__ = [
    "NODE_TIMEOUT_S",
    "LogRequests",
    "NodeLogs",
    "NodeLogsError",
    "NodeLogsRefused",
    "NodeLogsTimeout",
]

log = logging.getLogger(__name__)

NODE_TIMEOUT_S = 5.0
"""How long a node has to answer a logs request (its validity is one second more)."""

Publish = Callable[[LogsRequestMessage], bool]


class NodeLogsError(Exception):
    """The node's logs could not be read (not connected, no answer in time, refused)."""


class NodeLogsTimeout(NodeLogsError):
    """The node did not answer in time."""


class NodeLogsRefused(NodeLogsError):
    """The node answered with an error (`code`: one of `schemas.mqtt.LOGS_ERROR_CODES`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class NodeLogs:
    """A node's answer, reassembled."""

    text: str
    cursor: str
    more: bool
    skipped: bool
    incomplete: bool
    task_state: TaskState | None
    exit_code: int | None
    ended: bool


@dataclass
class _Pending:
    node_id: str
    instance_id: str
    chunks: dict[int, LogsChunk] = field(default_factory=dict)
    last_seq: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class LogRequests:
    """Pending log requests and their replies (event-loop thread; see the module doc)."""

    def __init__(
        self,
        publish: Publish,
        metrics: Metrics,
        *,
        timeout: float = NODE_TIMEOUT_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._publish = publish
        self._metrics = metrics
        self.timeout = timeout
        self._wall = wall
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, _Pending] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the event loop that serves HTTP (the lifespan's)."""
        self._loop = loop

    def set_publisher(self, publish: Publish) -> None:
        """Install the function that publishes requests (the MQTT adapter's)."""
        self._publish = publish

    @property
    def pending(self) -> int:
        """Requests waiting for their answer."""
        return len(self._pending)

    # ----- MQTT network thread -----

    def deliver(self, message: LogsChunkMessage) -> None:
        """Hand a decoded reply to the event loop (called on the MQTT thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._metrics.inc("edge_cluster_logs_late_replies_total")
            return
        try:
            loop.call_soon_threadsafe(self._on_chunk, message)
        except RuntimeError:  # the loop closed meanwhile (shutting down)
            self._metrics.inc("edge_cluster_logs_late_replies_total")

    # ----- event loop -----

    def _on_chunk(self, message: LogsChunkMessage) -> None:
        chunk = message.payload
        pending = self._pending.get(chunk.request_id)
        if pending is None:
            self._metrics.inc("edge_cluster_logs_late_replies_total")
            return
        if message.node_id != pending.node_id:
            self._metrics.inc("edge_cluster_mqtt_rejected_total", {"reason": "logs_wrong_node"})
            log.warning(
                "node %s answered logs request %s sent to node %s: dropped",
                message.node_id,
                chunk.request_id,
                pending.node_id,
            )
            return
        if chunk.instance_id != pending.instance_id and not chunk.error:
            self._metrics.inc("edge_cluster_mqtt_rejected_total", {"reason": "logs_wrong_instance"})
            return
        pending.chunks[chunk.seq] = chunk
        if chunk.last:
            pending.last_seq = chunk.seq
        if pending.last_seq is not None and all(
            seq in pending.chunks for seq in range(pending.last_seq + 1)
        ):
            pending.done.set()

    async def read(
        self,
        node_id: str,
        instance_id: str,
        *,
        tail: int,
        cursor: str | None,
        max_bytes: int,
        timeout: float | None = None,
    ) -> NodeLogs:
        """Ask `node_id` for the instance's output and wait for the answer."""
        wait = self.timeout if timeout is None else timeout
        sent = self._wall()
        message = LogsRequestMessage(
            node_id=node_id,
            id=new_id(),
            ts=sent,
            payload=LogsRequest(
                instance_id=instance_id,
                tail=tail,
                cursor=cursor,
                max_bytes=max_bytes,
                expires_at=sent + wait + 1.0,
            ),
        )
        pending = _Pending(node_id, instance_id)
        self._pending[message.id] = pending
        try:
            if not self._publish(message):
                self._count("unavailable")
                raise NodeLogsError("the cluster is not connected to its broker")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pending.done.wait(), wait)
            return self._assemble(pending, wait)
        finally:
            del self._pending[message.id]

    def _assemble(self, pending: _Pending, wait: float) -> NodeLogs:
        chunks: list[LogsChunk] = []
        while len(chunks) in pending.chunks:
            chunks.append(pending.chunks[len(chunks)])
            if chunks[-1].last:
                break
        if not chunks:
            self._count("timeout")
            raise NodeLogsTimeout(f"the node did not answer within {wait:g} s")
        first = chunks[0]
        if first.error:
            self._count("refused")
            raise NodeLogsRefused(first.error_code or "runtime", first.error)
        last = chunks[-1]
        complete = last.last
        self._count("ok" if complete else "incomplete")
        return NodeLogs(
            text="".join(c.text for c in chunks),
            cursor=last.cursor,
            more=last.more or not complete,
            skipped=first.skipped,
            incomplete=not complete,
            task_state=last.state,
            exit_code=last.exit_code,
            ended=last.ended,
        )

    def _count(self, outcome: str) -> None:
        self._metrics.inc("edge_cluster_logs_requests_total", {"outcome": outcome})
