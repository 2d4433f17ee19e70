"""The root's reconcile loop: liveness, replica diffing, terminations and placements.

Level-triggered: every pass looks at the whole state and closes the gaps, so a lost
message or a crash never leaves things wrong for longer than one period. A pass runs
every `reconcile_interval` seconds and at once when the service signals new work
(a job submitted or scaled, a cluster report with more capacity, a registration).

State changes go through the service (in worker threads: the store is blocking);
calls to clusters happen here, in the event loop, never under the service's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio.to_thread

from root_orchestrator.cluster_client import ClusterClient, ClusterUnavailable
from root_orchestrator.metrics import RootMetrics
from root_orchestrator.models import ClusterRejection
from root_orchestrator.service import PlacementStep, RootService, TerminateStep

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Most clusters one instance is sent to in one attempt (each refusal moves on).
MAX_TRIES_PER_INSTANCE = 16


class Reconciler:
    """Runs reconcile passes in the event loop it is started in."""

    def __init__(
        self,
        service: RootService,
        client: ClusterClient,
        metrics: RootMetrics,
        *,
        interval: float,
        max_parallel: int = 32,
    ) -> None:
        self._service = service
        self._client = client
        self._metrics = metrics
        self._interval = interval
        self._max_parallel = max_parallel
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.passes = 0

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(fn, *args)

    # ------------------------------------------------------------------ loop

    def start(self) -> None:
        """Start the background loop in the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._service.add_listener(self.kick)
        self._task = asyncio.create_task(self._run(), name="root-reconciler")

    def kick(self) -> None:
        """Ask for a pass as soon as possible (callable from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or self._stopping:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            loop.call_soon_threadsafe(wake.set)

    async def stop(self) -> None:
        """Stop the loop and wait for the current pass to end."""
        self._stopping = True
        task = self._task
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            self._wake.clear()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)

    # ------------------------------------------------------------------ one pass

    async def run_once(self) -> None:
        """One full pass: liveness, replicas, terminations, placements, pruning."""
        started = time.perf_counter()
        service = self._service
        await self._call(service.check_liveness)
        await self._call(service.reconcile_all)
        steps = await self._call(service.termination_work)
        if steps:
            await self._bounded([self._terminate(s) for s in steps])
        work = await self._call(service.placement_work)
        if work:
            await self._bounded([self._place(iid) for iid in work])
            # Placements may have left terminations (an instance deleted while its
            # placement was in flight): send them now rather than next period.
            steps = await self._call(service.termination_work)
            if steps:
                await self._bounded([self._terminate(s) for s in steps])
        await self._call(service.prune_events)
        self.passes += 1
        self._metrics.reconcile_seconds.observe(time.perf_counter() - started)

    async def _bounded(self, jobs: list[Awaitable[None]]) -> None:
        semaphore = asyncio.Semaphore(self._max_parallel)

        async def run(job: Awaitable[None]) -> None:
            async with semaphore:
                try:
                    await job
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("reconcile step failed")

        await asyncio.gather(*(run(j) for j in jobs))

    async def _place(self, instance_id: str) -> None:
        """Place one instance: choose, ask the cluster, move on to the next on refusal."""
        rejections: dict[str, ClusterRejection] = {}
        for _ in range(MAX_TRIES_PER_INSTANCE):
            step: PlacementStep | None = await self._call(
                self._service.begin_placement, instance_id, dict(rejections)
            )
            if step is None:
                return
            try:
                response = await self._client.place(step.url, step.token, step.request)
                error = None
                outcome = "accepted" if response.accepted else "rejected"
            except ClusterUnavailable as exc:
                response, error, outcome = None, str(exc), "error"
            except Exception as exc:  # never leave an instance marked in flight
                response, error, outcome = None, f"{type(exc).__name__}: {exc}", "error"
            self._metrics.cluster_calls.inc("place", outcome)
            result, rejection = await self._call(
                self._service.finish_placement, step, response, error
            )
            if result != "rejected" or rejection is None:
                return
            rejections[step.cluster_id] = rejection

    async def _terminate(self, step: TerminateStep) -> None:
        try:
            await self._client.terminate(step.url, step.token, step.instance_id)
        except ClusterUnavailable as exc:
            self._metrics.cluster_calls.inc("terminate", "error")
            await self._call(self._service.finish_termination, step, False, str(exc))
            return
        self._metrics.cluster_calls.inc("terminate", "ok")
        await self._call(self._service.finish_termination, step, True, None)
