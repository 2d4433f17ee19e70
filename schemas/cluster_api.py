"""Response bodies of a cluster orchestrator's API (`/api/v1` of cluster_orchestrator).

`cluster_orchestrator/views.py` re-exports them for code not yet moved to this home.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from schemas.decision import PlacementDecision, empty_as_none
from schemas.job import Constraints, Event, InstanceState, PlacementPolicy, TaskSpec
from schemas.node import InferenceStats, NodeView

#: Answers every /api/v1 route can give (documented in the OpenAPI document).
API_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong bearer token"},
    422: {"description": "a bad path, query or body value (the field is named)"},
}

__all__ = [
    "API_ERRORS",
    "DrainResult",
    "ErrorBody",
    "InstanceList",
    "InstanceView",
    "NodeDetail",
    "NodeList",
]


class NodeDetail(NodeView):
    """A node with the instances assigned to it and how long it has been unhealthy."""

    instances: list[str] = Field(default_factory=list)
    unhealthy_for_s: float = 0.0
    joined_at: float = 0.0
    presence_online: bool | None = None


class NodeList(BaseModel):
    """`GET /api/v1/nodes`."""

    model_config = ConfigDict(frozen=True)

    nodes: list[NodeDetail]
    count: int


class InstanceView(BaseModel):
    """An instance as the cluster API shows it (with its recent events)."""

    model_config = ConfigDict(frozen=True)

    id: str
    job_id: str
    job_name: str
    replica: int
    state: InstanceState
    desired: str
    node_id: str | None = None
    node_name: str | None = None
    reason: str = ""
    exit_code: int | None = None
    restarts: int = 0
    created_at: float
    updated_at: float
    spec: TaskSpec
    constraints: Constraints
    placement_policy: PlacementPolicy | None = None
    lost_grace_s: float | None = None
    placement: Annotated[PlacementDecision | None, BeforeValidator(empty_as_none)] = Field(
        default=None, description="the latest placement decision (null: never placed)"
    )
    events: list[Event] = Field(default_factory=list)
    inference: InferenceStats | None = Field(
        default=None, description="latest figures of an inference worker (node status)"
    )


class InstanceList(BaseModel):
    """`GET /api/v1/instances`."""

    model_config = ConfigDict(frozen=True)

    instances: list[InstanceView]
    count: int


class DrainResult(BaseModel):
    """`POST /api/v1/nodes/{id}/drain` (and cordon, uncordon): the node and, for a drain,
    what happened to its instances."""

    model_config = ConfigDict(frozen=True)

    node: NodeDetail
    moved: dict[str, str] = Field(default_factory=dict, description="instance -> new node")
    stuck: dict[str, str] = Field(default_factory=dict, description="instance -> why it stays")


class ErrorBody(BaseModel):
    """Error responses."""

    detail: str
