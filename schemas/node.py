"""Node descriptions, the join handshake and the periodic node status."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, SecretStr, StringConstraints, field_serializer

from schemas.common import (
    MAX_INT64,
    MAX_TASKS_PER_NODE,
    Arch,
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
from schemas.job import TaskState
from schemas.resources import Accelerator

Hostname = Annotated[str, StringConstraints(min_length=1, max_length=253)]
#: PEM text of one or more CA certificates (a bundle of a few is a few KiB).
CaPem = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=64 * 1024, pattern=r"^\s*-----BEGIN CERTIFICATE-----"
    ),
]


class NodeInfo(StrictModel):
    """What a node says about itself when it joins: static facts and capabilities."""

    name: Name
    hostname: Hostname
    arch: Arch
    os: ShortText = "linux"
    cpu_cores: float = Field(gt=0, le=4096)
    memory_mib: int = Field(gt=0, le=MAX_INT64)
    disk_mib: int = Field(ge=0, le=MAX_INT64)
    accelerators: list[Accelerator] = Field(default_factory=list, max_length=16)
    runtimes: list[Runtime] = Field(default_factory=list, max_length=4)
    labels: Labels = Field(default_factory=dict)
    engine_version: ShortText = ""


class JoinRequest(StrictModel):
    """Body of `POST /api/v1/nodes`; the join token travels as a bearer token.

    A node that joined before sends its stored `node_id` and `node_secret` to keep its id.
    """

    info: NodeInfo
    node_id: Id | None = None
    node_secret: SecretStr | None = Field(default=None, max_length=256)

    @field_serializer("node_secret", when_used="json")
    def _dump_secret(self, value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None


class MqttConnectInfo(StrictModel):
    """How a node reaches its cluster's broker: address and its own credentials."""

    host: Hostname
    port: int = Field(ge=1, le=65535)
    username: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    password: SecretStr
    tls: bool = False
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    #: With ``tls``: the PEM certificate(s) of the CA that signed the broker's
    #: certificate (absent: the node verifies with its own CA file or the system store).
    ca_pem: CaPem | None = None
    #: With ``tls``: the name the broker's certificate must carry, when it differs
    #: from ``host`` (absent: ``host`` is verified).
    server_name: Hostname | None = None

    @field_serializer("password", when_used="json")
    def _dump_password(self, value: SecretStr) -> str:
        return value.get_secret_value()


class JoinResponse(StrictModel):
    """Reply to a join: the node's id, its identity secret and its MQTT credentials."""

    node_id: Id
    node_secret: SecretStr
    cluster_id: Id | None = None
    cluster_name: Name
    mqtt: MqttConnectInfo
    status_interval_s: float = Field(gt=0, le=3600)

    @field_serializer("node_secret", when_used="json")
    def _dump_secret(self, value: SecretStr) -> str:
        return value.get_secret_value()


class Throttling(StrictModel):
    """Power and thermal throttling flags (Raspberry Pi `get_throttled`, cpufreq caps)."""

    throttled: bool = False
    under_voltage: bool = False
    frequency_capped: bool = False
    soft_temperature_limit: bool = False
    occurred_since_boot: bool = False
    raw: ShortText | None = None


class MemoryStatus(StrictModel):
    """Memory and swap, in MiB and percent."""

    total_mib: int = Field(ge=0, le=MAX_INT64)
    available_mib: int = Field(ge=0, le=MAX_INT64)
    used_percent: float = Field(ge=0, le=100)
    swap_used_percent: float = Field(default=0.0, ge=0, le=100)


class DiskStatus(StrictModel):
    """The state directory's file system."""

    total_mib: int = Field(ge=0, le=MAX_INT64)
    free_mib: int = Field(ge=0, le=MAX_INT64)
    used_percent: float = Field(ge=0, le=100)


class NetworkStatus(StrictModel):
    """Network throughput over the last sampling interval."""

    rx_bytes_per_s: float = Field(default=0.0, ge=0)
    tx_bytes_per_s: float = Field(default=0.0, ge=0)


class InferenceStats(StrictModel):
    """What a built-in inference worker reports about its last second of work."""

    frames_executed: int = Field(default=0, ge=0, le=MAX_INT64)
    frames_dropped: int = Field(default=0, ge=0, le=MAX_INT64)
    latency_p50_ms: float | None = Field(default=None, ge=0)
    latency_p95_ms: float | None = Field(default=None, ge=0)
    latency_p99_ms: float | None = Field(default=None, ge=0)
    budget_violations: int = Field(default=0, ge=0, le=MAX_INT64)
    budget_ms: float | None = Field(default=None, gt=0, description="the worker's budget")
    ts: Timestamp | None = Field(default=None, description="when the worker wrote them")


class TaskStatus(StrictModel):
    """One task as its node sees it, with its own resource usage."""

    instance_id: Id
    state: TaskState
    runtime: Runtime
    priority: int = Field(default=100, ge=0, le=MAX_INT64)
    pid: int | None = Field(default=None, ge=0)
    container_id: ShortText | None = None
    cpu_percent: float = Field(default=0.0, ge=0, description="percent of one core")
    memory_mib: float = Field(default=0.0, ge=0)
    exit_code: Int64 | None = None
    restarts: int = Field(default=0, ge=0, le=MAX_INT64)
    started_at: Timestamp | None = None
    reason: Text = ""
    inference: InferenceStats | None = None


class NodeStatus(StrictModel):
    """Periodic status: metrics plus the full list of tasks (the level-triggered truth)."""

    ts: Timestamp
    seq: int = Field(
        ge=0, description="increases by one per status; detects reordering", le=MAX_INT64
    )
    cpu_percent: float = Field(ge=0, le=100, description="total CPU use, percent of all cores")
    cpu_per_core: list[float] = Field(default_factory=list, max_length=1024)
    load_1m: float = Field(default=0.0, ge=0)
    memory: MemoryStatus
    disk: DiskStatus
    network: NetworkStatus = Field(default_factory=NetworkStatus)
    temperatures_c: dict[ShortText, float] = Field(default_factory=dict, max_length=64)
    max_temperature_c: float | None = None
    throttling: Throttling = Field(default_factory=Throttling)
    accelerators: list[Accelerator] = Field(default_factory=list, max_length=16)
    runtimes: list[Runtime] = Field(default_factory=list, max_length=4)
    tasks: list[TaskStatus] = Field(default_factory=list, max_length=MAX_TASKS_PER_NODE)
    shedding: bool = Field(default=False, description="true while the shedder holds tasks back")
    messages_rejected: int = Field(
        default=0, ge=0, description="invalid commands seen so far", le=MAX_INT64
    )


class Liveness(StrEnum):
    """A node's liveness as its cluster sees it (DESIGN.md section 5)."""

    READY = "READY"
    NOT_READY = "NOT_READY"
    OFFLINE = "OFFLINE"
    LOST = "LOST"


class NodeView(StrictModel):
    """A node as the cluster API shows it."""

    id: Id
    info: NodeInfo
    liveness: Liveness
    draining: bool = False
    cordoned: bool = Field(
        default=False, description="no new placements; what runs there stays (operator)"
    )
    last_seen: Timestamp | None = None
    status: NodeStatus | None = None
    reason: Text = ""
