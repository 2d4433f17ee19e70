"""The root's single owner of state: every change to jobs, instances and clusters.

`RootService` is a lock-guarded service layer (DESIGN.md section 3). HTTP handlers
and the reconciler call its methods; nothing else writes to the store. It mirrors
the live part of the store in memory (jobs that are not TERMINATED with all their
instances, every cluster); every change takes effect in memory and is queued, in
order, for the store writer (`root_orchestrator/persister.py`: write-behind, group
commit), so no store write happens under the lock. A method that changed state on
behalf of a caller (an API call, a report, a placement about to be sent) waits for
its writes to be durable after releasing the lock, so nothing it answered for is lost
in a crash, and a restarted root rebuilds the same picture. New events reach the live
streams once durable, from the writer thread. Indexes by cluster and by what needs
doing (placing, terminating) keep each event's work independent of the fleet's size.

It never does network I/O. Placement and termination are split in two halves so the
reconciler can call the cluster between them without holding the lock:
`begin_placement` (decide, record SCHEDULED, reserve) / `finish_placement` (record
the cluster's answer), and `termination_work` / `finish_termination`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import SecretStr, ValidationError

from placement import Decision, Request, place
from root_orchestrator.bus import EventBus
from root_orchestrator.logs import LogTarget
from root_orchestrator.metrics import GaugeFamily, RootMetrics
from root_orchestrator.models import (
    ClusterList,
    ClusterRejection,
    ClusterView,
    EventList,
    EventRecord,
    InstanceView,
    JobList,
    JobPatch,
    JobSummary,
    JobView,
    PlacementInfo,
    PlanBatch,
    PlannedPlacement,
    PlanStop,
    RegistrationTokenCreated,
    RegistrationTokenList,
    RegistrationTokenView,
    RolloutView,
    UpdatePlan,
    VersionList,
    VersionView,
)
from root_orchestrator.persister import Persister
from root_orchestrator.records import (
    CLUSTERS,
    EVENTS,
    IDEMPOTENCY,
    INSTANCES,
    JOB_VERSIONS,
    JOBS,
    REGISTRATION_TOKENS,
    ClusterRecord,
    InstanceRecord,
    JobRecord,
    RegistrationTokenRecord,
    VersionRecord,
    version_id,
)
from root_orchestrator.registration import (
    RegistrationGrant,
    new_token,
    takeover_refusal,
    token_id_of,
    token_view,
)
from root_orchestrator.replicas import InstanceFacts, JobState, diff_replicas, job_state
from root_orchestrator.rollout import (
    Rollout,
    RolloutState,
    RolloutStep,
    merge_plans,
    plan_rollout,
    rollout_counts,
    simulate,
)
from root_orchestrator.scheduler import ClusterSnapshot, build_candidates, request_for
from root_orchestrator.settings import RootSettings
from root_orchestrator.spec_update import PatchInvalid, SpecChange, apply_patch
from schemas.cluster import (
    ClusterLiveness,
    ClusterRegistration,
    ClusterRegistrationResponse,
    ClusterReport,
    InstanceChange,
    PlaceInstanceRequest,
    PlaceInstanceResponse,
)
from schemas.common import ID_PATTERN, MAX_TEXT, NAME_PATTERN
from schemas.errors import Conflict, NotFound, ServiceError
from schemas.job import InstanceState, JobSpec
from schemas.node import InferenceStats
from schemas.secrets import digest, hash_secret, new_secret, verify_secret
from store import Store

__all__ = [
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

log = logging.getLogger(__name__)

#: A full report may omit an instance the cluster accepted moments ago (the report was
#: built before the acceptance). Only instances accepted longer ago than this count as
#: missing from a full report.
MISSING_GRACE_S = 2.0
#: How many terminal instances `GET /jobs/{id}` lists (every active one is listed).
MAX_TERMINAL_LISTED = 100
#: How long a cluster that refused an instance is not asked again for it (unless its
#: report shows more capacity first).
REFUSAL_TTL_S = 30.0
#: Events deleted per pruning call.
PRUNE_BATCH = 500
#: Versions of a job's spec kept (the current and the target one always are).
MAX_VERSIONS = 10
#: How long a call waits for its writes to be durable before it answers 503 (they
#: stay queued and land when the store is back).
DURABLE_TIMEOUT_S = 30.0


class Invalid(ServiceError):
    """A request whose fields do not validate (422); `errors` name each field."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__(
            "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        )


class Unauthorized(ServiceError):
    """Unknown cluster or wrong credential on a report (401)."""


class IdentityRefused(ServiceError):
    """A registration named a known cluster id with a wrong credential (403).

    Distinct from a wrong registration token (401, checked before the service): the
    cluster then knows its stored identity is no longer valid and registers afresh,
    instead of dropping its identity because of a token typo.
    """


def _short(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_reasons(reasons: Mapping[str, int], noun: str = "node") -> str:
    parts = []
    for reason, count in reasons.items():
        parts.append(f"{count} {noun}{'' if count == 1 else 's'}: {reason}")
    return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class PlacementStep:
    """A decided placement the reconciler must send: POST `request` to `url`."""

    instance_id: str
    cluster_id: str
    cluster_name: str
    url: str
    token: str | None
    request: PlaceInstanceRequest
    pinned: bool


@dataclass(frozen=True, slots=True)
class PassWork:
    """What a reconcile pass found to do: DELETEs to send, instances to place (ids,
    highest priority first), and in how many seconds the state needs another look
    (a rollout's health window or progress deadline ends, or a cluster's silence
    crosses a liveness threshold; None: nothing is due)."""

    terminations: list[TerminateStep]
    placements: list[str]
    wake_in: float | None = None


@dataclass(frozen=True, slots=True)
class TerminateStep:
    """An instance to DELETE on a cluster (`stray`: the root does not want it there)."""

    instance_id: str
    cluster_id: str
    cluster_name: str
    url: str
    token: str | None
    stray: bool


class RootService:
    """All state changes of the root orchestrator, guarded by one lock."""

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
        self._store = store
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._bus = bus or EventBus()
        self._metrics = metrics or RootMetrics()
        self._lock = threading.RLock()
        self._jobs: dict[str, JobRecord] = {}
        self._instances: dict[str, InstanceRecord] = {}
        self._by_job: dict[str, set[str]] = {}
        self._clusters: dict[str, ClusterRecord] = {}
        self._reg_tokens: dict[str, RegistrationTokenRecord] = {}
        self._seen_at: dict[str, float] = {}
        self._reservations: dict[str, dict[str, tuple[Request, float]]] = {}
        self._in_flight: set[str] = set()
        self._strays: dict[tuple[str, str], float] = {}
        self._dirty: set[str] = set()
        self._refusals: dict[str, dict[str, tuple[ClusterRejection, float, int]]] = {}
        self._capacity_version: dict[str, int] = {}
        #: latest inference figures per instance from cluster reports (memory only)
        self._inference: dict[str, InferenceStats] = {}
        #: versions of job specs by job id, loaded from the store when first needed
        self._versions: dict[str, dict[int, VersionRecord]] = {}
        self._seq = 0
        self._last_id_ms = 0
        self._pruned_to = 0
        self._listeners: list[Callable[[], None]] = []
        self._started = False
        #: indexes (kept by `_index`): live instances by cluster; instances to place
        #: (PENDING, or SCHEDULED and never answered; not terminating); instances to
        #: terminate (live, with `terminate`); PENDING instances; active jobs by name
        self._on_cluster: dict[str, set[str]] = {}
        self._to_place: set[str] = set()
        self._to_terminate: set[str] = set()
        self._pending_ids: set[str] = set()
        self._active_names: dict[str, str] = {}
        #: when each cluster's record was last queued for the store (see apply_report)
        self._cluster_saved_at: dict[str, float] = {}
        self._persister = Persister(store, publish=self._publish_event, on_commit=self._committed)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Create indexes and load the live state from the store (once)."""
        with self._lock:
            if self._started:
                return
            store = self._store
            for coll, fields in (
                (JOBS, ("name", "state", "created_at")),
                (INSTANCES, ("job_id", "state", "cluster_id")),
                (EVENTS, ("seq", "job_id", "instance_id", "cluster_id", "kind", "category")),
                (CLUSTERS, ("name",)),
                (JOB_VERSIONS, ("job_id",)),
            ):
                for fld in fields:
                    store.ensure_index(coll, fld)
            now = self._clock()
            for doc in store.find(CLUSTERS):
                rec = ClusterRecord.from_doc(doc)
                self._clusters[rec.id] = rec
                # A restarted root gives every cluster a fresh grace period: its own
                # downtime is not the clusters' silence.
                self._seen_at[rec.id] = max(rec.last_report_at or rec.registered_at, now)
            for doc in store.find(REGISTRATION_TOKENS):
                token = RegistrationTokenRecord.from_doc(doc)
                self._reg_tokens[token.id] = token
            for state in JobState:
                if state is JobState.TERMINATED:
                    continue
                for doc in store.find(JOBS, {"state": state.value}):
                    job = JobRecord.from_doc(doc)
                    if job.rollout is not None and job.rollout.active:
                        # like clusters, a rollout gets a fresh progress deadline: the
                        # root's own downtime is not the new version's fault
                        fresh = replace(job.rollout, progress_at=max(job.rollout.progress_at, now))
                        job = replace(job, rollout=fresh)
                    self._jobs[job.id] = job
                    self._by_job.setdefault(job.id, set())
            for job_id in list(self._jobs):
                job = self._jobs[job_id]
                if job.deleted_at is None:
                    self._active_names[job.name] = job.id
                for doc in store.find(INSTANCES, {"job_id": job_id}):
                    inst = InstanceRecord.from_doc(doc)
                    self._instances[inst.id] = inst
                    self._by_job[job_id].add(inst.id)
                    self._index(None, inst)
            newest = store.find(JOBS, order_by="_id", descending=True, limit=1)
            if newest and len(newest[0]["_id"]) == 19:
                with contextlib.suppress(ValueError):
                    self._last_id_ms = int(newest[0]["_id"][1:13], 16)
            last = store.find(EVENTS, order_by="seq", descending=True, limit=1)
            self._seq = int(last[0]["seq"]) if last else 0
            first = store.find(EVENTS, order_by="seq", limit=1)
            self._pruned_to = int(first[0]["seq"]) - 1 if first else self._seq
            self._persister.start()
            self._started = True
            log.info(
                "root state loaded: %d clusters, %d live jobs, %d instances, event seq %d",
                len(self._clusters),
                len(self._jobs),
                len(self._instances),
                self._seq,
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the store writer (before the store closes)."""
        if not self._persister.stop(timeout):
            log.error("store writer stopped with writes still queued")

    def _publish_event(self, doc: dict[str, Any]) -> None:
        """A durable event to the live streams (on the writer thread)."""
        self._bus.publish(_event_out(doc))

    def _committed(self, documents: int, commits: int) -> None:
        self._metrics.store_documents.inc(amount=documents)
        self._metrics.store_commits.inc(amount=commits)

    def _mark(self) -> int:
        """The store writer's mark for everything queued so far (take it under the lock)."""
        return self._persister.mark()

    def _durable(self, since: int, mark: int) -> None:
        """Wait (never under the lock) until the writes up to `mark` are in the store;
        StoreError (503) if they are not within DURABLE_TIMEOUT_S, or if one of the
        call's own writes (after `since`) failed."""
        self._persister.wait(mark, DURABLE_TIMEOUT_S, since=since)

    def _find(self, collection: str, where: dict[str, Any]) -> list[dict[str, Any]]:
        """`store.find(collection, where)` as it will be once the queued writes land
        (equality on top-level fields), without waiting for them."""
        docs = {d["_id"]: d for d in self._store.find(collection, where)}
        for doc_id, doc in self._persister.pending(collection):
            if doc is not None and all(doc.get(k) == v for k, v in where.items()):
                docs[doc_id] = doc
            else:
                docs.pop(doc_id, None)
        return list(docs.values())

    def _settled_store(self) -> None:
        """Wait until every queued write is in the store (before a query of it)."""
        self._persister.wait(self._persister.mark(), DURABLE_TIMEOUT_S)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from any thread) whenever there may be new work to do."""
        self._listeners.append(callback)

    def _kick(self) -> None:
        for callback in self._listeners:
            try:
                callback()
            except Exception:  # pragma: no cover - a listener must not break the service
                log.exception("work listener failed")

    @property
    def bus(self) -> EventBus:
        """Where new events are published for live streams."""
        return self._bus

    @property
    def settings(self) -> RootSettings:
        """The settings the service runs with."""
        return self._settings

    def now(self) -> float:
        """The service's clock (injectable for tests)."""
        return self._clock()

    # ------------------------------------------------------------------ events

    def _emit(
        self,
        kind: str,
        subject: str,
        *,
        reason: str = "",
        state: str | None = None,
        job_id: str | None = None,
        instance_id: str | None = None,
        cluster_id: str | None = None,
        node_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        self._seq += 1
        seq = self._seq
        doc: dict[str, Any] = {
            "_id": f"ev{seq:012d}",
            "seq": seq,
            "ts": self._clock(),
            "kind": kind,
            "category": kind.split(".", 1)[0],
            "subject": subject,
            "job_id": job_id,
            "instance_id": instance_id,
            "cluster_id": cluster_id,
            "node_id": node_id,
            "state": state,
            "reason": _short(reason),
            "data": data or {},
        }
        self._persister.event(EVENTS, doc)

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
        where = _where(
            kind=kind,
            category=category,
            job_id=job_id,
            instance_id=instance_id,
            cluster_id=cluster_id,
            subject=subject,
        )
        docs = self._store.find(
            EVENTS,
            where,
            order_by="seq",
            after=("seq", since) if since > 0 else None,
            limit=limit,
        )
        events = [EventRecord.model_validate(_event_out(d)) for d in docs]
        return EventList(events=events, next_since=events[-1].seq if events else since)

    def latest_seq(self) -> int:
        """The seq of the newest durable event (the live streams have every one up to it)."""
        with self._lock:
            newest = self._seq
            backlog = self._persister.backlog
        if backlog:
            self._settled_store()
        return newest

    def prune_events(self) -> int:
        """Delete the oldest events beyond `event_retention` (a batch per call)."""
        with self._lock:
            keep_from = self._seq - self._settings.event_retention
            start = self._pruned_to + 1
            end = min(keep_from, start + PRUNE_BATCH - 1)
        if end < start:
            return 0
        self._settled_store()  # never delete an event before it is written
        for seq in range(start, end + 1):
            self._store.delete(EVENTS, f"ev{seq:012d}")
        with self._lock:
            self._pruned_to = max(self._pruned_to, end)
        return end - start + 1

    # ------------------------------------------------------------------ persistence

    # Records are immutable: the writer thread converts them to documents later. The
    # root is its store's only writer; `version` counts this root's changes of a
    # record (the store's `_version` counts commits: coalesced writes count once).

    def _save_job(self, new: JobRecord, old: JobRecord | None) -> JobRecord:
        new = replace(new, version=(old.version if old else 0) + 1)
        self._persister.put(JOBS, new.id, new)
        if old is not None and self._active_names.get(old.name) == old.id:
            del self._active_names[old.name]
        if new.state is JobState.TERMINATED:
            self._evict(new.id)
        else:
            self._jobs[new.id] = new
            self._by_job.setdefault(new.id, set())
            if new.deleted_at is None:
                self._active_names[new.name] = new.id
        return new

    def _evict(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is not None and self._active_names.get(job.name) == job_id:
            del self._active_names[job.name]
        self._versions.pop(job_id, None)
        for iid in self._by_job.pop(job_id, set()):
            self._index(self._instances.pop(iid, None), None)
            self._refusals.pop(iid, None)
            self._inference.pop(iid, None)
            self._drop_reservation(iid)

    def _save_instance(self, new: InstanceRecord, old: InstanceRecord | None) -> InstanceRecord:
        new = replace(new, version=(old.version if old else 0) + 1)
        self._persister.put(INSTANCES, new.id, new)
        self._index(self._instances.get(new.id), new)
        self._instances[new.id] = new
        self._by_job.setdefault(new.job_id, set()).add(new.id)
        return new

    def _index(self, old: InstanceRecord | None, new: InstanceRecord | None) -> None:
        """Move an instance between the indexes (old -> new record; None: absent)."""
        if old is not None:
            live = self._on_cluster.get(old.cluster_id or "")
            if live is not None:
                live.discard(old.id)
                if not live:
                    del self._on_cluster[old.cluster_id or ""]
            self._to_place.discard(old.id)
            self._to_terminate.discard(old.id)
            self._pending_ids.discard(old.id)
        if new is None or new.state.terminal:
            return
        if new.cluster_id:
            self._on_cluster.setdefault(new.cluster_id, set()).add(new.id)
        if new.terminate:
            self._to_terminate.add(new.id)
        elif new.state is InstanceState.PENDING or (
            new.state is InstanceState.SCHEDULED and new.assigned_at is None
        ):
            self._to_place.add(new.id)
        if new.state is InstanceState.PENDING:
            self._pending_ids.add(new.id)

    def _cluster_instances(self, cluster_id: str) -> list[InstanceRecord]:
        """The live instances the root has on a cluster."""
        return [self._instances[i] for i in sorted(self._on_cluster.get(cluster_id, ()))]

    def _save_cluster(self, new: ClusterRecord, old: ClusterRecord | None) -> ClusterRecord:
        new = replace(new, version=(old.version if old else 0) + 1)
        self._persister.put(CLUSTERS, new.id, new)
        self._cluster_saved_at[new.id] = self._clock()
        self._clusters[new.id] = new
        return new

    # ------------------------------------------------------------------ instances

    def _transition(
        self, inst: InstanceRecord, state: InstanceState, reason: str, **changes: Any
    ) -> InstanceRecord:
        """Record a state change of an instance, with its event."""
        now = self._clock()
        if state is InstanceState.PENDING and inst.state is not InstanceState.PENDING:
            changes.setdefault("pending_since", now)
        if state is InstanceState.RUNNING:
            if inst.state is not InstanceState.RUNNING:
                changes.setdefault("running_since", now)  # the health window starts
                job = self._jobs.get(inst.job_id)
                if job is not None and job.rollout is not None and job.rollout.active:
                    self._kick()  # a pass computes when the window ends (reports only)
        else:
            changes["running_since"] = None
        new = replace(inst, state=state, reason=_short(reason), updated_at=now, **changes)
        new = self._save_instance(new, inst)
        if state.terminal or state is InstanceState.PENDING:
            self._drop_reservation(inst.id)
        if state is not inst.state:
            self._emit(
                "instance.state",
                inst.id,
                state=state.value,
                reason=reason,
                job_id=inst.job_id,
                instance_id=inst.id,
                cluster_id=new.cluster_id or inst.cluster_id,
                node_id=new.node_id,
                data={
                    "from": inst.state.value,
                    "replica": inst.replica,
                    "job_version": inst.job_version,
                },
            )
        self._dirty.add(inst.job_id)
        return new

    def _create_instance(
        self, job: JobRecord, generation: int, replica: int, restarts: int, why: str
    ) -> None:
        """A new PENDING instance; its generation was reserved in the job record first."""
        now = self._clock()
        inst = InstanceRecord(
            id=f"{job.id}-{replica}-{generation}",
            job_id=job.id,
            replica=replica,
            state=InstanceState.PENDING,
            created_at=now,
            updated_at=now,
            restarts=restarts,
            reason=why,
            pending_since=now,
            job_version=job.job_version,
        )
        self._save_instance(inst, None)
        self._emit(
            "instance.state",
            inst.id,
            state=InstanceState.PENDING.value,
            reason=why,
            job_id=job.id,
            instance_id=inst.id,
            data={
                "from": None,
                "replica": replica,
                "restarts": restarts,
                "job_version": job.job_version,
            },
        )
        self._dirty.add(job.id)

    def _request_termination(self, inst: InstanceRecord, reason: str) -> None:
        """Stop an instance: at once if no cluster has it, else via DELETE to its cluster."""
        if inst.state.terminal or inst.terminate:
            return
        if inst.state is InstanceState.PENDING and inst.id not in self._in_flight:
            self._transition(inst, InstanceState.TERMINATED, reason)
            return
        self._save_instance(
            replace(inst, terminate=True, terminate_reason=reason, updated_at=self._clock()), inst
        )
        self._emit(
            "instance.terminating",
            inst.id,
            reason=reason,
            state=inst.state.value,
            job_id=inst.job_id,
            instance_id=inst.id,
            cluster_id=inst.cluster_id,
            node_id=inst.node_id,
            data={"replica": inst.replica, "job_version": inst.job_version},
        )
        self._dirty.add(inst.job_id)
        self._kick()

    def _job_instances(self, job_id: str) -> list[InstanceRecord]:
        return [self._instances[i] for i in self._by_job.get(job_id, ()) if i in self._instances]

    def _reconcile_job(self, job: JobRecord) -> None:
        """Close the gap between desired replicas and instances for one job (and move
        its rollout on, if one is active: root_orchestrator/rollout.py)."""
        facts = [i.facts() for i in self._job_instances(job.id)]
        step: RolloutStep | None = None
        if job.rollout is not None and job.rollout.active:
            job, step = self._advance_rollout(job, facts)
        spec = job.spec
        plan = diff_replicas(
            job.desired,
            facts,
            spec.restart_policy,
            spec.max_restarts,
            spec.on_shed,
        )
        merged = merge_plans(plan, step, facts, job.job_version)
        for iid, given in merged.terminate:
            inst = self._instances[iid]
            if given is not None:
                why = given
            elif job.deleted_at is not None:
                why = "job deleted"
            elif inst.replica >= job.desired:
                why = f"scaled down to {job.desired} replicas"
            else:
                why = "shed by its node; rescheduling (on_shed=reschedule)"
            self._request_termination(inst, why)
        if merged.create:
            # Reserve the generations (instance ids) in the job record before creating
            # the instances: a crash in between can never hand out an id twice.
            current = self._jobs[job.id]
            first = current.next_generation
            job = self._save_job(
                replace(
                    current, next_generation=first + len(merged.create), updated_at=self._clock()
                ),
                current,
            )
            for offset, (replica, restarts, given) in enumerate(merged.create):
                why = given or (
                    f"replica {replica} created"
                    if restarts == 0
                    else f"replica {replica} replaced (restart {restarts})"
                )
                self._create_instance(job, first + offset, replica, restarts, why)
            self._kick()

    def _settle(self) -> None:
        """Reconcile and re-summarise every job touched since the last call."""
        for _ in range(10):
            if not self._dirty:
                return
            dirty, self._dirty = self._dirty, set()
            for job_id in sorted(dirty):
                job = self._jobs.get(job_id)
                if job is None:
                    continue
                self._reconcile_job(job)
                self._update_job_state(self._jobs.get(job_id, job))

    def _update_job_state(self, job: JobRecord) -> None:
        if job.id not in self._jobs:
            return
        spec = job.spec
        state = job_state(
            job.desired,
            job.deleted_at is not None,
            [i.facts() for i in self._job_instances(job.id)],
            spec.restart_policy,
            spec.max_restarts,
        )
        if state is job.state:
            return
        new = replace(job, state=state, updated_at=self._clock())
        self._save_job(new, job)
        self._emit(
            "job.state", job.id, state=state.value, job_id=job.id, data={"from": job.state.value}
        )

    # ------------------------------------------------------------------ rollouts

    def _versions_of(self, job_id: str) -> dict[int, VersionRecord]:
        """The kept versions of a job's spec (loaded from the store on first use)."""
        versions = self._versions.get(job_id)
        if versions is None:
            versions = {}
            for doc in self._find(JOB_VERSIONS, {"job_id": job_id}):
                rec = VersionRecord.from_doc(doc)
                versions[rec.number] = rec
            if job_id in self._jobs:
                self._versions[job_id] = versions
        return versions

    def _save_version(self, new: VersionRecord, old: VersionRecord | None) -> VersionRecord:
        # A version document left by a root that crashed before its job record named
        # it is overwritten: nothing refers to it.
        new = replace(new, version=(old.version if old else 0) + 1)
        self._persister.put(JOB_VERSIONS, new.id, new)
        self._versions_of(new.job_id)[new.number] = new
        return new

    def _set_version_state(self, job_id: str, number: int, state: str, reason: str = "") -> None:
        old = self._versions_of(job_id).get(number)
        if old is None or (old.state == state and old.reason == reason):
            return
        finished = self._clock() if state != "rolling_out" else None
        self._save_version(
            replace(old, state=state, reason=_short(reason), finished_at=finished), old
        )

    def _prune_versions(self, job: JobRecord, keep: Iterable[int]) -> None:
        """Drop the oldest versions beyond MAX_VERSIONS; never one in `keep` or one that
        an active instance runs (its placement request is built from it)."""
        versions = self._versions_of(job.id)
        running = {i.job_version for i in self._job_instances(job.id) if not i.state.terminal}
        kept = set(sorted(versions, reverse=True)[:MAX_VERSIONS]) | set(keep) | running
        for number in [n for n in versions if n not in kept]:
            self._persister.delete(JOB_VERSIONS, version_id(job.id, number))
            versions.pop(number, None)

    def _spec_for(self, job: JobRecord, number: int) -> JobSpec:
        """The spec an instance of version `number` runs (its placement request)."""
        if number == job.job_version:
            return job.spec
        rec = self._versions_of(job.id).get(number)
        return rec.spec if rec is not None else job.spec

    def _running_now(self, job_id: str) -> int:
        return sum(
            1
            for i in self._job_instances(job_id)
            if i.state is InstanceState.RUNNING and not i.terminate
        )

    def _start_rollout(self, job: JobRecord, change: SpecChange) -> JobRecord:
        """A new version of the job's spec becomes its target; a rollout begins."""
        now = self._clock()
        number = job.latest_version + 1
        previous = job.rollout
        stable = previous.stable_version if previous is not None else job.job_version
        versions = self._versions_of(job.id)
        if stable not in versions and stable == job.job_version:
            # the first change of this job: its spec so far becomes version `stable`
            self._save_version(
                VersionRecord(
                    job_id=job.id,
                    number=stable,
                    spec=job.spec,
                    created_at=job.created_at,
                    state="current",
                ),
                None,
            )
        if previous is not None and previous.state is RolloutState.PROGRESSING:
            self._set_version_state(
                job.id,
                previous.to_version,
                "superseded",
                f"superseded by version {number} before its rollout finished",
            )
        self._save_version(
            VersionRecord(
                job_id=job.id,
                number=number,
                spec=change.spec,
                created_at=now,
                state="rolling_out",
                changed=change.versioned,
            ),
            versions.get(number),
        )
        baseline = (
            previous.baseline
            if previous is not None and previous.active
            else self._running_now(job.id)
        )
        fields = ", ".join(change.versioned)
        rollout = Rollout(
            state=RolloutState.PROGRESSING,
            from_version=stable,
            to_version=number,
            started_at=now,
            progress_at=now,
            baseline=baseline,
            reason=_short(f"rolling update to version {number}: {fields} changed"),
        )
        old_target, old_spec = job.job_version, job.spec
        job = self._save_job(
            replace(
                job,
                spec=change.spec,
                job_version=number,
                latest_version=number,
                rollout=rollout,
                updated_at=now,
            ),
            job,
        )
        self._prune_versions(job, (stable, number))
        data: dict[str, Any] = {
            "version": {"from": old_target, "to": number},
            "changed": list(change.changed),
        }
        for key in ("replicas", "priority"):
            if key in change.changed:
                data[key] = {"from": getattr(old_spec, key), "to": getattr(change.spec, key)}
        self._emit(
            "job.updated",
            job.id,
            job_id=job.id,
            reason=f"version {number}: {', '.join(change.changed)} changed",
            data=data,
        )
        self._emit_rollout(job, rollout.reason)
        self._dirty.add(job.id)
        return job

    def _emit_rollout(self, job: JobRecord, reason: str, **extra: Any) -> None:
        rollout = job.rollout
        assert rollout is not None
        counts = rollout_counts(
            job.desired,
            [i.facts() for i in self._job_instances(job.id)],
            rollout.target_version,
            self._clock(),
            job.spec.update.min_healthy_s,
        )
        self._emit(
            "job.rollout",
            job.id,
            job_id=job.id,
            state=rollout.state.value,
            reason=reason,
            data={
                "from_version": rollout.from_version,
                "to_version": rollout.to_version,
                "target_version": rollout.target_version,
                "replicas": counts.replicas,
                "updated": counts.updated,
                "healthy": counts.healthy,
                "unavailable": counts.unavailable,
                **extra,
            },
        )

    def _advance_rollout(
        self, job: JobRecord, facts: list[InstanceFacts]
    ) -> tuple[JobRecord, RolloutStep | None]:
        """Look at an active rollout: finish it, fail it (and roll back), or return
        the starts and stops it wants now."""
        now = self._clock()
        if job.deleted_at is not None:
            return self._end_rollout(job, RolloutState.CANCELLED, "job deleted"), None
        for _ in range(3):
            rollout = job.rollout
            assert rollout is not None
            step = plan_rollout(rollout, job.desired, facts, job.spec.update, now)
            if step.verdict == "failed":
                forward = rollout.state is RolloutState.PROGRESSING
                if forward and job.spec.update.auto_rollback:
                    job = self._roll_back(job, step.reason, facts)
                    continue
                return self._end_rollout(job, RolloutState.FAILED, step.reason), None
            if step.verdict == "complete":
                done = (
                    RolloutState.COMPLETE
                    if rollout.state is RolloutState.PROGRESSING
                    else RolloutState.ROLLED_BACK
                )
                return self._end_rollout(job, done, rollout.reason), None
            if step.counts.healthy > rollout.healthy:
                job = self._save_job(
                    replace(
                        job, rollout=replace(rollout, healthy=step.counts.healthy, progress_at=now)
                    ),
                    job,
                )
                counts = step.counts
                self._emit_rollout(
                    job,
                    f"{counts.healthy}/{counts.replicas} replicas healthy at version "
                    f"{rollout.target_version}",
                )
            return job, step
        return job, None

    def _roll_back(self, job: JobRecord, reason: str, facts: list[InstanceFacts]) -> JobRecord:
        """The rolled-out version failed: the job's target goes back to the last complete
        version (replicas, priority and strategy stay as they are now)."""
        rollout = job.rollout
        assert rollout is not None
        now = self._clock()
        stable = self._versions_of(job.id).get(rollout.from_version)
        if stable is None:
            return self._end_rollout(
                job, RolloutState.FAILED, f"{reason}; version {rollout.from_version} is not kept"
            )
        spec = JobSpec.model_validate(
            {
                **stable.spec.model_dump(),
                "replicas": job.spec.replicas,
                "priority": job.spec.priority,
                "update": job.spec.update,
            }
        )
        self._set_version_state(job.id, rollout.to_version, "failed", reason)
        counts = rollout_counts(
            job.desired, facts, rollout.from_version, now, spec.update.min_healthy_s
        )
        back = replace(
            rollout,
            state=RolloutState.ROLLING_BACK,
            reason=_short(reason),
            progress_at=now,
            healthy=counts.healthy,
        )
        job = self._save_job(
            replace(job, spec=spec, job_version=rollout.from_version, rollout=back, updated_at=now),
            job,
        )
        self._emit_rollout(job, f"rolling back to version {rollout.from_version}: {reason}")
        self._dirty.add(job.id)
        return job

    def _end_rollout(self, job: JobRecord, state: RolloutState, reason: str) -> JobRecord:
        rollout = job.rollout
        assert rollout is not None
        now = self._clock()
        if state is RolloutState.COMPLETE:
            self._set_version_state(job.id, rollout.to_version, "current")
            if rollout.from_version != rollout.to_version:
                self._set_version_state(
                    job.id,
                    rollout.from_version,
                    "superseded",
                    f"replaced by version {rollout.to_version}",
                )
            reason = f"version {rollout.to_version} rolled out to {job.desired} replicas"
        elif state is RolloutState.ROLLED_BACK:
            reason = f"rolled back to version {rollout.from_version}: {rollout.reason}"
        elif rollout.state is RolloutState.PROGRESSING:
            self._set_version_state(
                job.id,
                rollout.to_version,
                "failed" if state is RolloutState.FAILED else "cancelled",
                reason,
            )
        if state is RolloutState.FAILED and rollout.state is RolloutState.PROGRESSING:
            reason = f"rollout stopped (auto_rollback off), nothing more is replaced: {reason}"
        ended = replace(rollout, state=state, reason=_short(reason), finished_at=now)
        job = self._save_job(replace(job, rollout=ended, updated_at=now), job)
        self._emit_rollout(job, ended.reason)
        return job

    def _change_for(self, job: JobRecord, patch: JobPatch) -> SpecChange:
        try:
            return apply_patch(job.spec, patch.given())
        except PatchInvalid as exc:
            raise Invalid(exc.errors) from None

    # ------------------------------------------------------------------ jobs (API)

    def submit_job(self, spec: JobSpec, idempotency_key: str | None = None) -> tuple[JobView, bool]:
        """Create a job (or, for a repeated Idempotency-Key, return the one it created).

        Returns the job and whether it was created now, once its writes are durable.
        Conflict if the key was used for a different spec, or if an active job already
        has this name.
        """
        body_hash = digest(spec.model_dump_json())
        with self._lock:
            since = self._mark()
            view, created = self._submit(spec, idempotency_key, body_hash)
            mark = self._mark()  # a repeated key: the first call may still be writing
        self._durable(since, mark)
        if created:
            self._kick()
        return view, created

    def _submit(
        self, spec: JobSpec, idempotency_key: str | None, body_hash: str
    ) -> tuple[JobView, bool]:
        now = self._clock()
        job_id: str | None = None
        key_doc: dict[str, Any] | None = None
        key_id = None
        if idempotency_key is not None:
            key_id = digest("idem:" + idempotency_key)
            key_doc = self._persister.get(IDEMPOTENCY, key_id)
            if key_doc is not None:
                if key_doc["body_hash"] != body_hash:
                    raise Conflict("Idempotency-Key was already used for a different job spec")
                job_id = key_doc["job_id"]
                existing = self._load_job(job_id)
                if existing is not None:
                    return self._job_view(existing), False
        other_id = self._active_names.get(spec.name)
        if other_id is not None:
            raise Conflict(
                f"an active job named {spec.name!r} exists ({other_id}); "
                "delete it first or choose another name"
            )
        if job_id is None:
            job_id = self._new_job_id(now)
        if key_id is not None and key_doc is None:
            self._persister.put(
                IDEMPOTENCY, key_id, {"job_id": job_id, "body_hash": body_hash, "created_at": now}
            )
        # The first instances' generations (replica r gets generation r) are
        # reserved in the job record as it is created: one write fewer than
        # reserving them afterwards, and still before any instance exists.
        job = JobRecord(
            id=job_id,
            name=spec.name,
            spec=spec,
            state=JobState.PENDING if spec.replicas > 0 else JobState.STOPPED,
            created_at=now,
            updated_at=now,
            next_generation=spec.replicas,
        )
        job = self._save_job(job, None)
        self._versions[job.id] = {}  # a new job has no stored versions yet
        self._emit(
            "job.submitted",
            job.id,
            state=job.state.value,
            job_id=job.id,
            reason=f"{spec.replicas} replicas of {spec.runtime.value} job {spec.name}",
            data={"replicas": spec.replicas, "priority": spec.priority},
        )
        for replica in range(spec.replicas):
            self._create_instance(job, replica, replica, 0, f"replica {replica} created")
        self._dirty.add(job.id)
        self._settle()
        return self._job_view(self._jobs.get(job.id, job)), True

    def _new_job_id(self, now: float) -> str:
        """Ids sort by submission: j + 12 hex digits of ms (strictly increasing) + 6 random."""
        ms = max(int(now * 1000), self._last_id_ms + 1)
        self._last_id_ms = ms
        return f"j{ms:012x}{secrets.token_hex(3)}"

    def _load_job(self, job_id: str) -> JobRecord | None:
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        doc = self._persister.get(JOBS, job_id)
        return JobRecord.from_doc(doc) if doc else None

    def _resolve_job(self, ref: str) -> JobRecord:
        """A job by id, else by name (the active one, else the newest).

        A reference that can be neither an id nor a name (too long, other characters)
        is not found, without asking the store (whose keys it could not be anyway).
        """
        if not _ID_RE.fullmatch(ref):
            if not _NAME_RE.fullmatch(ref):
                raise NotFound(f"no job {_shown(ref)}")
        else:
            job = self._load_job(ref)
            if job is not None:
                return job
        active = self._active_names.get(ref)
        if active is not None:
            return self._jobs[active]
        docs = sorted(self._find(JOBS, {"name": ref}), key=lambda d: d["created_at"])
        if docs:
            return self._jobs.get(docs[-1]["_id"]) or JobRecord.from_doc(docs[-1])
        raise NotFound(f"no job {_shown(ref)}")

    def get_job(self, ref: str) -> JobView:
        """One job with its instances and placement explanation (by id or name)."""
        with self._lock:
            return self._job_view(self._resolve_job(ref))

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
        self._settled_store()  # the page comes from the store: every answered change in it
        with self._lock:
            where = _where(state=state.value if state else None, name=name)
            if cluster is not None:
                rec = self._cluster_by_ref(cluster)
                ids = sorted({i.job_id for i in (self._cluster_instances(rec.id) if rec else [])})
                if cursor:
                    ids = [i for i in ids if i > cursor]
                jobs = [j for j in (self._load_job(i) for i in ids) if j is not None]
                jobs = [
                    j
                    for j in jobs
                    if (state is None or j.state is state) and (name is None or j.name == name)
                ]
                page = jobs[: limit + 1]
            else:
                docs = self._store.find(
                    JOBS,
                    where,
                    order_by="_id",
                    after=("_id", cursor) if cursor else None,
                    limit=limit + 1,
                )
                page = [self._jobs.get(d["_id"]) or JobRecord.from_doc(d) for d in docs]
            more = len(page) > limit
            page = page[:limit]
            return JobList(
                jobs=[self._job_summary(j) for j in page],
                next_cursor=page[-1].id if more and page else None,
            )

    def patch_job(self, ref: str, *, replicas: int | None, priority: int | None) -> JobView:
        """Scale a job and/or change its priority (applies to instances placed later)."""
        return self.update_job(ref, JobPatch(replicas=replicas, priority=priority))

    def _live_job(self, ref: str) -> JobRecord:
        job = self._resolve_job(ref)
        if job.deleted_at is not None or job.id not in self._jobs:
            raise Conflict(f"job {job.id} is deleted")
        return job

    def update_job(self, ref: str, patch: JobPatch) -> JobView:
        """Change a job's spec (`PATCH /jobs/{job}`).

        A change to what runs makes a new version and starts a rolling replacement
        (a change during a rollout starts a new one: newest wins); replicas, priority
        and the update strategy alone change the job in place (priority applies to
        placements made later). Conflict if the job is deleted, Invalid naming the
        field at fault.
        """
        with self._lock:
            since = self._mark()
            job = self._live_job(ref)
            change = self._change_for(job, patch)
            if change.versioned:
                job = self._start_rollout(job, change)
            elif change.changed:
                data: dict[str, Any] = {}
                before = job.spec
                for key in change.changed:
                    if key in ("replicas", "priority"):
                        data[key] = {"from": getattr(before, key), "to": getattr(change.spec, key)}
                    else:
                        data[key] = {
                            "from": before.model_dump(mode="json")[key],
                            "to": change.spec.model_dump(mode="json")[key],
                        }
                job = self._save_job(replace(job, spec=change.spec, updated_at=self._clock()), job)
                kind = "job.scaled" if "replicas" in change.changed else "job.updated"
                text = ", ".join(
                    f"{k} {v['from']} -> {v['to']}" if k in ("replicas", "priority") else f"{k}"
                    for k, v in data.items()
                )
                self._emit(kind, job.id, job_id=job.id, reason=text, data=data)
                self._dirty.add(job.id)
            if change.changed:
                self._settle()
            view = self._job_view(self._jobs.get(job.id, job))
            mark = self._mark()
        self._durable(since, mark)
        self._kick()
        return view

    def plan_update(self, ref: str, patch: JobPatch) -> UpdatePlan:
        """What `update_job` would do, without doing any of it (the dry run).

        The rollout's batches are replayed by the same planning functions the
        reconciler applies; each new replica's placement is decided by the root
        scheduler's own code on the clusters' current reports, with reservations
        kept local to this plan.
        """
        with self._lock:
            job = self._live_job(ref)
            change = self._change_for(job, patch)
            spec = change.spec
            now = self._clock()
            facts = [i.facts() for i in self._job_instances(job.id)]
            live = {f.id: f for f in facts if not f.state.terminal}
            notes: list[str] = []
            batches: list[PlanBatch] = []
            replaced: list[str] = []
            new_version: int | None = None
            if change.versioned:
                new_version = job.latest_version + 1
                previous = job.rollout
                stable = previous.stable_version if previous is not None else job.job_version
                baseline = (
                    previous.baseline
                    if previous is not None and previous.active
                    else self._running_now(job.id)
                )
                replay = Rollout(
                    state=RolloutState.PROGRESSING,
                    from_version=stable,
                    to_version=new_version,
                    started_at=now,
                    progress_at=now,
                    baseline=baseline,
                )
                steps, outcome = simulate(
                    replay,
                    spec.replicas,
                    facts,
                    spec.update,
                    now,
                    restart_policy=spec.restart_policy,
                    max_restarts=spec.max_restarts,
                    on_shed=spec.on_shed,
                )
                for step in steps:
                    stops = []
                    for iid, why in step.stop:
                        known = live.get(iid)
                        stops.append(
                            PlanStop(
                                instance_id=iid,
                                replica=known.replica if known else None,
                                job_version=known.job_version if known else None,
                                why=why,
                            )
                        )
                    batches.append(
                        PlanBatch(
                            step=step.step,
                            start=list(step.start),
                            stop=stops,
                            available_at_least=step.available_at_least,
                            instances_at_most=step.instances_at_most,
                        )
                    )
                replaced = sorted(i for i, f in live.items() if f.job_version != new_version)
                replicas = list(range(spec.replicas))
                if previous is not None and previous.active:
                    notes.append(
                        f"version {previous.to_version} is still rolling out "
                        f"({previous.state.value}): version {new_version} replaces it "
                        "(newest wins)"
                    )
                notes.append(
                    "batches assume each new instance is placed at once and healthy after "
                    f"min_healthy_s ({spec.update.min_healthy_s:g}s)"
                )
            else:
                plan = diff_replicas(
                    spec.replicas, facts, spec.restart_policy, spec.max_restarts, spec.on_shed
                )
                replicas = [r for r, _restarts in plan.create]
                outcome = (
                    "no new version: " + ", ".join(change.changed)
                    if change.changed
                    else "no change"
                )
                if plan.terminate:
                    replaced = sorted(plan.terminate)
                    notes.append(f"scaling down stops {len(plan.terminate)} instance(s)")
            placements = self._plan_placements(job, spec, replicas, keep=not change.versioned)
            if placements:
                notes.append(
                    "placements use the clusters' current reports; capacity that old "
                    "instances free as they stop is not counted"
                )
            return UpdatePlan(
                job_id=job.id,
                name=job.name,
                changed=list(change.changed),
                current_version=job.job_version,
                new_version=new_version,
                replicas=spec.replicas,
                strategy=spec.update,
                replaced=replaced,
                batches=batches,
                outcome=outcome,
                placements=placements,
                pending=[p.replica for p in placements if p.outcome == "pending"],
                notes=notes,
                spec=spec,
            )

    def _plan_placements(
        self, job: JobRecord, spec: JobSpec, replicas: list[int], *, keep: bool
    ) -> list[PlannedPlacement]:
        """Where each replica would go now: the scheduler's decision, with reservations
        made only in a local copy of the snapshots (nothing is reserved for real)."""
        out: list[PlannedPlacement] = []
        pinned = spec.constraints.cluster
        if pinned is not None:
            cluster = self._cluster_by_ref(pinned)
            for replica in replicas:
                if cluster is None or cluster.liveness is not ClusterLiveness.READY:
                    what = "not registered" if cluster is None else cluster.liveness.value
                    text = f"pending: cluster {pinned} (constraints.cluster) is {what}"
                    out.append(
                        PlannedPlacement(replica=replica, outcome="pending", explanation=text)
                    )
                else:
                    out.append(
                        PlannedPlacement(
                            replica=replica,
                            outcome="forwarded",
                            cluster_id=cluster.id,
                            cluster_name=cluster.name,
                            explanation=f"forwarded to cluster {cluster.name} named by "
                            "constraints.cluster (no root scheduling)",
                        )
                    )
            return out
        request = request_for(
            spec, spec.constraints, spec.placement_policy.value if spec.placement_policy else None
        )
        snapshots = self._snapshots((), prune=False)
        planned: dict[str, list[Request]] = {}
        existing: dict[str, int] = {}
        if keep:
            for other in self._job_instances(job.id):
                if other.cluster_id and not other.state.terminal and not other.terminate:
                    existing[other.cluster_id] = existing.get(other.cluster_id, 0) + 1
        rng = random.Random()
        rng.setstate(self._rng.getstate())
        for replica in replicas:
            snaps = [
                replace(s, reserved=s.reserved + tuple(planned.get(s.id, ()))) for s in snapshots
            ]
            decision = place(
                request,
                build_candidates(request, snaps),
                self._settings.placement_policy,
                rng,
                existing=dict(existing),
                noun="cluster",
            )
            chosen = decision.chosen
            if chosen is None:
                out.append(
                    PlannedPlacement(
                        replica=replica,
                        outcome="pending",
                        explanation=_short(_pending_text(decision, {}, bool(self._clusters))),
                        decision=decision.to_dict(limit=10),
                    )
                )
                continue
            planned.setdefault(chosen.id, []).append(request)
            existing[chosen.id] = existing.get(chosen.id, 0) + 1
            out.append(
                PlannedPlacement(
                    replica=replica,
                    outcome="scheduled",
                    cluster_id=chosen.id,
                    cluster_name=self._clusters[chosen.id].name,
                    explanation=_short(decision.explain()),
                    decision=decision.to_dict(limit=10),
                )
            )
        return out

    def job_versions(self, ref: str) -> VersionList:
        """The kept versions of a job's spec, newest first, with their specs."""
        with self._lock:
            job = self._resolve_job(ref)
            return VersionList(
                job_id=job.id,
                name=job.name,
                job_version=job.job_version,
                versions=self._version_views(job, with_spec=True),
            )

    def _version_views(self, job: JobRecord, *, with_spec: bool) -> list[VersionView]:
        versions = self._versions_of(job.id)
        if not versions:
            return [
                VersionView(
                    version=job.job_version,
                    state="current",
                    created_at=job.created_at,
                    spec=job.spec if with_spec else None,
                )
            ]
        return [
            VersionView(
                version=rec.number,
                state=rec.state,
                created_at=rec.created_at,
                finished_at=rec.finished_at,
                reason=rec.reason,
                changed=list(rec.changed),
                spec=rec.spec if with_spec else None,
            )
            for rec in sorted(versions.values(), key=lambda r: r.number, reverse=True)
        ]

    def _rollout_view(self, job: JobRecord, instances: list[InstanceRecord]) -> RolloutView | None:
        rollout = job.rollout
        if rollout is None:
            return None
        facts = [i.facts() for i in instances]
        now = self._clock()
        strategy = job.spec.update
        counts = rollout_counts(
            job.desired, facts, rollout.target_version, now, strategy.min_healthy_s
        )
        waiting = ""
        if rollout.active:
            waiting = plan_rollout(rollout, job.desired, facts, strategy, now).waiting
        return RolloutView(
            state=rollout.state,
            from_version=rollout.from_version,
            to_version=rollout.to_version,
            target_version=rollout.target_version,
            started_at=rollout.started_at,
            progress_at=rollout.progress_at,
            finished_at=rollout.finished_at,
            replicas=counts.replicas,
            updated=counts.updated,
            healthy=counts.healthy,
            unavailable=counts.unavailable,
            old_instances=counts.old,
            reason=rollout.reason,
            waiting=waiting,
        )

    def delete_job(self, ref: str) -> JobView:
        """Terminate every instance of a job; it ends TERMINATED once they are all gone."""
        with self._lock:
            since = self._mark()
            job = self._resolve_job(ref)
            if job.deleted_at is None and job.id in self._jobs:
                now = self._clock()
                job = self._save_job(replace(job, deleted_at=now, updated_at=now), job)
                self._emit("job.deleted", job.id, job_id=job.id, reason="deleted by operator")
                self._dirty.add(job.id)
                self._settle()
            view = self._job_view(self._jobs.get(job.id) or self._load_job(job.id) or job)
            mark = self._mark()
        self._durable(since, mark)
        self._kick()
        return view

    # ------------------------------------------------------------------ job views

    def _instances_of(self, job: JobRecord) -> list[InstanceRecord]:
        if job.id in self._jobs:
            return self._job_instances(job.id)
        return [InstanceRecord.from_doc(d) for d in self._find(INSTANCES, {"job_id": job.id})]

    def _job_summary(
        self, job: JobRecord, instances: list[InstanceRecord] | None = None
    ) -> JobSummary:
        if instances is None:
            instances = self._job_instances(job.id) if job.id in self._jobs else []
        running = sum(1 for i in instances if i.state is InstanceState.RUNNING)
        return JobSummary(
            id=job.id,
            name=job.name,
            state=job.state,
            desired_replicas=job.desired,
            actual_replicas=running,
            priority=job.spec.priority,
            runtime=job.spec.runtime.value,
            created_at=job.created_at,
            updated_at=job.updated_at,
            reason=self._job_reason(job, instances),
            job_version=job.job_version,
            rollout_state=job.rollout.state if job.rollout else None,
        )

    def _job_reason(self, job: JobRecord, instances: list[InstanceRecord]) -> str:
        if job.state is not JobState.PENDING and job.state is not JobState.DEGRADED:
            return ""
        pending = [i for i in instances if i.state is InstanceState.PENDING and i.placement]
        if not pending:
            return ""
        latest = max(pending, key=lambda i: (i.placement or {}).get("at", 0.0))
        return str((latest.placement or {}).get("explanation", ""))

    def _instance_view(self, inst: InstanceRecord) -> InstanceView:
        cluster = self._clusters.get(inst.cluster_id) if inst.cluster_id else None
        return InstanceView(
            id=inst.id,
            job_id=inst.job_id,
            replica=inst.replica,
            state=inst.state,
            cluster_id=inst.cluster_id,
            cluster_name=cluster.name if cluster else None,
            node_id=inst.node_id,
            node_name=inst.node_name,
            reason=inst.reason,
            created_at=inst.created_at,
            updated_at=inst.updated_at,
            exit_code=inst.exit_code,
            restarts=inst.restarts,
            terminating=inst.terminate and not inst.state.terminal,
            job_version=inst.job_version,
            placement=PlacementInfo.model_validate(inst.placement) if inst.placement else None,
            inference=None if inst.state.terminal else self._inference.get(inst.id),
        )

    def _job_view(self, job: JobRecord) -> JobView:
        instances = self._instances_of(job)
        summary = self._job_summary(job, instances)
        counts: dict[str, int] = {}
        for inst in instances:
            counts[inst.state.value] = counts.get(inst.state.value, 0) + 1
        active = sorted(
            (i for i in instances if not i.state.terminal), key=lambda i: (i.replica, i.created_at)
        )
        ended = sorted(
            (i for i in instances if i.state.terminal), key=lambda i: i.updated_at, reverse=True
        )[:MAX_TERMINAL_LISTED]
        placed = [i for i in instances if i.placement]
        placement = None
        if placed:
            latest = max(placed, key=lambda i: (i.placement or {}).get("at", 0.0))
            placement = PlacementInfo.model_validate(latest.placement)
        return JobView(
            **summary.model_dump(),
            spec=job.spec,
            deleted_at=job.deleted_at,
            instance_counts=counts,
            placement=placement,
            instances=[self._instance_view(i) for i in active + ended],
            latest_version=job.latest_version,
            rollout=self._rollout_view(job, instances),
            versions=self._version_views(job, with_spec=False),
        )

    # ------------------------------------------------------------------ clusters

    def _cluster_by_ref(self, ref: str) -> ClusterRecord | None:
        rec = self._clusters.get(ref)
        if rec is not None:
            return rec
        for candidate in self._clusters.values():
            if candidate.name == ref:
                return candidate
        return None

    def registration_grant(self, token: str) -> RegistrationGrant | None:
        """What a presented registration token allows: a shared token (settings), a
        name-bound one, or None (unknown: 401). Unauthorized for a known bound token
        that expired unused, so the message can say so."""
        if self._settings.registration_token_ok(token):
            return RegistrationGrant()
        token_id = token_id_of(token)
        rec = self._reg_tokens.get(token_id) if token_id else None
        if rec is None or not verify_secret(token, rec.token_hash):
            return None
        if rec.used_by is None and rec.expires_at is not None and self._clock() > rec.expires_at:
            raise Unauthorized(
                f"registration token {rec.id} for cluster name {rec.name!r} expired unused; "
                "ask an operator for a new one (POST /api/v1/registration-tokens)"
            )
        return RegistrationGrant(token_id=rec.id)

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
        grant = grant or RegistrationGrant()
        with self._lock:
            since = self._mark()
            now = self._clock()
            bound = None
            if grant.token_id is not None:
                bound = self._check_bound_token(grant.token_id, reg)
            old: ClusterRecord | None = None
            credential: str | None = None
            cluster_id = ""
            if reg.cluster_id is not None:
                old = self._clusters.get(reg.cluster_id)
                if old is not None:
                    given = reg.credential.get_secret_value() if reg.credential else ""
                    if not verify_secret(given, old.credential_hash):
                        self._metrics.registrations.inc("refused_identity")
                        raise IdentityRefused(
                            f"wrong credential for cluster id {reg.cluster_id}: register "
                            "afresh (without cluster_id)"
                        )
                    credential = given
                cluster_id = reg.cluster_id
            same_name = next(
                (c for c in self._clusters.values() if c.name == reg.name and c.id != cluster_id),
                None,
            )
            took_over: str | None = None
            if same_name is not None:
                reset = same_name.identity_reset_until
                if old is None and reset is not None and now <= reset:
                    took_over = "identity reset by an operator"
                elif old is None and bound is not None and bound.used_by is None:
                    took_over = f"registration token {bound.id} bound to the name"
                elif old is not None:
                    self._metrics.registrations.inc("refused_takeover")
                    raise Conflict(f"cluster name {reg.name!r} is used by {same_name.id}")
                else:
                    self._metrics.registrations.inc("refused_takeover")
                    log.warning(
                        "refused a registration of cluster name %r from %s: the name belongs "
                        "to cluster %s (%s) and no operator approved a new identity",
                        reg.name,
                        reg.url,
                        same_name.id,
                        same_name.liveness.value,
                    )
                    raise Conflict(takeover_refusal(reg.name, same_name))
                old, cluster_id = same_name, same_name.id
            if not cluster_id:
                cluster_id = "c" + secrets.token_hex(8)
            if credential is None:
                credential = new_secret()
            token = reg.api_token.get_secret_value() if reg.api_token else None
            rec = ClusterRecord(
                id=cluster_id,
                name=reg.name,
                url=str(reg.url).rstrip("/"),
                credential_hash=hash_secret(credential),
                registered_at=old.registered_at if old else now,
                liveness=ClusterLiveness.READY,
                liveness_since=now
                if old is None or old.liveness is not ClusterLiveness.READY
                else old.liveness_since,
                location=reg.location,
                labels=dict(reg.labels),
                api_token=token,
                reason="registered",
                last_report_at=old.last_report_at if old else None,
                report=old.report if old else None,
                identity_reset_until=None if took_over or old is None else old.identity_reset_until,
                version=old.version if old else 0,
            )
            self._save_cluster(rec, old)
            if bound is not None and bound.used_by is None:
                self._save_reg_token(replace(bound, used_by=cluster_id, used_at=now), bound)
            self._seen_at[cluster_id] = now
            how = "re-registered" if old else "registered"
            if took_over:
                how = f"registered with a new identity ({took_over})"
            result = "new_identity" if took_over else ("reregistered" if old else "new")
            self._metrics.registrations.inc(result)
            self._emit(
                "cluster.registered",
                cluster_id,
                cluster_id=cluster_id,
                state=ClusterLiveness.READY.value,
                reason=f"{how} from {rec.url}",
                data={
                    "name": rec.name,
                    "url": rec.url,
                    "labels": rec.labels,
                    "new_identity": took_over is not None,
                },
            )
            if old is not None and old.liveness is not ClusterLiveness.READY:
                self._emit(
                    "cluster.liveness",
                    cluster_id,
                    cluster_id=cluster_id,
                    state=ClusterLiveness.READY.value,
                    reason="re-registered",
                    data={"from": old.liveness.value},
                )
            mark = self._mark()
        self._durable(since, mark)  # the credential is stored before it goes out
        self._kick()
        return ClusterRegistrationResponse(
            cluster_id=cluster_id,
            credential=SecretStr(credential),
            report_interval_s=self._settings.report_interval,
        )

    def _check_bound_token(
        self, token_id: str, reg: ClusterRegistration
    ) -> RegistrationTokenRecord:
        """The bound token of a registration, if it may register `reg` (else Unauthorized)."""
        bound = self._reg_tokens.get(token_id)
        if bound is None:
            self._metrics.registrations.inc("refused_token")
            raise Unauthorized("the registration token was deleted")
        if bound.name != reg.name:
            self._metrics.registrations.inc("refused_token")
            raise Unauthorized(
                f"this registration token only registers cluster name {bound.name!r}, "
                f"not {reg.name!r}"
            )
        if bound.used_by is not None and reg.cluster_id != bound.used_by:
            self._metrics.registrations.inc("refused_token")
            raise Unauthorized(
                f"this registration token was used by cluster {bound.used_by}; it now only "
                "re-registers that cluster (with its cluster_id and credential)"
            )
        return bound

    def _save_reg_token(
        self, new: RegistrationTokenRecord, old: RegistrationTokenRecord | None
    ) -> RegistrationTokenRecord:
        new = replace(new, version=(old.version if old else 0) + 1)
        self._persister.put(REGISTRATION_TOKENS, new.id, new)
        self._reg_tokens[new.id] = new
        return new

    def reset_identity(self, ref: str, ttl_s: float) -> ClusterView:
        """An operator's approval of a new identity for a cluster (by id or name).

        The cluster's credential stops working now, and the next registration of its
        name within `ttl_s` takes the record over (same id, jobs and history) with a
        new credential. For a cluster that lost its stored identity (new disk), or
        whose credential may have leaked.
        """
        with self._lock:
            since = self._mark()
            rec = self._cluster_by_ref(ref)
            if rec is None:
                raise NotFound(f"no cluster {_shown(ref)}")
            now = self._clock()
            new = replace(rec, credential_hash="", identity_reset_until=now + ttl_s)
            new = self._save_cluster(new, rec)
            self._emit(
                "cluster.identity_reset",
                rec.id,
                cluster_id=rec.id,
                state=rec.liveness.value,
                reason=f"identity of cluster {rec.name} reset by an operator: the next "
                f"registration of the name within {ttl_s:g} s takes it over",
                data={"name": rec.name, "until": now + ttl_s},
            )
            view = self._cluster_view(new)
            mark = self._mark()
        self._durable(since, mark)
        return view

    def create_registration_token(self, name: str, ttl_s: float | None) -> RegistrationTokenCreated:
        """A registration token bound to one cluster name; the token is returned once."""
        with self._lock:
            since = self._mark()
            now = self._clock()
            token_id, token = new_token()
            rec = RegistrationTokenRecord(
                id=token_id,
                name=name,
                token_hash=hash_secret(token),
                created_at=now,
                expires_at=now + ttl_s if ttl_s is not None else None,
            )
            rec = self._save_reg_token(rec, None)
            self._emit(
                "cluster.registration_token",
                token_id,
                reason=f"registration token {token_id} created for cluster name {name}",
                data={"name": name, "expires_at": rec.expires_at},
            )
            mark = self._mark()
        self._durable(since, mark)
        return RegistrationTokenCreated(**token_view(rec, now).model_dump(), token=token)

    def list_registration_tokens(self) -> RegistrationTokenList:
        """Every name-bound registration token (without the tokens)."""
        with self._lock:
            now = self._clock()
            recs = sorted(self._reg_tokens.values(), key=lambda r: (r.created_at, r.id))
            return RegistrationTokenList(tokens=[token_view(r, now) for r in recs])

    def delete_registration_token(self, token_id: str) -> RegistrationTokenView:
        """Revoke a name-bound registration token (the cluster it registered keeps its
        credential, but can no longer re-register with this token)."""
        with self._lock:
            since = self._mark()
            rec = self._reg_tokens.get(token_id)
            if rec is None:
                raise NotFound(f"no registration token {_shown(token_id)}")
            self._persister.delete(REGISTRATION_TOKENS, token_id)
            del self._reg_tokens[token_id]
            self._emit(
                "cluster.registration_token",
                token_id,
                reason=f"registration token {token_id} for cluster name {rec.name} deleted",
                data={"name": rec.name, "deleted": True},
            )
            view = token_view(rec, self._clock())
            mark = self._mark()
        self._durable(since, mark)
        return view

    def authenticate_cluster(self, cluster_id: str, credential: str) -> bool:
        """True if `credential` is the one issued to `cluster_id`.

        Without the lock: records are immutable and replaced whole, and reading one
        from the dict is atomic, so a report does not queue for the lock twice.
        """
        rec = self._clusters.get(cluster_id)
        expected = rec.credential_hash if rec else hash_secret(new_secret())
        return verify_secret(credential, expected) and rec is not None

    def apply_report(self, cluster_id: str, report: ClusterReport) -> ClusterLiveness:
        """Take a cluster's aggregated capacity and instance changes."""
        with self._lock:
            since = self._mark()
            old = self._clusters.get(cluster_id)
            if old is None:
                raise Unauthorized("unknown cluster")
            now = self._clock()
            self._metrics.reports.inc("true" if report.full else "false")
            self._seen_at[cluster_id] = now
            newer = old.report is None or report.ts >= old.report.ts or report.seq == 0
            rec = replace(
                old,
                last_report_at=now,
                report=report if newer else old.report,
                liveness=ClusterLiveness.READY,
                liveness_since=now
                if old.liveness is not ClusterLiveness.READY
                else old.liveness_since,
                reason="reporting",
            )
            # The capacity part of a report is volatile (the next report replaces it,
            # and a restarted root gives every cluster a fresh grace period), so the
            # record is written when its liveness or reason changes and otherwise at
            # most once per report_interval, not on every report (reports come with
            # every change of an instance). Instance changes are written as always.
            saved = self._cluster_saved_at.get(cluster_id)
            if (
                old.liveness is not ClusterLiveness.READY
                or old.reason != rec.reason
                or saved is None
                or now - saved >= self._settings.report_interval
            ):
                rec = self._save_cluster(rec, old)
            else:
                rec = replace(rec, version=old.version)
                self._clusters[cluster_id] = rec
            if old.liveness is not ClusterLiveness.READY:
                self._emit(
                    "cluster.liveness",
                    cluster_id,
                    cluster_id=cluster_id,
                    state=ClusterLiveness.READY.value,
                    reason="reporting again",
                    data={"from": old.liveness.value},
                )
            reserved = self._reservations.get(cluster_id, {})
            for change in report.instances:
                reserved.pop(change.instance_id, None)
                self._apply_change(rec, change)
            if report.full:
                self._check_missing(rec, report, now)
            self._settle()
            wake = bool(self._strays or self._pending_ids or self._to_terminate)
            grew = old.report is None or _capacity_grew(old.report, report)
            if grew:
                self._capacity_version[cluster_id] = self._capacity_version.get(cluster_id, 0) + 1
            mark = self._mark()
        self._durable(since, mark)  # the cluster drops what it reported once we answer
        if wake and (grew or old.liveness is not ClusterLiveness.READY or self._strays):
            self._kick()
        return ClusterLiveness.READY

    def _apply_change(self, cluster: ClusterRecord, change: InstanceChange) -> None:
        inst = self._instances.get(change.instance_id)
        key = (cluster.id, change.instance_id)
        wanted_here = inst is not None and inst.cluster_id == cluster.id and not inst.state.terminal
        if not wanted_here:
            if not change.state.terminal:
                self._strays.setdefault(key, self._clock())
            else:
                self._strays.pop(key, None)
            return
        assert inst is not None
        self._take_inference(change)
        if change.ts < inst.cluster_ts:
            return  # older than what we already applied
        state = change.state
        if state is InstanceState.PENDING:
            state = InstanceState.SCHEDULED  # the cluster has it but no node yet
        changes: dict[str, Any] = {"cluster_ts": change.ts}
        if change.node_id is not None:
            changes["node_id"] = change.node_id
            node_name = change.data.get("node_name")
            if isinstance(node_name, str):
                changes["node_name"] = node_name
        if change.exit_code is not None:
            changes["exit_code"] = change.exit_code
        node_restarts = change.data.get("restarts")
        if isinstance(node_restarts, int) and node_restarts > inst.node_restarts:
            changes["node_restarts"] = node_restarts
        if inst.assigned_at is None:
            changes["assigned_at"] = self._clock()
        reason = change.reason or f"reported by cluster {cluster.name}"
        if state is inst.state and all(
            getattr(inst, k) == v for k, v in changes.items() if k != "cluster_ts"
        ):
            if change.ts > inst.cluster_ts:
                self._save_instance(replace(inst, cluster_ts=change.ts), inst)
            return
        if state is inst.state:
            self._save_instance(replace(inst, updated_at=self._clock(), **changes), inst)
            return
        self._transition(inst, state, reason, **changes)

    def _take_inference(self, change: InstanceChange) -> None:
        """Keep the inference figures a change carries (any report of the owning cluster
        has the latest ones; they are not persisted)."""
        raw = change.data.get("inference")
        stats = None
        if isinstance(raw, dict) and not change.state.terminal:
            try:
                stats = InferenceStats.model_validate(raw)
            except ValidationError:
                stats = None
        if stats is None:
            self._inference.pop(change.instance_id, None)
        else:
            self._inference[change.instance_id] = stats

    def _check_missing(self, cluster: ClusterRecord, report: ClusterReport, now: float) -> None:
        listed = {c.instance_id for c in report.instances}
        for inst in self._cluster_instances(cluster.id):
            if (
                inst.id not in listed
                and inst.id not in self._in_flight
                and inst.assigned_at is not None
                and inst.assigned_at < now - MISSING_GRACE_S
            ):
                if inst.terminate:
                    self._transition(
                        inst, InstanceState.TERMINATED, inst.terminate_reason or "terminated"
                    )
                else:
                    self._transition(
                        inst,
                        InstanceState.LOST,
                        f"cluster {cluster.name} no longer reports this instance",
                    )

    def cluster_endpoint(self, ref: str) -> tuple[ClusterRecord, str | None]:
        """(cluster, API token) for calling a cluster's API."""
        with self._lock:
            rec = self._cluster_by_ref(ref)
            if rec is None:
                raise NotFound(f"no cluster {_shown(ref)}")
            return rec, rec.api_token

    def log_target(self, job_ref: str, instance_id: str) -> LogTarget:
        """Where an instance of a job (by id or name) runs, to read its logs there.

        NotFound for an unknown job, or an instance that is not one of the job's.
        """
        with self._lock:
            job = self._resolve_job(job_ref)
            inst = self._instances.get(instance_id)
            if inst is None:
                doc = self._persister.get(INSTANCES, instance_id)
                inst = InstanceRecord.from_doc(doc) if doc else None
            if inst is None or inst.job_id != job.id:
                raise NotFound(f"job {job.name} has no instance {instance_id!r}")
            cluster = self._clusters.get(inst.cluster_id) if inst.cluster_id else None
            return LogTarget(
                job_id=job.id,
                job_name=job.name,
                instance_id=inst.id,
                replica=inst.replica,
                state=inst.state,
                cluster_id=cluster.id if cluster else None,
                cluster_name=cluster.name if cluster else "",
                cluster_url=cluster.url if cluster else "",
                token=cluster.api_token if cluster else None,
                liveness=cluster.liveness if cluster else None,
            )

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
        reason = f"{action} of node {node_name} on cluster {cluster.name} by an operator"
        if action == "drain":
            reason += f": {moved} instance(s) moved, {stuck} stuck"
        with self._lock:
            since = self._mark()
            self._emit(
                f"node.{action}",
                node_id,
                reason=reason,
                cluster_id=cluster.id,
                node_id=node_id,
                data={"node_name": node_name, "moved": moved, "stuck": stuck},
            )
            mark = self._mark()
        self._durable(since, mark)

    def _cluster_view(self, rec: ClusterRecord) -> ClusterView:
        now = self._clock()
        counts: dict[str, int] = {}
        for inst in self._cluster_instances(rec.id):
            counts[inst.state.value] = counts.get(inst.state.value, 0) + 1
        return ClusterView(
            id=rec.id,
            name=rec.name,
            url=rec.url,
            location=rec.location,
            labels=dict(rec.labels),
            liveness=rec.liveness,
            liveness_since=rec.liveness_since,
            reason=rec.reason,
            registered_at=rec.registered_at,
            last_report_at=rec.last_report_at,
            seconds_since_report=now - rec.last_report_at if rec.last_report_at else None,
            has_api_token=rec.api_token is not None,
            instances=counts,
            report=rec.report,
            identity_reset_until=rec.identity_reset_until,
        )

    def list_clusters(self) -> ClusterList:
        """Every registered cluster, by name."""
        with self._lock:
            recs = sorted(self._clusters.values(), key=lambda c: (c.name, c.id))
            return ClusterList(clusters=[self._cluster_view(c) for c in recs])

    def get_cluster(self, ref: str) -> ClusterView:
        """One cluster by id or name."""
        with self._lock:
            rec = self._cluster_by_ref(ref)
            if rec is None:
                raise NotFound(f"no cluster {_shown(ref)}")
            return self._cluster_view(rec)

    # ------------------------------------------------------------------ liveness

    def check_liveness(self) -> None:
        """Mark silent clusters UNREACHABLE, then LOST (their instances LOST too)."""
        settings = self._settings
        with self._lock:
            now = self._clock()
            for old in list(self._clusters.values()):
                silent = now - self._seen_at.get(old.id, now)
                rec = old
                if rec.liveness is ClusterLiveness.READY and silent > (
                    settings.cluster_unreachable_after
                ):
                    rec = self._set_liveness(
                        rec, ClusterLiveness.UNREACHABLE, f"no report for {silent:.1f}s"
                    )
                if rec.liveness is not ClusterLiveness.LOST and silent > (
                    settings.cluster_lost_after
                ):
                    rec = self._set_liveness(
                        rec, ClusterLiveness.LOST, f"no report for {silent:.1f}s"
                    )
                if rec.liveness is ClusterLiveness.READY:
                    continue
                for inst in self._cluster_instances(rec.id):
                    if inst.state.terminal:  # lost earlier in this loop
                        continue
                    if rec.liveness is ClusterLiveness.LOST:
                        self._lose(inst, f"cluster {rec.name} lost (silent {silent:.0f}s)")
                        continue
                    job = self._jobs.get(inst.job_id)
                    grace = job.spec.lost_grace_s if job else None
                    if grace is not None and silent > grace:
                        self._lose(
                            inst,
                            f"cluster {rec.name} unreachable for {silent:.0f}s "
                            f"> the job's lost_grace_s {grace:g}",
                        )
            self._settle()

    def _lose(self, inst: InstanceRecord, reason: str) -> None:
        if inst.terminate:
            reason = f"{reason}; termination could not be confirmed"
        self._transition(inst, InstanceState.LOST, reason)

    def _set_liveness(
        self, rec: ClusterRecord, liveness: ClusterLiveness, reason: str
    ) -> ClusterRecord:
        new = replace(rec, liveness=liveness, liveness_since=self._clock(), reason=reason)
        new = self._save_cluster(new, rec)
        self._emit(
            "cluster.liveness",
            rec.id,
            cluster_id=rec.id,
            state=liveness.value,
            reason=reason,
            data={"from": rec.liveness.value},
        )
        if liveness is not ClusterLiveness.READY:
            self._reservations.pop(rec.id, None)
        return new

    # ------------------------------------------------------------------ reconcile

    def reconcile_all(self) -> None:
        """Replica diffing for every live job (the periodic, level-triggered pass)."""
        with self._lock:
            self._dirty.update(self._jobs)
            self._settle()

    def pass_work(self, *, sweep: bool) -> PassWork:
        """One reconcile pass's look at the state, under one hold of the lock.

        Liveness first, then (with `sweep`) the replica diff of every job, then the
        DELETEs to send and the instances to place. One call instead of four keeps a
        pass from queueing for the lock four times behind API calls and reports.
        """
        with self._lock:
            since = self._mark()
            self.check_liveness()
            if sweep:
                self.reconcile_all()
            else:
                # health windows end without an event: every pass looks at the rollouts
                self._dirty.update(
                    j.id for j in self._jobs.values() if j.rollout is not None and j.rollout.active
                )
                self._settle()
            work = PassWork(
                terminations=self.termination_work(),
                placements=self.placement_work(),
                wake_in=_soonest(self._rollout_wake_in(), self._liveness_wake_in()),
            )
            mark = self._mark()
        if work.terminations:
            self._durable(since, mark)  # a DELETE goes out once the root's wish to stop is stored
        return work

    def _liveness_wake_in(self) -> float | None:
        """Seconds until a cluster's silence crosses the next liveness threshold (or a
        job's lost_grace_s while it is UNREACHABLE), so that a silent cluster is
        marked (and its instances replaced) when it is due, not up to a reconcile
        interval later."""
        now = self._clock()
        settings = self._settings
        soonest: float | None = None
        for rec in self._clusters.values():
            if rec.liveness is ClusterLiveness.LOST:
                continue
            seen = self._seen_at.get(rec.id, now)
            limits = [settings.cluster_lost_after]
            if rec.liveness is ClusterLiveness.READY:
                limits.append(settings.cluster_unreachable_after)
            for limit in limits:
                soonest = _soonest(soonest, seen + limit - now + 0.01)
        return soonest if soonest is None or soonest > 0 else 0.01

    def _rollout_wake_in(self) -> float | None:
        """Seconds until the next health window or progress deadline of an active
        rollout ends (so the reconciler looks again right then)."""
        now = self._clock()
        soonest: float | None = None
        for job in self._jobs.values():
            rollout = job.rollout
            if rollout is None or not rollout.active:
                continue
            strategy = job.spec.update
            times = [rollout.progress_at + strategy.progress_deadline_s]
            for inst in self._job_instances(job.id):
                if (
                    inst.job_version == rollout.target_version
                    and inst.state is InstanceState.RUNNING
                    and inst.running_since is not None
                    and not inst.terminate
                ):
                    times.append(inst.running_since + strategy.min_healthy_s)
            for at in times:
                if at > now and (soonest is None or at - now < soonest):
                    soonest = at - now
        return soonest

    def placement_work(self) -> list[str]:
        """Instances to place now: PENDING, or SCHEDULED but never acknowledged.

        Highest priority first, then oldest first.
        """
        with self._lock:
            work = []
            for iid in self._to_place:
                inst = self._instances[iid]
                if inst.id in self._in_flight or inst.terminate:
                    continue
                job = self._jobs.get(inst.job_id)
                if job is None or job.deleted_at is not None:
                    continue
                if inst.state is InstanceState.PENDING or (
                    inst.state is InstanceState.SCHEDULED and inst.assigned_at is None
                ):
                    work.append((-job.spec.priority, inst.pending_since or 0.0, inst.id))
            return [iid for _p, _t, iid in sorted(work)]

    def pending_count(self) -> int:
        """How many instances wait for a cluster."""
        with self._lock:
            return len(self._pending_ids)

    def _snapshots(self, exclude: Iterable[str], *, prune: bool = True) -> list[ClusterSnapshot]:
        now = self._clock()
        max_age = max(3 * self._settings.report_interval, 10.0)
        skip = set(exclude)
        snaps = []
        for rec in sorted(self._clusters.values(), key=lambda c: c.id):
            if rec.id in skip:
                continue
            reserved = self._reservations.get(rec.id, {})
            for iid, (_req, at) in list(reserved.items()):
                if prune and now - at > max_age:
                    del reserved[iid]
            snaps.append(
                ClusterSnapshot(
                    id=rec.id,
                    name=rec.name,
                    ready=rec.liveness is ClusterLiveness.READY,
                    report=rec.report,
                    labels=rec.labels,
                    reserved=tuple(req for req, _at in reserved.values()),
                )
            )
        return snaps

    def _recent_refusals(self, instance_id: str) -> dict[str, ClusterRejection]:
        """Clusters that refused this instance recently and have not grown since.

        They are not asked again until their report shows more capacity or
        REFUSAL_TTL_S has passed, so a refusing cluster is not hammered every pass.
        """
        now = self._clock()
        out: dict[str, ClusterRejection] = {}
        refusals = self._refusals.get(instance_id, {})
        for cluster_id, (rejection, at, version) in list(refusals.items()):
            fresh = now - at < REFUSAL_TTL_S
            if fresh and version == self._capacity_version.get(cluster_id, 0):
                out[cluster_id] = rejection
            else:
                del refusals[cluster_id]
        return out

    def _drop_reservation(self, instance_id: str) -> None:
        for reserved in self._reservations.values():
            reserved.pop(instance_id, None)

    def begin_placement(
        self, instance_id: str, rejections: Mapping[str, ClusterRejection]
    ) -> PlacementStep | None:
        """Choose a cluster for a PENDING instance, record SCHEDULED and reserve.

        `rejections` holds the clusters that refused it during this attempt (they are
        left out). Returns the call to make, or None when the instance stays where it
        is (PENDING with its reasons, or no longer needs placing).
        """
        with self._lock:
            since = self._mark()
            step = self._begin(instance_id, rejections)
            mark = self._mark()
        if step is not None:
            self._durable_or_release(since, mark, [step])
        return step

    def begin_placements(self, instance_ids: Iterable[str]) -> list[PlacementStep]:
        """`begin_placement` for several instances under one hold of the lock and one
        wait for the store (no clusters left out beyond their recent refusals)."""
        with self._lock:
            since = self._mark()
            steps = [s for s in (self._begin(i, {}) for i in instance_ids) if s is not None]
            mark = self._mark()
        if steps:
            self._durable_or_release(since, mark, steps)
        return steps

    def _durable_or_release(self, since: int, mark: int, steps: list[PlacementStep]) -> None:
        """Wait until the decisions are stored before the clusters are asked; if they
        cannot be, the steps are not sent (a later pass resumes them, SCHEDULED)."""
        try:
            self._durable(since, mark)
        except BaseException:
            with self._lock:
                for step in steps:
                    self._in_flight.discard(step.instance_id)
            raise

    def _begin(
        self, instance_id: str, rejections: Mapping[str, ClusterRejection]
    ) -> PlacementStep | None:
        """The decision part of `begin_placement` (lock held)."""
        inst = self._instances.get(instance_id)
        if inst is None or instance_id in self._in_flight or inst.terminate:
            return None
        job = self._jobs.get(inst.job_id)
        if job is None or job.deleted_at is not None:
            return None
        if inst.state is InstanceState.SCHEDULED and inst.assigned_at is None:
            cluster = self._clusters.get(inst.cluster_id or "")
            if cluster is not None and cluster.id not in rejections:
                if cluster.liveness is ClusterLiveness.READY:
                    # Resume an unanswered placement (e.g. after a restart of the
                    # root): the cluster's placement is idempotent by instance id.
                    return self._step(inst, job, cluster, pinned=False)
                if cluster.liveness is ClusterLiveness.UNREACHABLE:
                    return None
            inst = self._transition(
                inst,
                InstanceState.PENDING,
                "placement not confirmed; placing again",
                cluster_id=None,
                node_id=None,
                node_name=None,
            )
        if inst.state is not InstanceState.PENDING:
            return None
        rejections = {**self._recent_refusals(inst.id), **rejections}
        started = time.perf_counter()
        pinned = self._spec_for(job, inst.job_version).constraints.cluster
        if pinned is not None:
            step = self._place_pinned(inst, job, pinned, rejections)
        else:
            step = self._place_scheduled(inst, job, rejections)
        self._metrics.decision_seconds.observe(time.perf_counter() - started)
        self._settle()
        return step

    def _place_pinned(
        self,
        inst: InstanceRecord,
        job: JobRecord,
        name: str,
        rejections: Mapping[str, ClusterRejection],
    ) -> PlacementStep | None:
        cluster = self._cluster_by_ref(name)
        if cluster is None:
            self._pending(
                inst, f"cluster {name} (constraints.cluster) is not registered", None, rejections
            )
            return None
        if cluster.id in rejections:
            self._pending(
                inst, f"cluster {name} (constraints.cluster) refused it", None, rejections
            )
            return None
        if cluster.liveness is not ClusterLiveness.READY:
            self._pending(
                inst,
                f"cluster {name} (constraints.cluster) is {cluster.liveness.value}",
                None,
                rejections,
            )
            return None
        info = PlacementInfo(
            at=self._clock(),
            instance_id=inst.id,
            outcome="forwarded",
            cluster_id=cluster.id,
            cluster_name=cluster.name,
            explanation=f"forwarded to cluster {cluster.name} named by constraints.cluster "
            "(no root scheduling)",
        )
        self._metrics.placements.inc("forwarded")
        return self._schedule(inst, job, cluster, info, pinned=True)

    def _place_scheduled(
        self, inst: InstanceRecord, job: JobRecord, rejections: Mapping[str, ClusterRejection]
    ) -> PlacementStep | None:
        spec = self._spec_for(job, inst.job_version)
        request = request_for(
            spec, spec.constraints, spec.placement_policy.value if spec.placement_policy else None
        )
        candidates = build_candidates(request, self._snapshots(rejections))
        existing: dict[str, int] = {}
        for other in self._job_instances(job.id):
            if other.cluster_id and not other.state.terminal and other.id != inst.id:
                existing[other.cluster_id] = existing.get(other.cluster_id, 0) + 1
        decision = place(
            request,
            candidates,
            self._settings.placement_policy,
            self._rng,
            existing=existing,
            noun="cluster",
        )
        chosen = decision.chosen
        if chosen is None:
            text = _pending_text(decision, rejections, bool(self._clusters))
            self._pending(inst, text, decision, rejections)
            return None
        cluster = self._clusters[chosen.id]
        info = PlacementInfo(
            at=self._clock(),
            instance_id=inst.id,
            outcome="scheduled",
            cluster_id=cluster.id,
            cluster_name=cluster.name,
            explanation=_with_rejections(decision.explain(), rejections),
            decision=decision.to_dict(limit=10),
            cluster_rejections=list(rejections.values()),
        )
        self._reservations.setdefault(cluster.id, {})[inst.id] = (request, self._clock())
        return self._schedule(inst, job, cluster, info, pinned=False)

    def _schedule(
        self,
        inst: InstanceRecord,
        job: JobRecord,
        cluster: ClusterRecord,
        info: PlacementInfo,
        *,
        pinned: bool,
    ) -> PlacementStep:
        placement = info.model_dump(mode="json")
        inst = self._transition(
            inst,
            InstanceState.SCHEDULED,
            info.explanation,
            cluster_id=cluster.id,
            node_id=None,
            node_name=None,
            placement=placement,
        )
        self._emit(
            "scheduling.decision",
            inst.id,
            job_id=job.id,
            instance_id=inst.id,
            cluster_id=cluster.id,
            reason=info.explanation,
            data={"outcome": info.outcome, "decision": info.decision},
        )
        return self._step(inst, job, cluster, pinned=pinned)

    def _step(
        self, inst: InstanceRecord, job: JobRecord, cluster: ClusterRecord, *, pinned: bool
    ) -> PlacementStep:
        self._in_flight.add(inst.id)
        spec = self._spec_for(job, inst.job_version)
        request = PlaceInstanceRequest(
            instance_id=inst.id,
            job_id=job.id,
            job_name=job.name,
            replica=inst.replica,
            spec=spec.task_spec(),
            constraints=spec.constraints,
            placement_policy=spec.placement_policy,
            lost_grace_s=spec.lost_grace_s,
            job_version=inst.job_version,
        )
        return PlacementStep(
            instance_id=inst.id,
            cluster_id=cluster.id,
            cluster_name=cluster.name,
            url=cluster.url,
            token=cluster.api_token,
            request=request,
            pinned=pinned,
        )

    def _pending(
        self,
        inst: InstanceRecord,
        text: str,
        decision: Decision | None,
        rejections: Mapping[str, ClusterRejection],
    ) -> None:
        """Leave an instance PENDING with its reasons (an event only when they change)."""
        self._metrics.placements.inc("pending")
        info = PlacementInfo(
            at=self._clock(),
            instance_id=inst.id,
            outcome="pending",
            explanation=_short(text),
            decision=decision.to_dict(limit=10) if decision else None,
            cluster_rejections=list(rejections.values()),
        )
        previous = (inst.placement or {}).get("explanation")
        placement = info.model_dump(mode="json")
        if previous == info.explanation and inst.placement is not None:
            return
        self._save_instance(replace(inst, placement=placement, reason=info.explanation), inst)
        self._emit(
            "scheduling.pending",
            inst.id,
            job_id=inst.job_id,
            instance_id=inst.id,
            state=InstanceState.PENDING.value,
            reason=info.explanation,
            data={
                "rejections": decision.rejections if decision else {},
                "cluster_rejections": {r.cluster_name: r.reasons for r in rejections.values()},
            },
        )
        self._dirty.add(inst.job_id)

    def finish_placements(
        self,
        answers: list[tuple[PlacementStep, PlaceInstanceResponse | None, str | None]],
    ) -> list[tuple[Literal["accepted", "rejected", "gone"], ClusterRejection | None]]:
        """`finish_placement` for each (step, answer, error), under one hold of the lock."""
        with self._lock:
            return [self.finish_placement(step, resp, err) for step, resp, err in answers]

    def finish_placement(
        self,
        step: PlacementStep,
        response: PlaceInstanceResponse | None,
        error: str | None = None,
    ) -> tuple[Literal["accepted", "rejected", "gone"], ClusterRejection | None]:
        """Record a cluster's answer to a placement (or the error that replaced it).

        Returns the outcome and, for a refusal, what the next attempt must know.
        """
        with self._lock:
            self._in_flight.discard(step.instance_id)
            inst = self._instances.get(step.instance_id)
            accepted = response is not None and response.accepted
            if inst is None or inst.state.terminal or inst.cluster_id != step.cluster_id:
                if accepted:
                    self._strays.setdefault((step.cluster_id, step.instance_id), self._clock())
                    self._kick()
                return "gone", None
            if accepted:
                assert response is not None
                self._metrics.placements.inc("accepted")
                node = response.node_name or response.node_id or "?"
                changes: dict[str, Any] = {"assigned_at": self._clock()}
                if response.node_id:
                    changes["node_id"] = response.node_id
                if response.node_name:
                    changes["node_name"] = response.node_name
                if inst.pending_since is not None:
                    self._metrics.scheduling_seconds.observe(
                        max(0.0, self._clock() - inst.pending_since)
                    )
                if inst.state is InstanceState.SCHEDULED:
                    self._transition(
                        inst,
                        InstanceState.ASSIGNED,
                        f"accepted by cluster {step.cluster_name} on node {node}",
                        **changes,
                    )
                else:
                    self._save_instance(replace(inst, **changes), inst)
                self._settle()
                if inst.terminate:
                    self._kick()
                return "accepted", None
            self._metrics.placements.inc("error" if response is None else "rejected")
            if response is not None:
                rejection = ClusterRejection(
                    cluster_id=step.cluster_id,
                    cluster_name=step.cluster_name,
                    reasons=dict(response.reasons),
                    explanation=response.explanation or _format_reasons(response.reasons),
                )
            else:
                rejection = ClusterRejection(
                    cluster_id=step.cluster_id,
                    cluster_name=step.cluster_name,
                    reasons={"cluster unavailable": 1},
                    explanation=_short(error or "no answer"),
                )
            self._emit(
                "scheduling.rejected",
                inst.id,
                job_id=inst.job_id,
                instance_id=inst.id,
                cluster_id=step.cluster_id,
                reason=f"cluster {step.cluster_name} refused: {rejection.explanation}",
                data={"reasons": rejection.reasons, "error": response is None},
            )
            if response is None:
                # The cluster may have taken it before the error: if it reports it
                # later, the report marks it a stray and the root deletes it there.
                log.warning("placement of %s on %s failed: %s", inst.id, step.cluster_name, error)
            if inst.terminate:
                self._transition(
                    inst,
                    InstanceState.TERMINATED,
                    inst.terminate_reason or "terminated",
                    cluster_id=None,
                )
            else:
                self._transition(
                    inst,
                    InstanceState.PENDING,
                    f"cluster {step.cluster_name} refused: {rejection.explanation}",
                    cluster_id=None,
                    node_id=None,
                    node_name=None,
                )
            self._refusals.setdefault(inst.id, {})[step.cluster_id] = (
                rejection,
                self._clock(),
                self._capacity_version.get(step.cluster_id, 0),
            )
            self._settle()
            return "rejected", rejection

    # ------------------------------------------------------------------ termination

    def termination_work(self) -> list[TerminateStep]:
        """DELETEs to send: instances the root wants gone, and strays on clusters."""
        with self._lock:
            steps = []
            for iid in sorted(self._to_terminate):
                inst = self._instances[iid]
                if not inst.terminate or inst.state.terminal or inst.id in self._in_flight:
                    continue
                cluster = self._clusters.get(inst.cluster_id or "")
                if cluster is None:
                    continue
                if cluster.liveness is ClusterLiveness.READY:
                    steps.append(
                        TerminateStep(
                            inst.id,
                            cluster.id,
                            cluster.name,
                            cluster.url,
                            cluster.api_token,
                            stray=False,
                        )
                    )
            for cluster_id, iid in sorted(self._strays):
                cluster = self._clusters.get(cluster_id)
                if cluster is None:
                    del self._strays[(cluster_id, iid)]
                    continue
                if cluster.liveness is ClusterLiveness.READY:
                    steps.append(
                        TerminateStep(
                            iid,
                            cluster.id,
                            cluster.name,
                            cluster.url,
                            cluster.api_token,
                            stray=True,
                        )
                    )
            return steps

    def finish_termination(self, step: TerminateStep, ok: bool, error: str | None = None) -> None:
        """Record the answer to a DELETE (ok: the cluster no longer runs it)."""
        with self._lock:
            if step.stray:
                if ok:
                    self._strays.pop((step.cluster_id, step.instance_id), None)
                    self._emit(
                        "cluster.stray_deleted",
                        step.cluster_id,
                        cluster_id=step.cluster_id,
                        instance_id=step.instance_id,
                        reason=f"cluster {step.cluster_name} ran an instance the root placed "
                        "elsewhere or ended; deleted there",
                    )
                return
            inst = self._instances.get(step.instance_id)
            if inst is None or inst.state.terminal or inst.cluster_id != step.cluster_id:
                return
            if ok:
                self._transition(
                    inst,
                    InstanceState.TERMINATED,
                    inst.terminate_reason or "terminated by the root",
                )
                self._settle()
            else:
                log.warning("terminating %s on %s failed: %s", inst.id, step.cluster_name, error)

    # ------------------------------------------------------------------ metrics

    def gauges(self) -> list[GaugeFamily]:
        """Jobs, instances and clusters by state, counted in the store."""
        self._settled_store()
        store = self._store
        jobs: dict[tuple[str, ...], float] = {
            (s.value,): float(store.count(JOBS, {"state": s.value})) for s in JobState
        }
        instances: dict[tuple[str, ...], float] = {
            (s.value,): float(store.count(INSTANCES, {"state": s.value})) for s in InstanceState
        }
        with self._lock:
            clusters: dict[tuple[str, ...], float] = {(s.value,): 0.0 for s in ClusterLiveness}
            for rec in self._clusters.values():
                clusters[(rec.liveness.value,)] += 1
            pending = float(len(self._in_flight))
            strays = float(len(self._strays))
        return [
            GaugeFamily("edge_root_jobs", "Jobs by state.", ("state",), jobs),
            GaugeFamily("edge_root_instances", "Instances by state.", ("state",), instances),
            GaugeFamily("edge_root_clusters", "Clusters by liveness.", ("liveness",), clusters),
            GaugeFamily(
                "edge_root_placements_in_flight",
                "Placement calls to clusters awaiting an answer.",
                (),
                {(): pending},
            ),
            GaugeFamily(
                "edge_root_stray_instances",
                "Instances clusters run that the root wants deleted there.",
                (),
                {(): strays},
            ),
            GaugeFamily(
                "edge_root_event_stream_subscribers",
                "Live event streams.",
                (),
                {(): float(self._bus.subscribers)},
            ),
        ]

    def ping_store(self) -> None:
        """Raise if the store does not answer (health check)."""
        self._store.count(CLUSTERS)


# ---------------------------------------------------------------------- helpers


def _soonest(a: float | None, b: float | None) -> float | None:
    """The smaller of two optional delays (None: none)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _where(**fields: str | None) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _event_out(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored event document as the API shows it (EventRecord fields)."""
    return {
        "id": doc["_id"],
        "seq": doc["seq"],
        "ts": doc["ts"],
        "kind": doc["kind"],
        "subject": doc["subject"],
        "job_id": doc.get("job_id"),
        "instance_id": doc.get("instance_id"),
        "node_id": doc.get("node_id"),
        "cluster_id": doc.get("cluster_id"),
        "state": doc.get("state"),
        "reason": doc.get("reason", ""),
        "data": doc.get("data") or {},
    }


def _with_rejections(text: str, rejections: Mapping[str, ClusterRejection]) -> str:
    if not rejections:
        return text
    refused = "; ".join(
        f"cluster {r.cluster_name} refused: {r.explanation}" for r in rejections.values()
    )
    return f"{text}; {refused}"


def _pending_text(
    decision: Decision, rejections: Mapping[str, ClusterRejection], any_cluster: bool
) -> str:
    if not any_cluster:
        return "pending: no cluster is registered"
    parts = []
    if decision.considered:
        parts.append(decision.explain())
    refused = [f"cluster {r.cluster_name} refused: {r.explanation}" for r in rejections.values()]
    if not parts and refused:
        parts.append("no candidate fits: every cluster refused")
    return "pending: " + "; ".join(parts + refused)


def _capacity_grew(old: ClusterReport, new: ClusterReport) -> bool:
    """True if the new report may fit something the old one did not."""
    if new.free.cpu > old.free.cpu or new.free.memory_mib > old.free.memory_mib:
        return True
    if new.free.disk_mib > old.free.disk_mib:
        return True
    if new.largest_free_cpu > old.largest_free_cpu:
        return True
    if new.largest_free_memory_mib > old.largest_free_memory_mib:
        return True
    if set(new.runtimes) - set(old.runtimes) or set(new.archs) - set(old.archs):
        return True
    return any(
        new.free.accelerators.get(k, 0) > old.free.accelerators.get(k, 0)
        for k in new.free.accelerators
    )


_ID_RE = re.compile(ID_PATTERN)
_NAME_RE = re.compile(NAME_PATTERN)


def _shown(ref: str, limit: int = 80) -> str:
    """A reference quoted for an error message, shortened when it is long."""
    if len(ref) <= limit:
        return repr(ref)
    return f"{ref[:limit]!r}... ({len(ref)} characters)"
