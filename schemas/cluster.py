"""Cluster <-> root contract: registration, aggregated reports, instance placement, logs."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    StringConstraints,
    field_serializer,
    field_validator,
)

from schemas.common import (
    MAX_INT64,
    Arch,
    Id,
    Int64,
    LabelKey,
    Labels,
    Name,
    OpenData,
    Runtime,
    ShortText,
    StrictModel,
    Text,
    Timestamp,
)
from schemas.job import Constraints, InstanceState, PlacementPolicy, TaskSpec, TaskState
from schemas.mqtt import CURSOR_PATTERN, MAX_LOGS_BYTES
from schemas.node import InferenceStats, Liveness
from schemas.resources import AcceleratorCounts, Resources

MAX_NODE_SUMMARIES = 256
_TOKEN = re.compile(r"^[\x21-\x7e]{1,256}$")
MAX_INSTANCE_CHANGES = 1000


class ClusterRegistration(StrictModel):
    """Body of the root's `POST /api/v1/clusters/register` (registration token as bearer)."""

    name: Name
    url: AnyHttpUrl = Field(description="where the root reaches this cluster's API")
    location: Annotated[str, StringConstraints(max_length=128)] = ""
    labels: Labels = Field(default_factory=dict)
    cluster_id: Id | None = Field(default=None, description="a re-registering cluster's id")
    credential: SecretStr | None = Field(default=None, max_length=256)
    api_token: SecretStr | None = Field(
        default=None,
        max_length=256,
        description="bearer token the root presents on calls to this cluster's API "
        "(place, terminate, list nodes); the root keeps it and never shows it",
    )

    @field_serializer("credential", "api_token", when_used="json")
    def _dump_secret(self, value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    @field_validator("api_token")
    @classmethod
    def _api_token_is_a_header_value(cls, value: SecretStr | None) -> SecretStr | None:
        """The root sends it in an HTTP header: visible ASCII only."""
        if value is not None and not _TOKEN.match(value.get_secret_value()):
            raise ValueError("must be 1-256 visible ASCII characters (no spaces)")
        return value


class ClusterRegistrationResponse(StrictModel):
    """The id a cluster keeps, and the credential it presents on every later call."""

    cluster_id: Id
    credential: SecretStr
    report_interval_s: float = Field(gt=0, le=3600)

    @field_serializer("credential", when_used="json")
    def _dump_credential(self, value: SecretStr) -> str:
        return value.get_secret_value()


class NodeCapacity(StrictModel):
    """Per-node summary inside a cluster report: enough for the root to know one node fits."""

    free: Resources
    arch: Arch
    runtimes: list[Runtime] = Field(default_factory=list, max_length=4)
    labels: Labels = Field(default_factory=dict)
    temperature_c: float | None = None
    throttled: bool = False


class ThermalSummary(StrictModel):
    """How hot a cluster runs."""

    max_temperature_c: float | None = None
    hot_nodes: int = Field(default=0, ge=0, le=MAX_INT64)
    throttled_nodes: int = Field(default=0, ge=0, le=MAX_INT64)


class InstanceChangeData(OpenData):
    """What a cluster tells the root about an instance beyond its state
    (cluster_orchestrator/lifecycle.py `change_of`): the node's name, how often the
    node restarted it, and the latest figures of an inference worker. Only the keys
    given travel; unknown keys are kept."""

    node_name: Text | None = None
    restarts: int | None = Field(default=None, ge=0, le=MAX_INT64)
    inference: InferenceStats | None = None


class InstanceChange(StrictModel):
    """An instance state change the cluster tells the root about."""

    instance_id: Id
    job_id: Id
    state: InstanceState
    node_id: Id | None = None
    reason: Text = ""
    ts: Timestamp
    exit_code: Int64 | None = None
    data: InstanceChangeData = Field(default_factory=InstanceChangeData)


class ClusterReport(StrictModel):
    """Aggregated capacity (DESIGN.md section 4) plus instance changes since the last report.

    Totals alone mislead: `largest_free` and `nodes` say what one node can still take.
    """

    ts: Timestamp
    seq: int = Field(ge=0, le=MAX_INT64)
    full: bool = Field(default=True, description="true when `instances` lists every instance")
    nodes_by_liveness: dict[Liveness, int] = Field(default_factory=dict)
    nodes_cordoned: int = Field(
        default=0,
        ge=0,
        le=MAX_INT64,
        description="nodes cordoned or draining by an operator (not in total, free or nodes)",
    )
    total: Resources = Field(default_factory=Resources)
    free: Resources = Field(default_factory=Resources)
    largest_free_cpu: float = Field(default=0.0, ge=0)
    largest_free_memory_mib: int = Field(default=0, ge=0, le=MAX_INT64)
    nodes: list[NodeCapacity] = Field(default_factory=list, max_length=MAX_NODE_SUMMARIES)
    runtimes: list[Runtime] = Field(default_factory=list, max_length=4)
    archs: list[Arch] = Field(default_factory=list, max_length=8)
    accelerators: AcceleratorCounts = Field(default_factory=dict)
    labels: dict[LabelKey, list[ShortText]] = Field(default_factory=dict, max_length=256)
    thermal: ThermalSummary = Field(default_factory=ThermalSummary)
    instances: list[InstanceChange] = Field(default_factory=list, max_length=MAX_INSTANCE_CHANGES)


class ClusterLiveness(StrEnum):
    """A cluster's liveness as the root sees it."""

    READY = "READY"
    UNREACHABLE = "UNREACHABLE"
    LOST = "LOST"


class PlaceInstanceRequest(StrictModel):
    """Root -> cluster `POST /api/v1/instances`: place one instance of a job here."""

    instance_id: Id
    job_id: Id
    job_name: Name
    replica: int = Field(default=0, ge=0, le=MAX_INT64)
    spec: TaskSpec
    constraints: Constraints = Field(default_factory=Constraints)
    placement_policy: PlacementPolicy | None = None
    lost_grace_s: float | None = Field(default=None, ge=0, le=3600)
    job_version: int | None = Field(
        default=None, ge=1, description="the job version (spec revision) this instance runs"
    )


class PlaceInstanceResponse(StrictModel):
    """The cluster's answer: accepted with the chosen node, or rejected with reasons."""

    accepted: bool
    instance_id: Id
    node_id: Id | None = None
    node_name: Name | None = None
    reasons: dict[ShortText, int] = Field(default_factory=dict)
    explanation: Text = ""


MAX_PLACE_BATCH = 500
"""Most placements in one `POST /api/v1/instances/batch`."""


class PlaceInstanceBatch(StrictModel):
    """Root -> cluster `POST /api/v1/instances/batch`: several placements in one call
    (a mass failover or a large job); each is decided as a single one would be."""

    instances: list[PlaceInstanceRequest] = Field(min_length=1, max_length=MAX_PLACE_BATCH)


class PlaceInstanceBatchResponse(StrictModel):
    """One answer per request of the batch, in the same order."""

    results: list[PlaceInstanceResponse]


class InstanceLogs(StrictModel):
    """Cluster `GET /api/v1/instances/{id}/logs`: a piece of an instance's output, read
    from its node over MQTT (`logs_request` / `logs_chunk`, docs/protocol.md).

    `text` is the output as the task wrote it (UTF-8, undecodable bytes replaced), in
    whole lines where possible. Continue with `cursor`; `eof` says there is nothing more
    to wait for (the instance ended and everything was read). `incomplete`: part of the
    node's answer was lost on the way (the text is what arrived in order; `cursor`
    continues right after it).
    """

    instance_id: Id
    node_id: Id
    node_name: str = Field(default="", max_length=128)
    text: str = Field(default="", max_length=MAX_LOGS_BYTES)
    cursor: str = Field(default="", pattern=CURSOR_PATTERN)
    eof: bool = False
    more: bool = False
    skipped: bool = False
    incomplete: bool = False
    state: InstanceState
    task_state: TaskState | None = None
    exit_code: Int64 | None = None
