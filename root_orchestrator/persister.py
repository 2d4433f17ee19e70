"""The root's store writer: write-behind with group commit, off the service lock.

`RootService` changes its in-memory state under its lock and hands each write to
this writer (`put`, `delete`, `event`): queueing is all that happens under the lock.
One background thread takes every write waiting at once, drops those a later write of
the same document among them replaces, and writes each run of puts with one
`Store.put_many` call (SQLite: one transaction, so one commit and one fsync for all
of them, however many API calls and reports queued them: group commit).

Wake-ups: while a caller `hold`s the writer (the service does for as long as it
holds its lock: `state.ServiceLock`), queueing does not wake the writer thread; the
end of the hold (`release`) does, once, so the writes of one service call are taken
(and committed) together, for one thread hand-off instead of one per write.
A thread that waits for durability wakes the writer first, so nothing queued is
ever left unsignalled.

Durability: every write gets a sequence number; `mark()` is the number of the latest
one queued and `wait(mark)` returns once everything up to it is written. An API call
that changed state takes its mark under the lock and waits *after* releasing it, so
it answers only once its writes are durable (nothing accepted is lost in a crash),
while other calls keep using the lock meanwhile and share the next commit.

Events reach the live streams (`EventBus`) only once they are durable, in seq order,
from this thread: a client never sees an event a crash could take back.

Waiting: `wait(mark)` blocks a thread; `wait_async(mark)` is the same wait for a
coroutine on an event loop, which it never blocks: the writer thread completes the
waiting futures of a commit with one `loop.call_soon_threadsafe` per loop. The
service's cheap calls run on the event loop this way (`RootService.*_async`),
without a worker-thread hand-off per call.

Reads: `get` sees writes not yet committed (they are kept in an overlay until they
are); code that queries the store (finds, counts) waits for `mark()` first.

A write that fails is retried (the store may be briefly unavailable), in order, with
a growing pause; a write the store refuses as invalid (a bug) is dropped with an
error logged and its waiters fail. Waiters give up after `timeout` with a
`StoreError` (the API answers 503); the write stays queued and lands when the store
is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from store import InvalidInput, Store, StoreError

__all__ = ["MAX_DOCS", "Persister", "ToDoc"]

log = logging.getLogger(__name__)

MAX_DOCS = 500
"""At most this many documents per `put_many` call (one transaction on SQLite)."""

MAX_TAKE = 5000
"""At most this many queued writes are taken (and coalesced) at once."""

RETRY_PAUSE_S = (0.05, 0.2, 1.0, 2.0)
"""Pauses between attempts at a write the store did not take (the last repeats)."""


class ToDoc(Protocol):
    """A record that converts itself to a store document (done on the writer thread)."""

    def to_doc(self) -> dict[str, Any]:
        """The store document."""
        ...


@dataclass(slots=True)
class _Op:
    seq: int
    kind: str  # "put" | "delete"
    collection: str
    id: str
    item: Mapping[str, Any] | ToDoc | None = None
    publish: bool = False  # an event: published once durable


def _doc(item: Mapping[str, Any] | ToDoc | None) -> dict[str, Any]:
    if item is None:
        return {}
    if isinstance(item, Mapping):
        return dict(item)
    return item.to_doc()


@dataclass(slots=True)
class _AsyncWaiter:
    mark: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


def _wake(futures: list[asyncio.Future[None]]) -> None:
    """Runs in the waiters' loop: complete every future still waiting."""
    for future in futures:
        if not future.done():
            future.set_result(None)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class Persister:
    """Write-behind store writer with group commit (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        publish: Callable[[dict[str, Any]], None] | None = None,
        on_commit: Callable[[int, int], None] | None = None,
        publish_many: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        """`publish` gets each event document once it is durable (in order), or
        `publish_many` the events of each commit at once (in order);
        `on_commit(documents, transactions)` is called after every batch (metrics)."""
        self._store = store
        self._publish = publish
        self._publish_many = publish_many
        self._on_commit = on_commit
        self._cond = threading.Condition()
        self._queue: list[_Op] = []
        self._seq = 0
        self._durable = 0
        #: writes queued and not yet committed, by (collection, id): the newest
        self._overlay: dict[tuple[str, str], _Op] = {}
        #: writes that failed for good (their waiters raise), by seq
        self._failed: dict[int, StoreError] = {}
        #: coroutines waiting for a mark (`wait_async`), completed by `_settle`
        self._async_waiters: list[_AsyncWaiter] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: a `hold` is on: queueing does not wake the writer (see the module docstring)
        self._held = False
        #: writes were queued during a hold and the writer not woken for them yet
        self._unsignalled = False
        #: the writer thread sleeps, waiting for writes
        self._idle = False
        self.batches = 0
        self.documents = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the writer thread (once)."""
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="root-store-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Write what is queued, then stop; False if that took longer than `timeout`."""
        with self._cond:
            thread = self._thread
            if thread is None:
                return True
            self._stopping = True
            self._cond.notify_all()
        thread.join(timeout)
        with self._cond:
            self._thread = None
            return not self._queue

    # ------------------------------------------------------------------ writes

    def put(self, collection: str, id: str, item: Mapping[str, Any] | ToDoc) -> int:
        """Queue an upsert of `item` (a document, or a record converted on the writer
        thread); returns its sequence number."""
        return self._add(_Op(0, "put", collection, id, item))

    def event(self, collection: str, doc: Mapping[str, Any]) -> int:
        """Queue an event document; it is published once durable."""
        return self._add(_Op(0, "put", collection, str(doc["_id"]), doc, publish=True))

    def delete(self, collection: str, id: str) -> int:
        """Queue a delete."""
        return self._add(_Op(0, "delete", collection, id))

    def _add(self, op: _Op) -> int:
        with self._cond:
            self._seq += 1
            op.seq = self._seq
            self._queue.append(op)
            self._overlay[(op.collection, op.id)] = op
            if self._held:
                self._unsignalled = True
            elif len(self._queue) == 1:
                self._cond.notify_all()
            if self._thread is None:
                # not started (a service used without its writer): write through
                self._write_now()
            return op.seq

    def _write_now(self) -> None:
        ops, self._queue = self._queue, []
        self._cond.release()
        try:
            self._write(ops)
        finally:
            self._cond.acquire()
        events, woken = self._settle(ops)
        self._cond.release()
        try:
            self._wake_async(woken)
            self._publish_all(events)
        finally:
            self._cond.acquire()

    def hold(self) -> None:
        """Queue without waking the writer until `release` (one holder at a time:
        the service calls this with its lock held)."""
        self._held = True

    def release(self) -> None:
        """End the hold; wake the writer if anything was queued during it."""
        self._held = False
        if self._unsignalled:
            with self._cond:
                self._signal()

    def _signal(self) -> None:
        """Wake the writer for writes queued unsignalled (lock held)."""
        if self._unsignalled:
            self._unsignalled = False
            if self._queue:
                self._cond.notify_all()

    # ------------------------------------------------------------------ durability

    def mark(self) -> int:
        """The sequence number of the latest write queued."""
        with self._cond:
            return self._seq

    @property
    def durable(self) -> int:
        """Every write up to this sequence number is in the store (or failed)."""
        with self._cond:
            return self._durable

    @property
    def idle(self) -> bool:
        """The writer thread is asleep, waiting to be woken for new writes (tests)."""
        with self._cond:
            return self._idle

    @property
    def backlog(self) -> int:
        """Writes queued and not yet committed."""
        with self._cond:
            return self._seq - self._durable

    def wait(self, mark: int, timeout: float = 30.0, *, since: int = 0) -> None:
        """Return once every write up to `mark` is durable.

        Raises `StoreError` if one of the writes after `since` (the caller's own)
        failed for good, or if they are not durable within `timeout` (they stay
        queued)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._signal()
            while self._durable < mark:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreError(
                        f"store writes not durable within {timeout:g}s "
                        f"({self._seq - self._durable} queued)"
                    )
                self._cond.wait(left)
            failed = [err for seq, err in self._failed.items() if since < seq <= mark]
        if failed:
            raise failed[0]

    async def wait_async(self, mark: int, timeout: float = 30.0, *, since: int = 0) -> None:
        """`wait` for a coroutine: the event loop runs on while the writes land.

        Same errors as `wait`. Cancelling the caller only stops the wait (the
        writes stay queued and land)."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._durable >= mark:
                self._raise_failed(since, mark)
                return
            self._signal()
            future: asyncio.Future[None] = loop.create_future()
            waiter = _AsyncWaiter(mark, loop, future)
            self._async_waiters.append(waiter)
        expiry = loop.call_later(timeout, _expire, future)
        try:
            await future
        except TimeoutError:
            with self._cond:
                queued = self._seq - self._durable
            raise StoreError(
                f"store writes not durable within {timeout:g}s ({queued} queued)"
            ) from None
        finally:
            expiry.cancel()
            if not future.done() or future.cancelled() or future.exception() is not None:
                with self._cond:
                    if waiter in self._async_waiters:
                        self._async_waiters.remove(waiter)
        with self._cond:
            self._raise_failed(since, mark)

    def _raise_failed(self, since: int, mark: int) -> None:
        """Raise the first failure of the writes in (since, mark] (lock held)."""
        for seq, err in self._failed.items():
            if since < seq <= mark:
                raise err

    def get(self, collection: str, id: str) -> dict[str, Any] | None:
        """The document as it will be once queued writes land (None if absent)."""
        with self._cond:
            op = self._overlay.get((collection, id))
        if op is not None:
            return None if op.kind == "delete" else {"_id": id, **_doc(op.item)}
        return self._store.get(collection, id)

    def pending(self, collection: str) -> list[tuple[str, dict[str, Any] | None]]:
        """The queued writes of a collection not yet committed: (id, the document it
        will hold, or None for a delete). For merging into a query of the store."""
        with self._cond:
            ops = [op for (coll, _id), op in self._overlay.items() if coll == collection]
        return [
            (op.id, None if op.kind == "delete" else {"_id": op.id, **_doc(op.item)}) for op in ops
        ]

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                if not self._queue and self._stopping:
                    return
                ops = self._queue[:MAX_TAKE]
                del self._queue[:MAX_TAKE]
            self._write(ops)
            with self._cond:
                events, woken = self._settle(ops)
            self._wake_async(woken)
            self._publish_all(events)

    def _publish_all(self, events: list[_Op]) -> None:
        """Hand durable events to `publish`, in order (only this thread publishes)."""
        if self._publish_many is not None:
            if events:
                try:
                    self._publish_many([_doc(op.item) for op in events])
                except Exception:  # a subscriber must not stop the writer
                    log.exception("publishing events failed")
            return
        if self._publish is None:
            return
        for op in events:
            try:
                self._publish(_doc(op.item))
            except Exception:  # a subscriber must not stop the writer
                log.exception("publishing an event failed")

    def _settle(self, ops: list[_Op]) -> tuple[list[_Op], list[_AsyncWaiter]]:
        """After `ops` are written (lock held): advance the durable mark, drop them
        from the overlay, wake waiting threads; returns the events to publish and
        the coroutines to wake (`_wake_async`, after releasing the lock)."""
        for op in ops:
            key = (op.collection, op.id)
            if self._overlay.get(key) is op:
                del self._overlay[key]
        self._durable = max(self._durable, ops[-1].seq)
        if len(self._failed) > 1000:  # waiters older than these have long given up
            for seq in sorted(self._failed)[:-1000]:
                del self._failed[seq]
        self._cond.notify_all()
        woken: list[_AsyncWaiter] = []
        if self._async_waiters:
            waiting: list[_AsyncWaiter] = []
            for waiter in self._async_waiters:
                (woken if waiter.mark <= self._durable else waiting).append(waiter)
            self._async_waiters = waiting
        return [op for op in ops if op.publish and op.seq not in self._failed], woken

    @staticmethod
    def _wake_async(woken: list[_AsyncWaiter]) -> None:
        """Complete the futures of `woken`: one call into each of their loops."""
        if not woken:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for waiter in woken:
            by_loop.setdefault(waiter.loop, []).append(waiter.future)
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                loop.call_soon_threadsafe(_wake, futures)

    def _write(self, ops: list[_Op]) -> None:
        """Write `ops` in order: coalesced, each run of puts in `put_many` calls."""
        last: dict[tuple[str, str], int] = {}
        for i, op in enumerate(ops):
            if op.kind == "put" and not op.publish:
                last[(op.collection, op.id)] = i
        run: list[tuple[_Op, dict[str, Any]]] = []
        transactions = documents = 0
        for i, op in enumerate(ops):
            if op.kind == "put":
                key = (op.collection, op.id)
                if not op.publish and last.get(key) != i:
                    continue  # a later write among these replaces it
                try:
                    doc = {"_id": op.id, **_doc(op.item)}
                except Exception as exc:  # a record that cannot be converted: a bug
                    self._fail(op, StoreError(f"cannot convert {op.collection}/{op.id}: {exc}"))
                    continue
                run.append((op, doc))
                if len(run) >= MAX_DOCS:
                    transactions += self._put_run(run)
                    documents += len(run)
                    run = []
                continue
            if run:
                transactions += self._put_run(run)
                documents += len(run)
                run = []
            # a delete ends a run (a later put of the same id comes after it)
            self._attempt(op, functools.partial(self._store.delete, op.collection, op.id))
            transactions += 1
        if run:
            transactions += self._put_run(run)
            documents += len(run)
        self.batches += 1
        self.documents += documents
        if self._on_commit is not None:
            self._on_commit(documents, transactions)

    def _put_run(self, run: list[tuple[_Op, dict[str, Any]]]) -> int:
        """One `put_many` for the run; if it fails, each write alone (so a bad one
        fails alone). Returns the number of store calls made."""
        try:
            self._store.put_many([(op.collection, doc) for op, doc in run])
            return 1
        except Exception:
            log.warning("a batch of %d store writes failed; writing them one by one", len(run))
        for op, doc in run:
            self._attempt(op, functools.partial(self._store.put, op.collection, doc))
        return len(run)

    def _attempt(self, op: _Op, call: Callable[[], object]) -> None:
        """Make one write, retrying while the store is unavailable."""
        for attempt in range(10**9):
            try:
                call()
                return
            except InvalidInput as exc:  # a bug: retrying cannot help
                log.error("store refused %s of %s/%s: %s", op.kind, op.collection, op.id, exc)
                self._fail(op, exc)
                return
            except Exception as exc:
                error = exc if isinstance(exc, StoreError) else StoreError(str(exc))
                if attempt == 0:
                    log.error(
                        "store write %s/%s failed (%s); retrying", op.collection, op.id, error
                    )
                with self._cond:
                    if self._stopping and attempt >= len(RETRY_PAUSE_S):
                        self._failed[op.seq] = error
                        return
                time.sleep(RETRY_PAUSE_S[min(attempt, len(RETRY_PAUSE_S) - 1)])

    def _fail(self, op: _Op, error: StoreError) -> None:
        with self._cond:
            self._failed[op.seq] = error
