"""Answering `logs_request`s: read a task's output off the engine loop and send it back.

The loop looks the task up (its record is loop state), then hands a `LogJob` to the
`LogServer`, whose own few threads call the runtime's `read_logs` (a docker read can
take tens of milliseconds; it must never delay a deploy or a status) and publish the
answer as `logs_chunk` messages on the node's `logs` topic, at QoS 0, straight through
the transport (paho's publish is thread-safe). Nothing here is persisted, acknowledged
or deduplicated: a lost answer costs the asker a retry.

A request is dropped unanswered once it is older than its validity (`expires_at - ts`,
counted from its arrival here, so the node's clock need not agree with the cluster's).

`build_chunks` (pure) cuts a read into chunks of at most `LOGS_CHUNK_BYTES` of
JSON-encoded text (escaping can make a byte of output six bytes of JSON), each with the
cursor after its text, so an asker that lost the tail of an answer continues from the
last chunk it got.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from node_engine.runtimes.base import BadCursor, LogRead, RuntimeFailure, TaskHandle, TaskRuntime
from schemas.job import TaskState
from schemas.mqtt import (
    LOGS_CHUNK_BYTES,
    MAX_LOGS_CHUNKS,
    LogsChunk,
    LogsChunkMessage,
    LogsRequestMessage,
    encode,
)

__all__ = ["LogJob", "LogServer", "build_chunks", "error_chunk"]

log = logging.getLogger(__name__)

DEFAULT_READERS = 2
MAX_PENDING = 16
"""Log reads waiting or running at once; more are refused with "busy"."""

Publish = Callable[[bytes], object]


@dataclass(frozen=True)
class TaskSnapshot:
    """What the loop knew of the task when it handed the read over."""

    state: TaskState
    exit_code: int | None
    ended: bool
    """Finished, and will not run again (no restart pending)."""


@dataclass(frozen=True)
class LogJob:
    """One request to serve: the runtime and handle to read, and until when it is worth it."""

    message: LogsRequestMessage
    runtime: TaskRuntime
    handle: TaskHandle | None
    task: TaskSnapshot
    deadline: float
    """time.monotonic() after which the asker has given up."""


def _json_size(text: str) -> int:
    """Bytes `text` takes inside a JSON string (UTF-8, escapes, no quotes)."""
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def _split(text: str, limit: int) -> list[str]:
    """Cut `text` into parts of at most `limit` JSON bytes each."""
    parts = []
    while text:
        n = min(len(text), limit)
        while n > 1 and _json_size(text[:n]) > limit:
            n //= 2
        parts.append(text[:n])
        text = text[n:]
    return parts


def build_chunks(
    read: LogRead,
    *,
    request_id: str,
    instance_id: str,
    start_cursor: str,
    task: TaskSnapshot | None,
    limit: int = LOGS_CHUNK_BYTES,
) -> list[LogsChunk]:
    """The `logs_chunk` payloads answering one read (at least one; the last has
    `last=True`). Each chunk's cursor continues right after its text; a part of a line
    too long for one chunk carries the cursor before that line."""
    texts: list[tuple[str, str]] = []
    buf: list[str] = []
    size = 0
    cursor = start_cursor  # where the text so far ends ("" before the first piece of a tail)

    def flush() -> None:
        nonlocal buf, size
        if buf:
            texts.append(("".join(buf), cursor))
            buf, size = [], 0

    for piece in read.pieces:
        text = piece.data.decode("utf-8", errors="replace")
        cost = _json_size(text)
        if cost > limit:
            flush()
            parts = _split(text, limit)
            texts.extend((part, cursor or piece.cursor) for part in parts[:-1])
            buf, size = [parts[-1]], _json_size(parts[-1])
        elif size + cost > limit:
            flush()
            buf, size = [text], cost
        else:
            buf.append(text)
            size += cost
        cursor = piece.cursor
    flush()
    if not texts or texts[-1][1] != read.cursor:
        texts.append(("", read.cursor))
    more = read.more
    if len(texts) > MAX_LOGS_CHUNKS:  # not with the byte bounds a request may ask for
        texts, more = texts[:MAX_LOGS_CHUNKS], True
    return [
        LogsChunk(
            request_id=request_id,
            instance_id=instance_id,
            seq=seq,
            last=seq == len(texts) - 1,
            text=text,
            cursor=chunk_cursor,
            more=more and seq == len(texts) - 1,
            skipped=read.skipped,
            state=task.state if task else None,
            exit_code=task.exit_code if task else None,
            ended=task.ended if task else False,
        )
        for seq, (text, chunk_cursor) in enumerate(texts)
    ]


def error_chunk(request_id: str, instance_id: str, code: str, error: str) -> LogsChunk:
    """The one-chunk answer of a request the node cannot serve (`code`: one of
    `schemas.mqtt.LOGS_ERROR_CODES`)."""
    return LogsChunk(
        request_id=request_id,
        instance_id=instance_id,
        seq=0,
        last=True,
        error=error[:1024],
        error_code=code,
    )


class LogServer:
    """A few daemon threads serving `LogJob`s; `publish` sends one encoded message."""

    def __init__(
        self,
        node_id: str,
        publish: Publish,
        *,
        threads: int = DEFAULT_READERS,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self._publish = publish
        self.size = max(1, threads)
        self.max_pending = max_pending
        self._clock = clock
        self._jobs: queue.SimpleQueue[LogJob | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False
        self.served = 0
        self.expired = 0

    def send(self, chunk: LogsChunk) -> None:
        """Publish one chunk (QoS 0; dropped if the connection is down)."""
        self._publish(encode(LogsChunkMessage(node_id=self.node_id, payload=chunk)))

    def submit(self, job: LogJob) -> bool:
        """Queue a read; False when `max_pending` reads are already waiting or running."""
        with self._lock:
            if self._closed or self._pending >= self.max_pending:
                return False
            self._pending += 1
            if self._pending > len(self._threads) and len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._work, name=f"logs-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._jobs.put(job)
        return True

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self.serve(job)
            except Exception:  # never let one read end the thread
                log.exception("serving logs of %s failed", job.message.payload.instance_id)
            finally:
                with self._lock:
                    self._pending -= 1

    def serve(self, job: LogJob) -> None:
        """Read and answer one request (on a server thread, or inline in tests)."""
        message = job.message
        request = message.payload
        if self._clock() > job.deadline:
            self.expired += 1
            log.info("logs request %s for %s expired unanswered", message.id, request.instance_id)
            return
        try:
            read = job.runtime.read_logs(
                request.instance_id,
                job.handle,
                tail=request.tail,
                cursor=request.cursor,
                max_bytes=request.max_bytes,
            )
        except BadCursor as exc:
            self.send(
                error_chunk(message.id, request.instance_id, "bad_cursor", f"invalid cursor: {exc}")
            )
            return
        except RuntimeFailure as exc:
            self.send(error_chunk(message.id, request.instance_id, "runtime", exc.reason))
            return
        except Exception as exc:
            log.exception("reading the logs of %s failed", request.instance_id)
            why = f"reading logs failed: {exc}"
            self.send(error_chunk(message.id, request.instance_id, "runtime", why))
            return
        chunks = build_chunks(
            read,
            request_id=message.id,
            instance_id=request.instance_id,
            start_cursor=request.cursor or "",
            task=job.task,
        )
        for chunk in chunks:
            self.send(chunk)
        self.served += 1

    def close(self) -> None:
        """Let the threads end (reads in progress are abandoned: daemon threads)."""
        with self._lock:
            self._closed = True
            count = len(self._threads)
        for _ in range(count):
            self._jobs.put(None)
