"""Response and request bodies of the root's own API (beyond the shared `schemas/`).

These are what operators and `edgectl` read; field names are part of the API.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from root_orchestrator.replicas import JobState
from schemas.cluster import ClusterLiveness, ClusterReport
from schemas.common import Id, StrictModel
from schemas.job import MAX_PRIORITY, Event, InstanceState, JobSpec
from schemas.node import InferenceStats

__all__ = [
    "ClusterList",
    "ClusterRejection",
    "ClusterView",
    "EventList",
    "EventRecord",
    "InstanceView",
    "JobList",
    "JobPatch",
    "JobSummary",
    "JobView",
    "MovedInstance",
    "NodeActionResult",
    "NodeList",
    "PlacementInfo",
    "ReportAck",
    "StuckInstance",
]


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
    `decision` is `placement.Decision.to_dict()`: scores of the feasible clusters and
    the rejected ones per reason; `cluster_rejections` the clusters' own refusals.
    """

    at: float
    instance_id: str | None = None
    outcome: Literal["scheduled", "forwarded", "pending"]
    cluster_id: str | None = None
    cluster_name: str | None = None
    explanation: str
    decision: dict[str, Any] | None = None
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


class JobView(JobSummary):
    """Everything about one job: spec, replicas, instances and the latest placement."""

    spec: JobSpec
    deleted_at: float | None = None
    instance_counts: dict[str, int] = Field(default_factory=dict)
    placement: PlacementInfo | None = None
    instances: list[InstanceView] = Field(default_factory=list)


class JobList(BaseModel):
    """One page of jobs; pass `next_cursor` as `cursor` for the next page."""

    jobs: list[JobSummary]
    next_cursor: str | None = None


class JobPatch(StrictModel):
    """Body of `PATCH /jobs/{id}`: scale and/or change the priority."""

    replicas: int | None = Field(default=None, ge=0, le=1000)
    priority: int | None = Field(default=None, ge=0, le=MAX_PRIORITY)


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
