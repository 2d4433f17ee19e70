"""Fan-out of new events to live streams (`GET /api/v1/events/stream`).

The service publishes from whatever thread made the change; each subscriber lives
in an event loop and is woken with `call_soon_threadsafe`. A subscriber that falls
more than `max_pending` events behind is marked overflowed and its stream ends: the
client reconnects with its last `seq` and catches up from the store, so nothing is
lost, and a slow client can never make the root buffer without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import Any

__all__ = ["EventBus", "Subscription"]


class Subscription:
    """One live stream's queue of events (dicts with a `seq`)."""

    def __init__(self, bus: EventBus, loop: asyncio.AbstractEventLoop, max_pending: int) -> None:
        self._bus = bus
        self._loop = loop
        self._max = max_pending
        self._items: deque[dict[str, Any]] = deque()
        self._ready = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def _push(self, item: dict[str, Any] | None) -> None:
        """Runs in the subscriber's loop."""
        if item is None:
            self.closed = True
        elif len(self._items) >= self._max:
            self.overflowed = True
        else:
            self._items.append(item)
        self._ready.set()

    def _push_many(self, items: list[dict[str, Any]]) -> None:
        """Runs in the subscriber's loop: several events, in order."""
        room = self._max - len(self._items)
        if len(items) > room:
            self.overflowed = True
            items = items[: max(0, room)]
        self._items.extend(items)
        self._ready.set()

    def deliver_many(self, items: list[dict[str, Any]]) -> bool:
        """Hand several items over from any thread in one wake-up of the loop."""
        try:
            self._loop.call_soon_threadsafe(self._push_many, items)
        except RuntimeError:
            return False
        return True

    def deliver(self, item: dict[str, Any] | None) -> bool:
        """Hand an item over from any thread; False if the subscriber's loop is gone."""
        try:
            self._loop.call_soon_threadsafe(self._push, item)
        except RuntimeError:
            return False
        return True

    async def get(self, timeout: float) -> list[dict[str, Any]]:
        """Wait up to `timeout` seconds; return the events queued so far (maybe none)."""
        if not self._items and not self.closed and not self.overflowed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        self._ready.clear()
        items = list(self._items)
        self._items.clear()
        return items

    def close(self) -> None:
        """Stop receiving events."""
        self._bus.unsubscribe(self)


class EventBus:
    """Thread-safe publisher to any number of asyncio subscribers."""

    def __init__(self, max_pending: int = 10_000) -> None:
        self._max = max_pending
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._closed = False

    def subscribe(self) -> Subscription:
        """Register a subscriber in the running event loop."""
        sub = Subscription(self, asyncio.get_running_loop(), self._max)
        with self._lock:
            if self._closed:
                sub.closed = True
            else:
                self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a subscriber (idempotent)."""
        with self._lock:
            self._subs.discard(sub)

    def publish(self, item: dict[str, Any]) -> None:
        """Send one event to every subscriber."""
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            if not sub.deliver(item):
                self.unsubscribe(sub)

    def publish_many(self, items: list[dict[str, Any]]) -> None:
        """Send several events (in order) to every subscriber: one hand-over to each
        subscriber's loop for all of them."""
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            if not sub.deliver_many(items):
                self.unsubscribe(sub)

    @property
    def subscribers(self) -> int:
        """How many live streams there are."""
        with self._lock:
            return len(self._subs)

    def close(self) -> None:
        """End every stream (used at shutdown)."""
        with self._lock:
            self._closed = True
            subs = list(self._subs)
            self._subs.clear()
        for sub in subs:
            sub.deliver(None)
