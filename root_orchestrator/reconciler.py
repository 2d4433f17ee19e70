"""The root's reconcile loop: liveness, replica diffing, terminations and placements.

Level-triggered: every pass looks at the whole state and closes the gaps, so a lost
message or a crash never leaves things wrong for longer than one period. A pass runs
every `reconcile_interval` seconds and at once when the service signals new work
(a job submitted or scaled, a cluster report with more capacity, a registration).
Every pass checks liveness and takes the placement and termination work from all
instances; the replica sweep over every job runs once per interval (the service
already re-diffs each job it changes, so a kicked pass need not redo them all).

Calls to clusters are pipelined: a pass starts each placement (and each DELETE) as
an independent task and does not wait for it, so a slow cluster never holds up the
next pass, nor the placement of a job another cluster can take. At most
`max_parallel` placement calls (and as many DELETEs) are in flight at once; work
beyond that waits for the next pass, which a finishing call starts (deferred work
is taken highest priority first, like all placement work). An instance with a call
in flight is left out of every pass until that call has ended, so no instance is
ever sent twice at once, nor placed and deleted at once. `stop()` cancels the calls
in flight and waits for them; a placement cut short stays SCHEDULED in the store
and is resumed by the next root.

Many placements at once (a pass with at least `BATCH_MIN` of them: a cluster lost,
a large job) go out in batches: one task per `BATCH_MAX` instances decides them all
in one service call, sends each cluster its share in one
``POST /api/v1/instances/batch`` (one call per instance to a cluster without that
route) and records the answers in one service call; an instance a cluster refused
is placed again by the next pass (the refusing cluster left out). A batch task takes
one of the `max_parallel` slots.

State changes go through the service's async methods: they run on this event loop
(memory only, under the service's lock) and await the store writer's commit without
blocking the loop; pruning, which deletes from the store, runs in a worker thread.
Calls to clusters happen here, in the event loop, never under the service's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, TypeVar

import anyio.to_thread

from root_orchestrator.cluster_client import BatchUnsupported, ClusterClient, ClusterUnavailable
from root_orchestrator.metrics import RootMetrics
from root_orchestrator.service import PRUNE_BATCH, PlacementStep, RootService, TerminateStep
from schemas.cluster import PlaceInstanceResponse
from schemas.root_api import ClusterRejection

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

#: Most clusters one instance is sent to in one attempt (each refusal moves on).
MAX_TRIES_PER_INSTANCE = 16
#: How long `stop()` waits for cancelled calls to wind down (their store writes end).
STOP_TIMEOUT_S = 10.0
#: A pass with at least this many placements to start sends them in batches.
BATCH_MIN = 8
#: Most instances in one batch task (and in one cluster call).
BATCH_MAX = 25
#: Most batch tasks in flight at once. The root's decision costs grow with the
#: reservations not yet confirmed by a cluster report (`placement.reserve`), so the
#: batches are kept small and few, letting reports in between.
MAX_BATCHES = 2

Answer = tuple[PlacementStep, PlaceInstanceResponse | None, str | None]


class Reconciler:
    """Runs reconcile passes, and the cluster calls they start, in one event loop."""

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
        self._max_parallel = max(1, max_parallel)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: placement calls in flight, by instance id
        self._placing: dict[str, asyncio.Task[None]] = {}
        #: placement batch tasks in flight
        self._batches = 0
        #: DELETE calls in flight, by (cluster id, instance id)
        self._terminating: dict[tuple[str, str], asyncio.Task[None]] = {}
        # DELETEs that ended while a pass was reading its work: that work may predate
        # their answers, so the pass must not send them again (see run_once).
        self._terminated_during_pass: set[tuple[str, str]] = set()
        #: deletes the events beyond the retention, apart from the passes
        self._pruning: asyncio.Task[None] | None = None
        #: a pass left work for later (no slot free, or its instance was busy with
        #: another call): the next call to end kicks a pass
        self._backlog = False
        #: when the latest full replica sweep started (perf_counter)
        self._last_sweep = -math.inf
        #: passes run so far
        self.passes = 0
        #: placements the latest pass left for later (no slot free, or a DELETE of the
        #: instance in flight)
        self.deferred = 0
        #: seconds until a rollout needs another look (from the latest pass)
        self._wake_in: float | None = None

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        """Run a service method in a worker thread.

        A thread cannot be interrupted: if the caller is cancelled (shutdown), this
        still waits for the method to return before re-raising, so the service's
        store writes complete and the store is never closed under them.
        """
        future: asyncio.Future[T] = asyncio.ensure_future(anyio.to_thread.run_sync(fn, *args))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({future})
            raise

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

    @property
    def in_flight(self) -> int:
        """Cluster call tasks (placements, placement batches and DELETEs) started and
        not yet ended."""
        return self._placement_tasks() + len(self._terminating)

    def _placement_tasks(self) -> int:
        return len(set(self._placing.values()))

    async def stop(self) -> None:
        """Stop the loop, cancel the cluster calls in flight and wait for all to end.

        A placement cut short stays SCHEDULED in the store; the next root sends it
        again to the same cluster (placement is idempotent by instance id there).
        """
        self._stopping = True
        tasks: list[asyncio.Task[None]] = []
        if self._task is not None:
            tasks.append(self._task)
        if self._pruning is not None:
            tasks.append(self._pruning)
        tasks += list(set(self._placing.values())) + list(self._terminating.values())
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        if pending:
            log.warning("%d reconciler tasks did not end within %gs", len(pending), STOP_TIMEOUT_S)

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
            timeout = self._interval
            if self._wake_in is not None:
                # a rollout's health window or deadline ends, or a silent cluster
                # crosses a liveness threshold, before the next period
                timeout = min(timeout, self._wake_in + 0.05)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # ------------------------------------------------------------------ one pass

    async def run_once(self) -> None:
        """One pass: liveness, replicas, terminations, placements, pruning.

        The state is read in one service call (`RootService.pass_work`). The replica
        sweep over every job and the pruning of old events run at most once per
        interval; the passes a kick starts in between skip them. The pass starts the
        cluster calls it finds work for and returns without waiting for them (see the
        module docstring).
        """
        started = time.perf_counter()
        service = self._service
        # The full replica sweep is the safety net: the service re-diffs every job it
        # changes as it changes it, so the kicked passes in between skip it.
        sweep = started - self._last_sweep >= self._interval
        if sweep:
            self._last_sweep = started
        # A DELETE that ends while pass_work_async runs (it may await durability) is
        # in this pass's work if the work was read before its answer was applied:
        # such steps are skipped, the next pass reads the answer.
        self._terminated_during_pass.clear()
        work = await service.pass_work_async(sweep=sweep)
        self._wake_in = work.wake_in
        ended, self._terminated_during_pass = self._terminated_during_pass, set()
        self._start_terminations(
            [s for s in work.terminations if (s.cluster_id, s.instance_id) not in ended]
        )
        self._start_placements(work.placements)
        if sweep and (self._pruning is None or self._pruning.done()):
            self._pruning = asyncio.create_task(self._prune(), name="root-prune-events")
        self.passes += 1
        self._metrics.reconcile_seconds.observe(time.perf_counter() - started)

    def _start_placements(self, work: list[str]) -> None:
        """Start a placement task per instance (priority order) while slots are free.

        Left for a later pass: instances whose own placement is still running, and
        (deferred) those for which no slot is free or whose DELETE is in flight; a
        deferred one makes the next finishing call kick a pass.
        """
        deleting = {iid for _cluster, iid in self._terminating}
        deferred = 0
        ready: list[str] = []
        for instance_id in work:
            if instance_id in self._placing:
                continue
            if instance_id in deleting:
                deferred += 1
                continue
            ready.append(instance_id)
        if len(ready) >= BATCH_MIN:
            for at in range(0, len(ready), BATCH_MAX):
                chunk = ready[at : at + BATCH_MAX]
                if self._placement_tasks() >= self._max_parallel or self._batches >= MAX_BATCHES:
                    deferred += len(chunk)
                    continue
                self._spawn_batch(chunk)
            ready = []
        for instance_id in ready:
            if self._placement_tasks() >= self._max_parallel:
                deferred += 1
                continue
            self._spawn(self._placing, instance_id, self._place(instance_id), "place")
        self.deferred = deferred
        if deferred:
            self._backlog = True

    def _start_terminations(self, steps: list[TerminateStep]) -> None:
        """Start a DELETE task per step while slots are free (same rules as placements:
        an instance never has a placement and a DELETE in flight at once)."""
        for step in steps:
            key = (step.cluster_id, step.instance_id)
            if key in self._terminating:
                continue
            if step.instance_id in self._placing or len(self._terminating) >= self._max_parallel:
                self._backlog = True
                continue
            self._spawn(self._terminating, key, self._terminate(step), "terminate")
            self._terminating[key].add_done_callback(self._ended_callback(key))

    def _ended_callback(self, key: tuple[str, str]) -> Callable[[asyncio.Task[None]], None]:
        """Note that the DELETE `key` ended (for the pass that may be reading work)."""

        def ended(_task: asyncio.Task[None]) -> None:
            self._terminated_during_pass.add(key)

        return ended

    def _spawn(
        self,
        registry: dict[K, asyncio.Task[None]],
        key: K,
        call: Coroutine[Any, Any, None],
        what: str,
    ) -> None:
        task = asyncio.create_task(call, name=f"root-{what}-{key}")
        registry[key] = task

        def done(finished: asyncio.Task[None]) -> None:
            if registry.get(key) is finished:
                del registry[key]
            if not finished.cancelled() and finished.exception() is not None:
                log.error("%s %s failed", what, key, exc_info=finished.exception())
            if self._backlog:  # a slot is free again: let a pass take the next work
                self._backlog = False
                self.kick()

        task.add_done_callback(done)

    def _spawn_batch(self, instance_ids: list[str]) -> None:
        """One task placing several instances (each id maps to it while it runs)."""
        task = asyncio.create_task(
            self._place_many(instance_ids), name=f"root-place-batch-{instance_ids[0]}"
        )
        for instance_id in instance_ids:
            self._placing[instance_id] = task
        self._batches += 1

        def done(finished: asyncio.Task[None]) -> None:
            self._batches -= 1
            for instance_id in instance_ids:
                if self._placing.get(instance_id) is finished:
                    del self._placing[instance_id]
            if not finished.cancelled() and finished.exception() is not None:
                log.error("placement batch failed", exc_info=finished.exception())
            if self._backlog:
                self._backlog = False
                self.kick()

        task.add_done_callback(done)

    async def _prune(self) -> None:
        """Delete old events a batch at a time until the log is within its retention."""
        try:
            while await self._call(self._service.prune_events) >= PRUNE_BATCH:
                pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pruning events failed")

    # ------------------------------------------------------------------ cluster calls

    async def _place(self, instance_id: str) -> None:
        """Place one instance: choose, ask the cluster, move on to the next on refusal."""
        rejections: dict[str, ClusterRejection] = {}
        for _ in range(MAX_TRIES_PER_INSTANCE):
            step = await self._service.begin_placement_async(instance_id, dict(rejections))
            if step is None:
                return
            _step, response, error = await self._place_call(step)
            result, rejection = await self._service.finish_placement_async(step, response, error)
            if result != "rejected" or rejection is None:
                return
            rejections[step.cluster_id] = rejection

    async def _place_many(self, instance_ids: list[str]) -> None:
        """Place several instances: decide all, one call per cluster, record all."""
        steps = await self._service.begin_placements_async(instance_ids)
        if not steps:
            return
        groups: dict[str, list[PlacementStep]] = {}
        for step in steps:
            groups.setdefault(step.cluster_id, []).append(step)
        answers = await asyncio.gather(*(self._send_batch(group) for group in groups.values()))
        outcomes = await self._service.finish_placements_async(
            [a for group in answers for a in group]
        )
        if any(result == "rejected" for result, _rejection in outcomes):
            self.kick()  # the next pass places them elsewhere

    async def _send_batch(self, group: list[PlacementStep]) -> list[Answer]:
        """One cluster's share of a batch in one call (or one call each, for a cluster
        without the batch route); an error becomes every instance's answer."""
        first = group[0]
        started = time.perf_counter()
        out: list[Answer]
        try:
            responses = await self._client.place_batch(
                first.url, first.token, [step.request for step in group]
            )
        except BatchUnsupported:
            return list(await asyncio.gather(*(self._place_call(step) for step in group)))
        except ClusterUnavailable as exc:
            outcome, out = "error", [(step, None, str(exc)) for step in group]
        except Exception as exc:  # never leave instances marked in flight
            error = f"{type(exc).__name__}: {exc}"
            outcome, out = "error", [(step, None, error) for step in group]
        else:
            outcome = "ok"
            out = [(step, response, None) for step, response in zip(group, responses, strict=True)]
        self._metrics.cluster_calls.inc("place_batch", outcome)
        self._metrics.cluster_call_seconds.observe(time.perf_counter() - started, "place_batch")
        return out

    async def _place_call(self, step: PlacementStep) -> Answer:
        """One placement call; its answer or the error that replaced it."""
        started = time.perf_counter()
        try:
            response = await self._client.place(step.url, step.token, step.request)
            error = None
            outcome = "accepted" if response.accepted else "rejected"
        except ClusterUnavailable as exc:
            response, error, outcome = None, str(exc), "error"
        except Exception as exc:  # never leave an instance marked in flight
            response, error, outcome = None, f"{type(exc).__name__}: {exc}", "error"
        self._metrics.cluster_calls.inc("place", outcome)
        self._metrics.cluster_call_seconds.observe(time.perf_counter() - started, "place")
        return step, response, error

    async def _terminate(self, step: TerminateStep) -> None:
        """DELETE one instance on its cluster and record the answer."""
        started = time.perf_counter()
        error: str | None = None
        try:
            await self._client.terminate(step.url, step.token, step.instance_id)
        except ClusterUnavailable as exc:
            ok, error = False, str(exc)
        except Exception as exc:  # recorded as a failure; the next pass tries again
            ok, error = False, f"{type(exc).__name__}: {exc}"
        else:
            ok = True
        self._metrics.cluster_calls.inc("terminate", "ok" if ok else "error")
        self._metrics.cluster_call_seconds.observe(time.perf_counter() - started, "terminate")
        await self._service.finish_termination_async(step, ok, error)
