"""The one polling helper of the test suite: wait for a condition with a deadline.

Tests never sleep a fixed time; they poll a predicate until it returns something
truthy (which is returned) and fail with what they waited for, the last value seen
and, optionally, context such as log tails.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from node_engine.runtimes.base import TaskHandle, TaskObservation, TaskRuntime

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not hold before its deadline."""


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 15.0,
    what: str = "",
    *,
    interval: float = 0.05,
    context: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout`.

    An `AssertionError` or `httpx.HTTPError` raised by the predicate counts as "not yet"
    (the last one is shown on timeout), so asserting predicates and services that are
    still starting can be polled; `context()` adds text (logs) to the failure.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except (AssertionError, httpx.HTTPError) as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            extra = ""
            if context is not None:
                with contextlib.suppress(Exception):
                    extra = "\n" + context()
            raise WaitTimeout(
                f"timed out after {timeout}s waiting for {what or predicate}; last: {last!r}{extra}"
            )
        time.sleep(interval)


def wait_terminal(rt: TaskRuntime, h: TaskHandle, timeout: float = 10.0) -> TaskObservation:
    """Poll a runtime's `status()` until the task has finished; the final observation."""

    def finished() -> TaskObservation | None:
        obs = rt.status(h)
        return obs if obs.state.terminal else None

    return wait_for(finished, timeout, f"task {h.instance_id} to finish", interval=0.02)
