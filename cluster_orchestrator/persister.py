"""A single writer thread between the core loop and the store.

The core loop keeps the authoritative state in memory and must never wait on disk
(an fsync on a Raspberry Pi SD card takes milliseconds to tens of milliseconds). It
hands every write to this thread, which applies them in order. Writes that the
caller must know are durable (a join, before the credentials go out) carry a
`concurrent.futures.Future` that completes after the write.

Only this thread writes; readers (startup load, event queries) may read the store
directly, since the store is thread-safe. Consecutive puts waiting in the queue are
written with one `Store.put_many` call (up to `MAX_BATCH` documents): on SQLite one
transaction, so one commit and one fsync for all of them instead of one each; a
future completes once its batch is committed. A failed batch is retried one write at
a time, so a bad document fails alone.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from cluster_orchestrator.metrics import Metrics
from store import Store, StoreError

__all__ = ["MAX_BATCH", "Persister"]

log = logging.getLogger(__name__)

#: At most this many documents per store call (one transaction on SQLite).
MAX_BATCH = 500


@dataclass(slots=True)
class _Op:
    kind: str  # "put" | "delete" | "flush"
    collection: str = ""
    docs: Sequence[Mapping[str, Any]] = ()
    id: str = ""
    done: Future[None] | None = field(default=None)


class Persister:
    """Apply store writes in order on one background thread."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._queue: queue.Queue[_Op | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="persister", daemon=True)
        self._started = False

    def start(self) -> None:
        """Start the writer thread."""
        if not self._started:
            self._started = True
            self._thread.start()

    def put(
        self, collection: str, doc: Mapping[str, Any], *, wait: bool = False
    ) -> Future[None] | None:
        """Queue an upsert; with `wait`, return a future done once it is written."""
        done: Future[None] | None = Future() if wait else None
        self._queue.put(_Op("put", collection, (doc,), done=done))
        return done

    def put_many(self, collection: str, docs: Sequence[Mapping[str, Any]]) -> None:
        """Queue several upserts (a status snapshot batch)."""
        if docs:
            self._queue.put(_Op("put", collection, docs))

    def delete(self, collection: str, id: str) -> None:
        """Queue a delete."""
        self._queue.put(_Op("delete", collection, id=id))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write queued so far is applied; False on timeout."""
        if not self._started:
            return True
        done: Future[None] = Future()
        self._queue.put(_Op("flush", done=done))
        try:
            done.result(timeout)
        except TimeoutError:
            return False
        return True

    @property
    def backlog(self) -> int:
        """Writes waiting."""
        return self._queue.qsize()

    def stop(self, timeout: float = 10.0) -> None:
        """Apply what is queued, then stop."""
        if not self._started:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._started = False

    def _run(self) -> None:
        carried = False  # `op` was taken from the queue already, while gathering a batch
        op: _Op | None = None
        while True:
            if not carried:
                op = self._queue.get()
            carried = False
            if op is None:
                return
            if op.kind != "put":
                self._apply(op)
                continue
            # consecutive puts go to the store together: one transaction, one fsync
            batch = [op]
            size = len(op.docs)
            while size < MAX_BATCH:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is None or following.kind != "put":
                    op, carried = following, True
                    break
                batch.append(following)
                size += len(following.docs)
            self._put_batch(batch)

    def _put_batch(self, batch: list[_Op]) -> None:
        """Write a batch of puts in one store call; on failure, one by one (so that one
        bad write fails alone, with its own error)."""
        try:
            self._store.put_many([(op.collection, doc) for op in batch for doc in op.docs])
        except Exception:
            for op in batch:
                self._apply(op)
            return
        for op in batch:
            self._done(op)

    def _done(self, op: _Op) -> None:
        if op.kind == "put" and op.collection == "node_status":
            self._metrics.inc("edge_cluster_status_snapshots_total", value=len(op.docs))
        if op.done is not None:
            op.done.set_result(None)

    def _apply(self, op: _Op) -> None:
        try:
            if op.kind == "put":
                for doc in op.docs:
                    self._store.put(op.collection, doc)
            elif op.kind == "delete":
                self._store.delete(op.collection, op.id)
        except StoreError as exc:
            self._metrics.inc("edge_cluster_store_errors_total")
            log.error("store write to %s failed: %s", op.collection, exc)
            if op.done is not None:
                op.done.set_exception(exc)
            return
        except Exception as exc:  # a store backend bug must not kill the writer
            self._metrics.inc("edge_cluster_store_errors_total")
            log.exception("unexpected store error on %s", op.collection)
            if op.done is not None:
                op.done.set_exception(exc)
            return
        self._done(op)
