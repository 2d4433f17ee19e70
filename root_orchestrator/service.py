"""The root's service facade: every change to jobs, instances and clusters goes through it.

`RootService` (DESIGN.md section 3) is what HTTP handlers and the reconciler call.
It owns the shared `state.RootState` and delegates each call to the function of the
resource module that implements it:

- `jobs`: submit, update (and its dry-run plan), patch, delete;
- `cluster_identity`: registration, tokens, identity resets, authentication;
- `clusters`: reports, endpoints for logs and node actions;
- `liveness`: READY / UNREACHABLE / LOST from a cluster's silence;
- `placing`: placement (snapshot -> `placement_plan.plan_placement` -> apply) and
  termination, split around the cluster call made by the reconciler;
- `work`: what a reconcile pass has to do;
- `views`: API read models and gauges; `events`: the event log;
- `lifecycle`, `rollouts`, `lookups`, `writes` (the applier queueing every change for
  the store writer), `loading`: shared by the above.

A call that changed state takes `state.lock` (memory only), queues its writes, and
waits for them to be durable after releasing it. Nothing here does network I/O.

Two ways to call: the plain methods block (a worker thread waits for durability);
the `*_async` methods, for the calls made for every deploy and report, run the same
function on the event loop (it only touches memory under the lock and queues
writes) and then await durability without blocking the loop
(`writes.deferring` / `writes.wait_deferred`): the same guarantees (an answer only
once its writes are durable, the reconciler woken only then) without a hand-off to
a worker thread and back per call. A blocking store read such a call makes on a
rare path (a TERMINATED job looked up by name, a spec version not loaded yet) then
runs on the loop too: microseconds on SQLite, one round trip on MongoDB.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, ParamSpec, TypeVar

import anyio.to_thread

from root_orchestrator import cluster_identity, loading, views, writes
from root_orchestrator import clusters as cluster_ops
from root_orchestrator import events as event_log
from root_orchestrator import jobs as job_ops
from root_orchestrator import liveness as liveness_ops
from root_orchestrator import placing as placing_ops
from root_orchestrator import work as work_ops
from root_orchestrator.bus import EventBus
from root_orchestrator.errors import (
    Conflict,
    IdentityRefused,
    Invalid,
    NotFound,
    ServiceError,
    Unauthorized,
)
from root_orchestrator.logs import LogTarget
from root_orchestrator.metrics import GaugeFamily, RootMetrics
from root_orchestrator.records import ClusterRecord
from root_orchestrator.registration import RegistrationGrant
from root_orchestrator.replicas import JobState
from root_orchestrator.settings import RootSettings
from root_orchestrator.state import (
    DURABLE_TIMEOUT_S,
    MAX_TERMINAL_LISTED,
    MAX_VERSIONS,
    MISSING_GRACE_S,
    PRUNE_BATCH,
    REFUSAL_TTL_S,
    RootState,
)
from root_orchestrator.steps import PassWork, PlacementStep, TerminateStep
from schemas.cluster import (
    ClusterLiveness,
    ClusterRegistration,
    ClusterRegistrationResponse,
    ClusterReport,
    PlaceInstanceResponse,
)
from schemas.job import JobSpec
from schemas.root_api import (
    ClusterList,
    ClusterRejection,
    ClusterView,
    EventList,
    JobList,
    JobPatch,
    JobView,
    RegistrationTokenCreated,
    RegistrationTokenList,
    RegistrationTokenView,
    UpdatePlan,
    VersionList,
)
from store import Store

P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "DURABLE_TIMEOUT_S",
    "MAX_TERMINAL_LISTED",
    "MAX_VERSIONS",
    "MISSING_GRACE_S",
    "PRUNE_BATCH",
    "REFUSAL_TTL_S",
    "Conflict",
    "IdentityRefused",
    "Invalid",
    "NotFound",
    "PassWork",
    "PlacementStep",
    "RootService",
    "ServiceError",
    "TerminateStep",
    "Unauthorized",
]


class RootService:
    """All state changes of the root orchestrator, guarded by one lock (a facade over
    the resource modules; see the module docstring)."""

    def __init__(
        self,
        store: Store,
        settings: RootSettings,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        bus: EventBus | None = None,
        metrics: RootMetrics | None = None,
    ) -> None:
        self._state = RootState(
            store,
            settings,
            clock=clock,
            rng=rng or random.Random(),
            bus=bus or EventBus(),
            metrics=metrics or RootMetrics(),
        )

    @property
    def state(self) -> RootState:
        """The shared state the resource modules' functions take (for tests and tools)."""
        return self._state

    @property
    def bus(self) -> EventBus:
        """Where new events are published for live streams."""
        return self._state.bus

    @property
    def settings(self) -> RootSettings:
        """The settings the service runs with."""
        return self._state.settings

    def now(self) -> float:
        """The service's clock (injectable for tests)."""
        return self._state.clock()

    async def _on_loop(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a resource function here (the event loop) with its durability wait and
        kick deferred, then await them (see the module docstring)."""
        with writes.deferring() as box:
            result = fn(*args, **kwargs)
        await writes.wait_deferred(self._state, box)
        return result

    async def _steps_on_loop(
        self, fn: Callable[P, list[PlacementStep]], *args: P.args, **kwargs: P.kwargs
    ) -> list[PlacementStep]:
        """`_on_loop` for `placing.begin_placement(s)`: if the decisions cannot be
        stored (or the wait is cancelled), the steps are not sent and their
        instances are no longer in flight (a later pass resumes them, SCHEDULED)."""
        with writes.deferring() as box:
            steps = fn(*args, **kwargs)
        if not steps:
            return steps
        try:
            await writes.wait_deferred(self._state, box)
        except BaseException:
            with self._state.lock:
                for step in steps:
                    self._state.in_flight.discard(step.instance_id)
            raise
        return steps

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from any thread) whenever there may be new work to do."""
        self._state.listeners.append(callback)

    def start(self) -> None:
        """Create indexes and load the live state from the store (once)."""
        return loading.start(self._state)

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the store writer (before the store closes)."""
        return loading.stop(self._state, timeout)

    def list_events(
        self,
        *,
        since: int = 0,
        limit: int = 100,
        kind: str | None = None,
        category: str | None = None,
        job_id: str | None = None,
        instance_id: str | None = None,
        cluster_id: str | None = None,
        subject: str | None = None,
    ) -> EventList:
        """Events with seq > since, oldest first, filtered by equality on each field."""
        return event_log.list_events(
            self._state,
            since=since,
            limit=limit,
            kind=kind,
            category=category,
            job_id=job_id,
            instance_id=instance_id,
            cluster_id=cluster_id,
            subject=subject,
        )

    def latest_seq(self) -> int:
        """The seq of the newest durable event (the live streams have every one up to it)."""
        return event_log.latest_seq(self._state)

    def prune_events(self) -> int:
        """Delete the oldest events beyond `event_retention` (a batch per call)."""
        return event_log.prune_events(self._state)

    def submit_job(self, spec: JobSpec, idempotency_key: str | None = None) -> tuple[JobView, bool]:
        """Create a job (or, for a repeated Idempotency-Key, return the one it created).

        Returns the job and whether it was created now, once its writes are durable.
        Conflict if the key was used for a different spec, or if an active job already
        has this name.
        """
        return job_ops.submit_job(self._state, spec, idempotency_key)

    async def submit_job_async(
        self, spec: JobSpec, idempotency_key: str | None = None
    ) -> tuple[JobView, bool]:
        """`submit_job` on the event loop (a repeated key may read the store: that
        call goes to a worker thread)."""
        if idempotency_key is not None:
            return await anyio.to_thread.run_sync(self.submit_job, spec, idempotency_key)
        return await self._on_loop(job_ops.submit_job, self._state, spec, None)

    def get_job(self, ref: str) -> JobView:
        """One job with its instances and placement explanation (by id or name)."""
        return views.get_job(self._state, ref)

    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        name: str | None = None,
        cluster: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobList:
        """A page of jobs in submission order, filtered by state, name and cluster."""
        return views.list_jobs(
            self._state, state=state, name=name, cluster=cluster, limit=limit, cursor=cursor
        )

    def patch_job(self, ref: str, *, replicas: int | None, priority: int | None) -> JobView:
        """Scale a job and/or change its priority (applies to instances placed later)."""
        return job_ops.patch_job(self._state, ref, replicas=replicas, priority=priority)

    def update_job(self, ref: str, patch: JobPatch) -> JobView:
        """Change a job's spec (`PATCH /jobs/{job}`).

        A change to what runs makes a new version and starts a rolling replacement
        (a change during a rollout starts a new one: newest wins); replicas, priority
        and the update strategy alone change the job in place (priority applies to
        placements made later). Conflict if the job is deleted, Invalid naming the
        field at fault.
        """
        return job_ops.update_job(self._state, ref, patch)

    def plan_update(self, ref: str, patch: JobPatch) -> UpdatePlan:
        """What `update_job` would do, without doing any of it (the dry run).

        The rollout's batches are replayed by the same planning functions the
        reconciler applies; each new replica's placement is decided by the root
        scheduler's own code on the clusters' current reports, with reservations
        kept local to this plan.
        """
        return job_ops.plan_update(self._state, ref, patch)

    def job_versions(self, ref: str) -> VersionList:
        """The kept versions of a job's spec, newest first, with their specs."""
        return views.job_versions(self._state, ref)

    def delete_job(self, ref: str) -> JobView:
        """Terminate every instance of a job; it ends TERMINATED once they are all gone."""
        return job_ops.delete_job(self._state, ref)

    async def delete_job_async(self, ref: str) -> JobView:
        """`delete_job` on the event loop."""
        return await self._on_loop(job_ops.delete_job, self._state, ref)

    def registration_grant(self, token: str) -> RegistrationGrant | None:
        """What a presented registration token allows: a shared token (settings), a
        name-bound one, or None (unknown: 401). Unauthorized for a known bound token
        that expired unused, so the message can say so."""
        return cluster_identity.registration_grant(self._state, token)

    def register_cluster(
        self, reg: ClusterRegistration, grant: RegistrationGrant | None = None
    ) -> ClusterRegistrationResponse:
        """Register a cluster, or re-register one that proves its id with its credential.

        A new name gets a new id and credential (only its hash is kept). A cluster that
        sends its `cluster_id` and `credential` keeps both. A known name is never taken
        over without an operator's approval (see `root_orchestrator.registration`):
        Conflict (409) otherwise. IdentityRefused (403) for a known id with a wrong
        credential; Unauthorized (401) for a name-bound token used for another name or,
        once used, for another cluster. `grant` None: a shared registration token.
        """
        return cluster_identity.register_cluster(self._state, reg, grant)

    def reset_identity(self, ref: str, ttl_s: float) -> ClusterView:
        """An operator's approval of a new identity for a cluster (by id or name).

        The cluster's credential stops working now, and the next registration of its
        name within `ttl_s` takes the record over (same id, jobs and history) with a
        new credential. For a cluster that lost its stored identity (new disk), or
        whose credential may have leaked.
        """
        return cluster_identity.reset_identity(self._state, ref, ttl_s)

    def create_registration_token(self, name: str, ttl_s: float | None) -> RegistrationTokenCreated:
        """A registration token bound to one cluster name; the token is returned once."""
        return cluster_identity.create_registration_token(self._state, name, ttl_s)

    def list_registration_tokens(self) -> RegistrationTokenList:
        """Every name-bound registration token (without the tokens)."""
        return cluster_identity.list_registration_tokens(self._state)

    def delete_registration_token(self, token_id: str) -> RegistrationTokenView:
        """Revoke a name-bound registration token (the cluster it registered keeps its
        credential, but can no longer re-register with this token)."""
        return cluster_identity.delete_registration_token(self._state, token_id)

    def authenticate_cluster(self, cluster_id: str, credential: str) -> bool:
        """True if `credential` is the one issued to `cluster_id`.

        Without the lock: records are immutable and replaced whole, and reading one
        from the dict is atomic, so a report does not queue for the lock twice.
        """
        return cluster_identity.authenticate_cluster(self._state, cluster_id, credential)

    def apply_report(self, cluster_id: str, report: ClusterReport) -> ClusterLiveness:
        """Take a cluster's aggregated capacity and instance changes."""
        return cluster_ops.apply_report(self._state, cluster_id, report)

    async def apply_report_async(self, cluster_id: str, report: ClusterReport) -> ClusterLiveness:
        """`apply_report` on the event loop (reports come with every change)."""
        return await self._on_loop(cluster_ops.apply_report, self._state, cluster_id, report)

    def cluster_endpoint(self, ref: str) -> tuple[ClusterRecord, str | None]:
        """(cluster, API token) for calling a cluster's API."""
        return cluster_ops.cluster_endpoint(self._state, ref)

    def log_target(self, job_ref: str, instance_id: str) -> LogTarget:
        """Where an instance of a job (by id or name) runs, to read its logs there.

        NotFound for an unknown job, or an instance that is not one of the job's.
        """
        return cluster_ops.log_target(self._state, job_ref, instance_id)

    def record_node_action(
        self,
        cluster: ClusterRecord,
        node_id: str,
        node_name: str,
        action: str,
        *,
        moved: int = 0,
        stuck: int = 0,
    ) -> None:
        """Record an operator's drain, cordon or uncordon of a node (event ``node.<action>``)."""
        return cluster_ops.record_node_action(
            self._state, cluster, node_id, node_name, action, moved=moved, stuck=stuck
        )

    def list_clusters(self) -> ClusterList:
        """Every registered cluster, by name."""
        return views.list_clusters(self._state)

    def get_cluster(self, ref: str) -> ClusterView:
        """One cluster by id or name."""
        return views.get_cluster(self._state, ref)

    def check_liveness(self) -> None:
        """Mark silent clusters UNREACHABLE, then LOST (their instances LOST too)."""
        return liveness_ops.check_liveness(self._state)

    def reconcile_all(self) -> None:
        """Replica diffing for every live job (the periodic, level-triggered pass)."""
        return work_ops.reconcile_all(self._state)

    def pass_work(self, *, sweep: bool) -> PassWork:
        """One reconcile pass's look at the state, under one hold of the lock.

        Liveness first, then (with `sweep`) the replica diff of every job, then the
        DELETEs to send and the instances to place. One call instead of four keeps a
        pass from queueing for the lock four times behind API calls and reports.
        """
        return work_ops.pass_work(self._state, sweep=sweep)

    async def pass_work_async(self, *, sweep: bool) -> PassWork:
        """`pass_work` on the event loop."""
        return await self._on_loop(work_ops.pass_work, self._state, sweep=sweep)

    def placement_work(self) -> list[str]:
        """Instances to place now: PENDING, or SCHEDULED but never acknowledged.

        Highest priority first, then oldest first.
        """
        return work_ops.placement_work(self._state)

    def pending_count(self) -> int:
        """How many instances wait for a cluster."""
        return views.pending_count(self._state)

    def begin_placement(
        self, instance_id: str, rejections: Mapping[str, ClusterRejection]
    ) -> PlacementStep | None:
        """Choose a cluster for a PENDING instance, record SCHEDULED and reserve.

        `rejections` holds the clusters that refused it during this attempt (they are
        left out). Returns the call to make, or None when the instance stays where it
        is (PENDING with its reasons, or no longer needs placing).
        """
        return placing_ops.begin_placement(self._state, instance_id, rejections)

    async def begin_placement_async(
        self, instance_id: str, rejections: Mapping[str, ClusterRejection]
    ) -> PlacementStep | None:
        """`begin_placement` on the event loop."""

        def one() -> list[PlacementStep]:
            step = placing_ops.begin_placement(self._state, instance_id, rejections)
            return [] if step is None else [step]

        steps = await self._steps_on_loop(one)
        return steps[0] if steps else None

    def begin_placements(self, instance_ids: Iterable[str]) -> list[PlacementStep]:
        """`begin_placement` for several instances under one hold of the lock and one
        wait for the store (no clusters left out beyond their recent refusals)."""
        return placing_ops.begin_placements(self._state, instance_ids)

    async def begin_placements_async(self, instance_ids: Iterable[str]) -> list[PlacementStep]:
        """`begin_placements` on the event loop."""
        return await self._steps_on_loop(placing_ops.begin_placements, self._state, instance_ids)

    def finish_placements(
        self,
        answers: list[tuple[PlacementStep, PlaceInstanceResponse | None, str | None]],
    ) -> list[tuple[Literal["accepted", "rejected", "gone"], ClusterRejection | None]]:
        """`finish_placement` for each (step, answer, error), under one hold of the lock."""
        return placing_ops.finish_placements(self._state, answers)

    async def finish_placements_async(
        self,
        answers: list[tuple[PlacementStep, PlaceInstanceResponse | None, str | None]],
    ) -> list[tuple[Literal["accepted", "rejected", "gone"], ClusterRejection | None]]:
        """`finish_placements` on the event loop."""
        return await self._on_loop(placing_ops.finish_placements, self._state, answers)

    def finish_placement(
        self,
        step: PlacementStep,
        response: PlaceInstanceResponse | None,
        error: str | None = None,
    ) -> tuple[Literal["accepted", "rejected", "gone"], ClusterRejection | None]:
        """Record a cluster's answer to a placement (or the error that replaced it).

        Returns the outcome and, for a refusal, what the next attempt must know.
        """
        return placing_ops.finish_placement(self._state, step, response, error)

    async def finish_placement_async(
        self,
        step: PlacementStep,
        response: PlaceInstanceResponse | None,
        error: str | None = None,
    ) -> tuple[Literal["accepted", "rejected", "gone"], ClusterRejection | None]:
        """`finish_placement` on the event loop."""
        return await self._on_loop(placing_ops.finish_placement, self._state, step, response, error)

    def termination_work(self) -> list[TerminateStep]:
        """DELETEs to send: instances the root wants gone, and strays on clusters."""
        return placing_ops.termination_work(self._state)

    def finish_termination(self, step: TerminateStep, ok: bool, error: str | None = None) -> None:
        """Record the answer to a DELETE (ok: the cluster no longer runs it)."""
        return placing_ops.finish_termination(self._state, step, ok, error)

    async def finish_termination_async(
        self, step: TerminateStep, ok: bool, error: str | None = None
    ) -> None:
        """`finish_termination` on the event loop."""
        return await self._on_loop(placing_ops.finish_termination, self._state, step, ok, error)

    def gauges(self) -> list[GaugeFamily]:
        """Jobs, instances and clusters by state, counted in the store."""
        return views.gauges(self._state)

    def ping_store(self) -> None:
        """Raise if the store does not answer (health check)."""
        return views.ping_store(self._state)
