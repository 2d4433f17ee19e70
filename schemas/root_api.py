"""Request and response bodies of the root's API (`/api/v1` of root_orchestrator).

These are what operators and `edgectl` read (edgectl's client returns them); field
names are part of the API. `root_orchestrator/models.py` re-exports them for code not
yet moved to this home.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.cluster import ClusterLiveness, ClusterReport
from schemas.common import Id, Name, Runtime, StrictModel
from schemas.decision import PlacementDecision
from schemas.job import (
    MAX_PRIORITY,
    Constraints,
    Event,
    InstanceState,
    JobSpec,
    PlacementPolicy,
    RestartPolicy,
    ShedAction,
    UpdateStrategy,
)
from schemas.node import InferenceStats
from schemas.resources import Resources

__all__ = [
    "MAX_APPROVAL_TTL_S",
    "ClusterList",
    "ClusterRejection",
    "ClusterView",
    "EventList",
    "EventRecord",
    "IdentityReset",
    "InstanceView",
    "JobList",
    "JobPatch",
    "JobState",
    "JobSummary",
    "JobView",
    "MovedInstance",
    "NodeActionResult",
    "NodeList",
    "PlacementInfo",
    "PlanBatch",
    "PlanStop",
    "PlannedPlacement",
    "RegistrationTokenCreated",
    "RegistrationTokenList",
    "RegistrationTokenRequest",
    "RegistrationTokenView",
    "ReportAck",
    "RolloutState",
    "RolloutView",
    "StuckInstance",
    "UpdatePlan",
    "VersionList",
    "VersionView",
]


class JobState(StrEnum):
    """A job's summary state, derived from its replicas (see docs/root-orchestrator.md)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DEGRADED = "DEGRADED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"


class RolloutState(StrEnum):
    """Where a job's latest rollout stands (see root_orchestrator/rollout.py)."""

    PROGRESSING = "progressing"
    COMPLETE = "complete"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        """True while instances are still being replaced."""
        return self in (RolloutState.PROGRESSING, RolloutState.ROLLING_BACK)


class ClusterRejection(BaseModel):
    """What one cluster answered when it refused an instance."""

    cluster_id: str
    cluster_name: str
    reasons: dict[str, int] = Field(default_factory=dict)
    explanation: str = ""


class PlacementInfo(BaseModel):
    """The latest scheduling decision for an instance (or a job): why here, or why pending.

    `outcome`: `scheduled` (a cluster was chosen and asked), `forwarded` (the job names
    its cluster; no root scheduling), `pending` (nothing fits or every cluster refused).
    `decision` is `placement.Decision.to_dict()` as a `PlacementDecision`: scores of the
    feasible clusters and the rejected ones per reason; `cluster_rejections` the
    clusters' own refusals.
    """

    # also read from the stored form root_orchestrator.models.PlacementInfo
    model_config = ConfigDict(from_attributes=True)

    at: float
    instance_id: str | None = None
    outcome: Literal["scheduled", "forwarded", "pending"]
    cluster_id: str | None = None
    cluster_name: str | None = None
    explanation: str
    decision: PlacementDecision | None = None
    cluster_rejections: list[ClusterRejection] = Field(default_factory=list)


class InstanceView(BaseModel):
    """One instance of a job: where it runs, its state and its last placement."""

    id: str
    job_id: str
    replica: int
    state: InstanceState
    cluster_id: str | None = None
    cluster_name: str | None = None
    node_id: str | None = None
    node_name: str | None = None
    reason: str = ""
    created_at: float
    updated_at: float
    exit_code: int | None = None
    restarts: int = 0
    terminating: bool = Field(default=False, description="the root asked its cluster to stop it")
    job_version: int = Field(default=1, description="the job version this instance runs")
    placement: PlacementInfo | None = None
    inference: InferenceStats | None = Field(
        default=None,
        description="latest figures of an inference worker, as of the cluster's last report",
    )


class JobSummary(BaseModel):
    """A job in a listing."""

    id: str
    name: str
    state: JobState
    desired_replicas: int
    actual_replicas: int = Field(description="instances RUNNING now")
    priority: int
    runtime: str
    created_at: float
    updated_at: float
    reason: str = ""
    job_version: int = Field(default=1, description="the version the job targets now")
    rollout_state: RolloutState | None = Field(
        default=None, description="state of the latest rollout (None: never updated)"
    )


class RolloutView(BaseModel):
    """The latest rollout of a job (see docs/root-orchestrator.md, "Rolling updates").

    `from_version` is the last complete version, `to_version` the one rolled out,
    `target_version` where instances are moving now (`from_version` while rolling
    back). Counts are of desired replicas: `updated` (only target instances left),
    `healthy` (a target instance RUNNING for min_healthy_s), `unavailable` (short of
    an available instance); `old_instances` active instances of other versions.
    """

    state: RolloutState
    from_version: int
    to_version: int
    target_version: int
    started_at: float
    progress_at: float
    finished_at: float | None = None
    replicas: int
    updated: int
    healthy: int
    unavailable: int
    old_instances: int
    reason: str = ""
    waiting: str = Field(default="", description="what an active rollout waits for")


class VersionView(BaseModel):
    """One version of a job's spec: `current` (the last complete one), `rolling_out`,
    `superseded`, `failed` or `cancelled`; `changed` lists the fields that differ from
    the version before it. `spec` only in `GET /jobs/{job}/versions`."""

    version: int
    state: str
    created_at: float
    finished_at: float | None = None
    reason: str = ""
    changed: list[str] = Field(default_factory=list)
    spec: JobSpec | None = None


class VersionList(BaseModel):
    """The kept versions of a job (the latest ones, newest first), with their specs."""

    job_id: str
    name: str
    job_version: int
    versions: list[VersionView]


class JobView(JobSummary):
    """Everything about one job: spec, replicas, instances and the latest placement."""

    spec: JobSpec
    deleted_at: float | None = None
    instance_counts: dict[str, int] = Field(default_factory=dict)
    placement: PlacementInfo | None = None
    instances: list[InstanceView] = Field(default_factory=list)
    latest_version: int = Field(default=1, description="highest version created so far")
    rollout: RolloutView | None = None
    versions: list[VersionView] = Field(
        default_factory=list, description="the kept versions, newest first (without specs)"
    )


class JobList(BaseModel):
    """One page of jobs; pass `next_cursor` as `cursor` for the next page."""

    jobs: list[JobSummary]
    next_cursor: str | None = None


class JobPatch(StrictModel):
    """Body of `PATCH /jobs/{id}`: any JobSpec fields to change (see docs/api.md).

    `replicas`, `priority` and `update` change the job in place; any other field that
    changes makes a new job version, rolled out under `update`. A sub-object
    (`resources`, `constraints`, `env`, `update`) replaces the whole field. `null`
    resets a field to its default, except `replicas` and `priority` (null: no change).
    `name` cannot change; `runtime` can. Values are checked against the JobSpec rules
    (422 names each field at fault).
    """

    replicas: int | None = Field(default=None, ge=0, le=1000)
    priority: int | None = Field(default=None, ge=0, le=MAX_PRIORITY)
    name: str | None = Field(default=None, description="must be the job's name if given")
    runtime: Runtime | None = None
    image: str | None = None
    command: list[str] | None = None
    env: dict[str, str] | None = None
    workdir: str | None = None
    resources: Resources | None = None
    restart_policy: RestartPolicy | None = None
    max_restarts: int | None = None
    latency_budget_ms: float | None = None
    on_shed: ShedAction | None = None
    constraints: Constraints | None = None
    placement_policy: PlacementPolicy | None = None
    lost_grace_s: float | None = None
    update: UpdateStrategy | None = None

    def given(self) -> dict[str, Any]:
        """The fields the body set (explicit nulls included), by name."""
        return {key: getattr(self, key) for key in self.model_fields_set}


class PlannedPlacement(BaseModel):
    """Where a new replica would be placed now, by the root scheduler's own code."""

    replica: int
    outcome: Literal["scheduled", "forwarded", "pending"]
    cluster_id: str | None = None
    cluster_name: str | None = None
    explanation: str
    decision: PlacementDecision | None = None


class PlanStop(BaseModel):
    """An instance a rollout step stops, and why."""

    instance_id: str
    replica: int | None = None
    job_version: int | None = None
    why: str


class PlanBatch(BaseModel):
    """One step of the planned rollout: replicas that get a new instance, instances
    stopped, the fewest available and the most instances during the step."""

    step: int
    start: list[int] = Field(default_factory=list)
    stop: list[PlanStop] = Field(default_factory=list)
    available_at_least: int
    instances_at_most: int


class UpdatePlan(BaseModel):
    """A dry run of `PATCH /jobs/{job}`: what the change would do; nothing is changed.

    `new_version` is the version it would create (None when it changes nothing that
    runs); `batches` replay the rollout under `strategy` assuming each new instance is
    placed and healthy in turn; `placements` say where each new replica would go on
    the clusters' current reports, `pending` which replicas would stay PENDING.
    """

    dry_run: Literal[True] = True
    job_id: str
    name: str
    changed: list[str]
    current_version: int
    new_version: int | None
    replicas: int
    strategy: UpdateStrategy
    replaced: list[str] = Field(default_factory=list, description="instances that would stop")
    batches: list[PlanBatch] = Field(default_factory=list)
    outcome: str = Field(description="how the replay ended: complete, or why it would stop")
    placements: list[PlannedPlacement] = Field(default_factory=list)
    pending: list[int] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    spec: JobSpec


class ClusterView(BaseModel):
    """A cluster as the root sees it: identity, liveness and its latest report."""

    id: str
    name: str
    url: str
    location: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    liveness: ClusterLiveness
    liveness_since: float
    reason: str = ""
    registered_at: float
    last_report_at: float | None = None
    seconds_since_report: float | None = None
    has_api_token: bool = False
    instances: dict[str, int] = Field(
        default_factory=dict, description="active instances the root placed here, by state"
    )
    report: ClusterReport | None = None
    identity_reset_until: float | None = Field(
        default=None,
        description="an operator reset the identity: until then the next registration of "
        "this name takes the record over (with a new credential)",
    )


class ClusterList(BaseModel):
    """Every registered cluster."""

    clusters: list[ClusterView]


class NodeList(BaseModel):
    """Nodes of one cluster, as its own API returned them."""

    cluster_id: str
    cluster_name: str
    nodes: list[Any]


class MovedInstance(BaseModel):
    """An instance a drain moved, and the node it now has."""

    instance_id: str
    node_id: str
    node_name: str | None = None


class StuckInstance(BaseModel):
    """An instance a drain could not move, and why (it is retried on every reconcile)."""

    instance_id: str
    reason: str


class NodeActionResult(BaseModel):
    """`POST /clusters/{cluster}/nodes/{node}/drain|cordon|uncordon`: the node afterwards
    and, for a drain, what moved and what is stuck."""

    cluster_id: str
    cluster_name: str
    action: Literal["drain", "cordon", "uncordon"]
    node: dict[str, Any] = Field(description="the node as its cluster's API shows it now")
    moved: list[MovedInstance] = Field(default_factory=list)
    stuck: list[StuckInstance] = Field(default_factory=list)


class EventRecord(Event):
    """A stored event with its position in the event log (`seq`, the cursor)."""

    seq: int = Field(ge=1)


class EventList(BaseModel):
    """A page of events; pass `next_since` as `since` to continue."""

    events: list[EventRecord]
    next_since: int


class ReportAck(BaseModel):
    """The root's answer to a cluster report."""

    cluster_id: Id
    liveness: ClusterLiveness
    report_interval_s: float


#: Longest an identity reset or an unused registration token stays valid: 30 days.
MAX_APPROVAL_TTL_S = 30 * 86400.0


class IdentityReset(StrictModel):
    """Body of `POST /clusters/{cluster}/reset-identity` (optional)."""

    ttl_s: float = Field(
        default=3600.0,
        gt=0,
        le=MAX_APPROVAL_TTL_S,
        description="how long the approval waits for the cluster's registration",
    )


class RegistrationTokenRequest(StrictModel):
    """Body of `POST /registration-tokens`: a token that registers one cluster name."""

    name: Name
    ttl_s: float | None = Field(
        default=86400.0,
        gt=0,
        le=MAX_APPROVAL_TTL_S,
        description="the token must be used within this many seconds (null: no limit)",
    )


class RegistrationTokenView(BaseModel):
    """A name-bound registration token, without the token itself."""

    id: str
    name: str
    created_at: float
    expires_at: float | None = None
    used_by: str | None = Field(
        default=None, description="the cluster it registered (then it only re-registers it)"
    )
    used_at: float | None = None
    expired: bool = False


class RegistrationTokenCreated(RegistrationTokenView):
    """A new name-bound registration token: `token` is shown this once."""

    token: str


class RegistrationTokenList(BaseModel):
    """Every name-bound registration token."""

    tokens: list[RegistrationTokenView]
