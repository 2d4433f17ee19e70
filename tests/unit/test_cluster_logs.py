"""`cluster_orchestrator.logs.LogRequests`: correlation of `logs_chunk` replies.

The publisher is a stand-in node: it answers each request from another thread (as the
MQTT network thread would) through `deliver`, in whatever order and form a test needs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from cluster_orchestrator.logs import LogRequests, NodeLogsError, NodeLogsRefused, NodeLogsTimeout
from cluster_orchestrator.metrics import Metrics
from schemas.job import TaskState
from schemas.mqtt import LogsChunk, LogsChunkMessage, LogsRequestMessage

Answer = Callable[[LogsRequestMessage], list[LogsChunkMessage]]


def chunk(
    message: LogsRequestMessage, seq: int, text: str, *, last: bool, node: str = ""
) -> LogsChunkMessage:
    return LogsChunkMessage(
        node_id=node or message.node_id,
        payload=LogsChunk(
            request_id=message.id,
            instance_id=message.payload.instance_id,
            seq=seq,
            last=last,
            text=text,
            cursor=f"n{seq + 1}",
            state=TaskState.RUNNING,
        ),
    )


def run(
    answer: Answer | None, *, timeout: float = 2.0, publish_ok: bool = True
) -> tuple[object, Metrics, LogRequests]:
    """Make one read against a node answering with `answer` (None: silent)."""
    metrics = Metrics()
    requests: LogRequests

    def publish(message: LogsRequestMessage) -> bool:
        if answer is not None:
            replies = answer(message)
            threading.Thread(target=lambda: [requests.deliver(r) for r in replies]).start()
        return publish_ok

    requests = LogRequests(publish, metrics, timeout=timeout)

    async def main() -> object:
        requests.bind(asyncio.get_running_loop())
        try:
            return await requests.read("n1", "i1", tail=10, cursor=None, max_bytes=4096)
        except NodeLogsError as exc:
            return exc

    return asyncio.run(main()), metrics, requests


def test_chunks_are_reassembled_in_order() -> None:
    result, metrics, requests = run(
        lambda m: [
            chunk(m, 2, "c", last=True),
            chunk(m, 0, "a", last=False),
            chunk(m, 1, "b", last=False),
        ]
    )
    assert not isinstance(result, Exception)
    assert result.text == "abc" and result.cursor == "n3" and not result.incomplete  # type: ignore[attr-defined]
    assert metrics.counter("edge_cluster_logs_requests_total", {"outcome": "ok"}) == 1
    assert requests.pending == 0


def test_a_lost_chunk_gives_the_part_that_arrived_in_order() -> None:
    result, metrics, _ = run(
        lambda m: [chunk(m, 0, "a", last=False), chunk(m, 2, "c", last=True)], timeout=0.3
    )
    assert result.text == "a" and result.cursor == "n1" and result.incomplete  # type: ignore[attr-defined]
    assert result.more  # type: ignore[attr-defined]
    assert metrics.counter("edge_cluster_logs_requests_total", {"outcome": "incomplete"}) == 1


def test_silent_node_times_out_and_disconnected_broker_fails_at_once() -> None:
    result, metrics, _ = run(None, timeout=0.2)
    assert isinstance(result, NodeLogsTimeout)
    assert metrics.counter("edge_cluster_logs_requests_total", {"outcome": "timeout"}) == 1
    result, _, requests = run(None, publish_ok=False)
    assert type(result) is NodeLogsError and "not connected" in str(result)
    assert requests.pending == 0


def test_replies_from_another_node_are_rejected() -> None:
    result, metrics, _ = run(lambda m: [chunk(m, 0, "forged", last=True, node="n2")], timeout=0.3)
    assert isinstance(result, NodeLogsTimeout)
    assert metrics.counter("edge_cluster_mqtt_rejected_total", {"reason": "logs_wrong_node"}) == 1


def test_an_error_reply_is_a_refusal_with_its_code() -> None:
    def answer(m: LogsRequestMessage) -> list[LogsChunkMessage]:
        return [
            LogsChunkMessage(
                node_id="n1",
                payload=LogsChunk(
                    request_id=m.id,
                    instance_id="i1",
                    error="instance i1 is not on this node",
                    error_code="unknown_instance",
                ),
            )
        ]

    result, _, _ = run(answer)
    assert isinstance(result, NodeLogsRefused) and result.code == "unknown_instance"


def test_late_replies_are_counted_and_dropped() -> None:
    metrics = Metrics()
    requests = LogRequests(lambda m: True, metrics, timeout=0.1)
    sent: list[LogsRequestMessage] = []
    requests.set_publisher(lambda m: sent.append(m) or True)

    async def main() -> None:
        requests.bind(asyncio.get_running_loop())
        with pytest.raises(NodeLogsTimeout):
            await requests.read("n1", "i1", tail=1, cursor=None, max_bytes=4096)
        requests.deliver(chunk(sent[0], 0, "late", last=True))
        await asyncio.sleep(0)  # let the loop run the handed-over reply

    asyncio.run(main())
    assert metrics.counter("edge_cluster_logs_late_replies_total") == 1
    # before the loop is bound (or after it closed), replies are dropped the same way
    LogRequests(lambda m: True, metrics).deliver(chunk(sent[0], 0, "x", last=True))
    assert metrics.counter("edge_cluster_logs_late_replies_total") == 2
