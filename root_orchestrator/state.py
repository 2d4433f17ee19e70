"""The root's state tables: everything it knows, in memory, in one place.

`RootState` is a plain object, like `cluster_orchestrator/state.py`: the resource
modules (`jobs`, `clusters`, `placing`, `lifecycle`, `rollouts`, `liveness`, `views`,
`events`) are functions over it; `service.RootService` is their facade and the
owner of the lock. It mirrors the live part of the store (jobs that are not
TERMINATED with all their instances, every cluster); every change lands here and
is queued, in order, for the store writer (`persister.Persister`), so no store write
happens under `lock`. Indexes by cluster and by what needs doing (placing,
terminating) keep each event's work independent of the fleet's size.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from placement import Request
from root_orchestrator.bus import EventBus
from root_orchestrator.metrics import RootMetrics
from root_orchestrator.persister import Persister
from root_orchestrator.records import (
    ClusterRecord,
    InstanceRecord,
    JobRecord,
    RegistrationTokenRecord,
    VersionRecord,
)
from root_orchestrator.settings import RootSettings
from root_orchestrator.texts import event_out
from schemas.node import InferenceStats
from schemas.root_api import ClusterRejection
from store import Store

__all__ = [
    "DURABLE_TIMEOUT_S",
    "MAX_TERMINAL_LISTED",
    "MAX_VERSIONS",
    "MISSING_GRACE_S",
    "PRUNE_BATCH",
    "REFUSAL_TTL_S",
    "RootState",
]

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


class ServiceLock:
    """The service's lock (reentrant). While it is held, the store writer is not
    woken for each write queued; releasing the outermost hold wakes it once for all
    of them (`Persister.hold` / `release`), so a call's writes share one commit."""

    __slots__ = ("_depth", "_lock", "persister")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self.persister: Persister | None = None

    def __enter__(self) -> bool:
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1 and self.persister is not None:
            self.persister.hold()
        return True

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        outermost = self._depth == 0
        self._lock.release()
        if outermost and self.persister is not None:
            # after the release: the writer may take the writes at once
            self.persister.release()


@dataclass(slots=True, eq=False)
class RootState:
    """Jobs, instances, clusters, tokens and work indexes of the root, behind `lock`.

    `clock` and `rng` are what decisions depend on besides the tables (injected in
    tests); `persister` is the store writer every change is queued to.
    """

    store: Store
    settings: RootSettings
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    bus: EventBus = field(default_factory=EventBus)
    metrics: RootMetrics = field(default_factory=RootMetrics)
    lock: ServiceLock = field(default_factory=ServiceLock)
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    instances: dict[str, InstanceRecord] = field(default_factory=dict)
    by_job: dict[str, set[str]] = field(default_factory=dict)
    clusters: dict[str, ClusterRecord] = field(default_factory=dict)
    reg_tokens: dict[str, RegistrationTokenRecord] = field(default_factory=dict)
    seen_at: dict[str, float] = field(default_factory=dict)
    reservations: dict[str, dict[str, tuple[Request, float]]] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    strays: dict[tuple[str, str], float] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    refusals: dict[str, dict[str, tuple[ClusterRejection, float, int]]] = field(
        default_factory=dict
    )
    capacity_version: dict[str, int] = field(default_factory=dict)
    #: latest inference figures per instance from cluster reports (memory only)
    inference: dict[str, InferenceStats] = field(default_factory=dict)
    #: versions of job specs by job id, loaded from the store when first needed
    versions: dict[str, dict[int, VersionRecord]] = field(default_factory=dict)
    seq: int = 0
    last_id_ms: int = 0
    pruned_to: int = 0
    listeners: list[Callable[[], None]] = field(default_factory=list)
    started: bool = False
    #: indexes (kept by `writes.index`): live instances by cluster; instances to place
    #: (PENDING, or SCHEDULED and never answered; not terminating); instances to
    #: terminate (live, with `terminate`); PENDING instances; active jobs by name
    on_cluster: dict[str, set[str]] = field(default_factory=dict)
    to_place: set[str] = field(default_factory=set)
    to_terminate: set[str] = field(default_factory=set)
    pending_ids: set[str] = field(default_factory=set)
    active_names: dict[str, str] = field(default_factory=dict)
    #: when each cluster's record was last queued for the store (see clusters.apply_report)
    cluster_saved_at: dict[str, float] = field(default_factory=dict)
    persister: Persister = field(init=False)

    def __post_init__(self) -> None:
        self.persister = Persister(
            self.store, publish_many=self._publish_many, on_commit=self._committed
        )
        self.lock.persister = self.persister

    def now(self) -> float:
        """The state's clock (injectable for tests)."""
        return self.clock()

    def _publish_many(self, docs: list[dict[str, Any]]) -> None:
        """The durable events of one commit to the live streams (on the writer thread)."""
        self.bus.publish_many([event_out(doc) for doc in docs])

    def _committed(self, documents: int, commits: int) -> None:
        self.metrics.store_documents.inc(amount=documents)
        self.metrics.store_commits.inc(amount=commits)
