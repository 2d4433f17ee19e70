"""A single writer thread between the core loop and the store.

The core loop keeps the authoritative state in memory and must never wait on disk
(an fsync on a Raspberry Pi SD card takes milliseconds to tens of milliseconds). It
hands every write to this thread, which applies them in order. It takes every write
waiting at once and drops those that a later write of the same document among them
replaces (`coalesce`): the store then holds the newest version sooner, never an older
one after a newer. Writes that the caller must know are durable (a join, before the
credentials go out) carry a `concurrent.futures.Future` that completes after the write.

Only this thread writes; readers (startup load, event queries) may read the store
directly, since the store is thread-safe. Consecutive puts among the writes taken
together are written with one `Store.put_many` call (up to `MAX_DOCS` documents): on SQLite one
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

__all__ = ["MAX_BATCH", "MAX_DOCS", "Persister", "coalesce"]

log = logging.getLogger(__name__)

MAX_BATCH = 1000
"""At most this many queued writes are taken (and coalesced) at once."""

MAX_DOCS = 500
"""At most this many documents per store call (one transaction on SQLite)."""


@dataclass(slots=True)
class _Op:
    kind: str  # "put" | "delete" | "flush"
    collection: str = ""
    docs: Sequence[Mapping[str, Any]] = ()
    id: str = ""
    done: Future[None] | None = field(default=None)


def coalesce(batch: list[_Op], metrics: Metrics | None = None) -> list[_Op]:
    """Drop the writes of a batch that a later write of the same document in the same
    batch replaces (the core often changes an instance twice before its first write
    lands). Order is kept; nothing is dropped across an operation that waits for its
    write (a `flush`, a `put(wait=True)`), so a flush still covers every earlier write."""
    out: list[_Op] = []
    segment: list[_Op] = []
    dropped = 0

    def close_segment() -> None:
        nonlocal dropped
        last: dict[tuple[str, str], int] = {}
        for i, op in enumerate(segment):
            key = _single_key(op)
            if key is not None:
                last[key] = i
        for i, op in enumerate(segment):
            key = _single_key(op)
            if key is not None and last[key] != i:
                dropped += 1
                continue
            out.append(op)
        segment.clear()

    for op in batch:
        if op.done is not None:
            close_segment()
            out.append(op)
        else:
            segment.append(op)
    close_segment()
    if dropped and metrics is not None:
        metrics.inc("edge_cluster_store_writes_coalesced_total", value=dropped)
    return out


def _single_key(op: _Op) -> tuple[str, str] | None:
    """The document one put or delete writes (None for batches and flushes)."""
    if op.kind == "delete":
        return (op.collection, op.id)
    if op.kind == "put" and len(op.docs) == 1:
        doc_id = op.docs[0].get("_id")
        return (op.collection, str(doc_id)) if doc_id is not None else None
    return None


class Persister:
    """Apply store writes in order on one background thread (queued writes are taken
    together and a document written twice in them is written once: `coalesce`)."""

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
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._write(coalesce(batch, self._metrics))
            if stop:
                return

    def _write(self, ops: list[_Op]) -> None:
        """Apply `ops` in order; consecutive puts go to the store in one `put_many` call
        of at most `MAX_DOCS` documents (a flush or a delete ends a run)."""
        run: list[_Op] = []
        size = 0
        for op in ops:
            if op.kind == "put":
                if run and size + len(op.docs) > MAX_DOCS:
                    self._put_batch(run)
                    run, size = [], 0
                run.append(op)
                size += len(op.docs)
                continue
            if run:
                self._put_batch(run)
                run, size = [], 0
            self._apply(op)
        if run:
            self._put_batch(run)

    def _put_batch(self, batch: list[_Op]) -> None:
        """Write a run of puts in one store call; on failure, one by one (so that one
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
