"""Job specification, instances and their lifecycle.

A *job* is what an operator submits; each of its replicas is an *instance*; an
instance running on a node is a *task* there. `TaskSpec` is the part of a job a node
needs to run one instance, and is what a DEPLOY command carries.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import Field, StringConstraints, model_validator

from schemas.common import (
    MAX_ARGS,
    MAX_INT64,
    Arch,
    Env,
    Id,
    Int64,
    Labels,
    Name,
    Runtime,
    ShortText,
    StrictModel,
    Text,
    Timestamp,
)
from schemas.resources import AcceleratorKind, Resources

IMAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$"
Image = Annotated[str, StringConstraints(pattern=IMAGE_PATTERN)]
Arg = Annotated[str, StringConstraints(max_length=4096)]

MAX_PRIORITY = 1000


class RestartPolicy(StrEnum):
    """What a node does when a task's process or container exits."""

    NEVER = "never"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


class ShedAction(StrEnum):
    """What a node does to a task it sheds under pressure."""

    PAUSE = "pause"
    STOP = "stop"
    RESCHEDULE = "reschedule"


class PlacementPolicy(StrEnum):
    """Built-in scoring policies of `placement/`."""

    SPREAD = "spread"
    BINPACK = "binpack"


class Constraints(StrictModel):
    """Hard placement constraints: a candidate that fails one is never chosen."""

    labels: Labels = Field(default_factory=dict, description="labels the node must carry")
    cluster: Name | None = Field(default=None, description="run only in this cluster (by name)")
    node: Name | None = Field(default=None, description="run only on this node (by name)")
    arch: list[Arch] | None = Field(default=None, max_length=5, description="allowed CPU archs")
    accelerator: AcceleratorKind | None = None
    max_temperature_c: float | None = Field(
        default=None, ge=0, le=150, description="avoid nodes hotter than this"
    )


class TaskSpec(StrictModel):
    """Everything a node engine needs to run one instance of a job."""

    runtime: Runtime
    image: Image | None = Field(default=None, description="container image (docker runtime)")
    command: list[Arg] = Field(
        default_factory=list,
        max_length=MAX_ARGS,
        description="argv: the program and its args (native), or an entrypoint override (docker)",
    )
    env: Env = Field(default_factory=dict)
    workdir: Annotated[str, StringConstraints(max_length=1024)] | None = None
    resources: Resources = Field(default_factory=Resources)
    restart_policy: RestartPolicy = RestartPolicy.NEVER
    max_restarts: int = Field(default=5, ge=0, le=1000)
    priority: int = Field(default=100, ge=0, le=MAX_PRIORITY, description="higher = more important")
    latency_budget_ms: float | None = Field(default=None, gt=0, le=600_000)
    on_shed: ShedAction = ShedAction.PAUSE

    @model_validator(mode="after")
    def _runtime_needs(self) -> Self:
        if self.runtime is Runtime.DOCKER and not self.image:
            raise ValueError("image is required when runtime is 'docker'")
        if self.runtime is Runtime.NATIVE:
            if not self.command:
                raise ValueError("command is required when runtime is 'native'")
            if self.image:
                raise ValueError("image must not be set when runtime is 'native'")
        return self


class UpdateStrategy(StrictModel):
    """How a spec change is rolled out over a job's replicas (a rolling replacement).

    The rollout never lets the RUNNING replicas drop below `replicas - max_unavailable`
    (counting those RUNNING when it began) and never runs more than
    `replicas + max_surge` instances. A new instance is healthy once it has been
    RUNNING without interruption for `min_healthy_s`; a rollout that makes no progress
    for `progress_deadline_s` fails. See docs/root-orchestrator.md.
    """

    max_unavailable: int = Field(
        default=0, ge=0, le=1000, description="replicas that may be down during the rollout"
    )
    max_surge: int = Field(
        default=1, ge=0, le=1000, description="instances beyond `replicas` the rollout may start"
    )
    min_healthy_s: float = Field(
        default=5.0, ge=0, le=3600, description="RUNNING this long without a break = healthy"
    )
    progress_deadline_s: float = Field(
        default=120.0,
        gt=0,
        le=86400,
        description="fail the rollout when no new replica became healthy for this long",
    )
    auto_rollback: bool = Field(
        default=True,
        description="on failure go back to the previous version (else stop and leave it)",
    )

    @model_validator(mode="after")
    def _can_progress(self) -> Self:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError(
                "max_surge and max_unavailable cannot both be 0 (the rollout could never "
                "replace an instance)"
            )
        if self.progress_deadline_s <= self.min_healthy_s:
            raise ValueError("progress_deadline_s must be longer than min_healthy_s")
        return self


class JobSpec(TaskSpec):
    """What an operator submits: a task spec plus replicas and placement."""

    name: Name
    replicas: int = Field(default=1, ge=0, le=1000)
    constraints: Constraints = Field(default_factory=Constraints)
    placement_policy: PlacementPolicy | None = Field(
        default=None, description="override the scheduler's policy for this job"
    )
    lost_grace_s: float | None = Field(
        default=None,
        ge=0,
        le=3600,
        description="how long an unreachable node or cluster may be silent before its "
        "instances of this job are rescheduled (None: the cluster's default)",
    )
    update: UpdateStrategy = Field(
        default_factory=UpdateStrategy,
        description="how a later spec change (PATCH) is rolled out",
    )

    def task_spec(self) -> TaskSpec:
        """The node-facing part of this job (what a DEPLOY command carries)."""
        return TaskSpec.model_validate(self.model_dump(include=set(TaskSpec.model_fields)))


class InstanceState(StrEnum):
    """Lifecycle of an instance as the orchestrators see it (DESIGN.md section 3)."""

    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    ASSIGNED = "ASSIGNED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TERMINATED = "TERMINATED"
    SHED = "SHED"
    LOST = "LOST"

    @property
    def terminal(self) -> bool:
        """True when the instance will not run again without a new placement."""
        return self in _TERMINAL_INSTANCE


_TERMINAL_INSTANCE = frozenset(
    {InstanceState.SUCCEEDED, InstanceState.FAILED, InstanceState.TERMINATED, InstanceState.LOST}
)


class TaskState(StrEnum):
    """Lifecycle of a task as its node engine sees it."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TERMINATED = "TERMINATED"
    SHED = "SHED"

    @property
    def terminal(self) -> bool:
        """True when the task's process or container is gone for good."""
        return self in _TERMINAL_TASK


_TERMINAL_TASK = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.TERMINATED, TaskState.SHED}
)


class Event(StrictModel):
    """A state change or decision, kept and queryable, with a time and a reason."""

    id: Id
    ts: Timestamp
    kind: ShortText = Field(description="e.g. instance.state, job.scaled, node.lost, task.shed")
    subject: Id = Field(description="id of the job, instance, node or cluster it concerns")
    job_id: Id | None = None
    instance_id: Id | None = None
    node_id: Id | None = None
    cluster_id: Id | None = None
    state: ShortText | None = None
    reason: Text = ""
    data: dict[str, Any] = Field(default_factory=dict)


class Instance(StrictModel):
    """One replica of a job and where it runs."""

    id: Id
    job_id: Id
    replica: int = Field(ge=0, le=MAX_INT64)
    state: InstanceState
    cluster_id: Id | None = None
    node_id: Id | None = None
    reason: Text = ""
    updated_at: Timestamp
    exit_code: Int64 | None = None
    restarts: int = Field(default=0, ge=0, le=MAX_INT64)
