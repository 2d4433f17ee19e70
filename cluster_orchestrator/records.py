"""In-memory records of nodes and instances, owned by the core loop, and their store form.

The core loop (`cluster_orchestrator.core`, through its plan functions over
`state.ClusterState`) is the only code that mutates these objects;
everything else sees copies (views) or store documents.

Store collections (one document per object, ``_id`` = the object's id):

* ``nodes``: static info, secret hash, draining and cordoned flags, liveness (written
  on join, drain, cordon and liveness transitions);
* ``node_status``: the latest status of each node (written in batches, at most every
  ``status_snapshot_interval`` seconds);
* ``instances``: spec, state, node, reason (written on every state change);
* ``events``: one document per transition or decision;
* ``meta``: the root registration (cluster id and credential).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from cluster_orchestrator.liveness import LivenessTracker
from schemas.cluster import PlaceInstanceRequest
from schemas.job import Constraints, Event, InstanceState, PlacementPolicy, TaskSpec
from schemas.node import Liveness, NodeInfo, NodeStatus
from schemas.secrets import hash_secret, new_secret, verify_secret

__all__ = [
    "EVENTS",
    "INSTANCES",
    "META",
    "NODES",
    "NODE_STATUS",
    "Desired",
    "InstanceRecord",
    "NodeRecord",
    "hash_secret",
    "new_secret",
    "verify_secret",
]

NODES = "nodes"
NODE_STATUS = "node_status"
INSTANCES = "instances"
EVENTS = "events"
META = "meta"

MAX_EVENTS_IN_MEMORY = 100
_EVENT_COUNTER = itertools.count()

Desired = Literal["running", "stopped"]


@dataclass(slots=True)
class NodeRecord:
    """A joined node: what it said at join time and what we have heard since."""

    id: str
    info: NodeInfo
    secret_hash: str
    joined_at: float
    liveness: LivenessTracker
    draining: bool = False
    #: cordoned by an operator: no new placements, what runs there stays
    cordoned: bool = False
    reason: str = ""
    status: NodeStatus | None = None
    #: wall time at which the last status was received (what the API calls last_seen)
    last_seen: float | None = None
    #: wall time of the last status message's envelope (the node's clock)
    status_sent_ts: float | None = None
    status_dirty: bool = False
    presence_online: bool | None = None
    credentials_issued: int = 0
    #: session takeovers reported by the node (online presences with reason
    #: `session_taken_over`), and the monotonic time of the last one logged as an event
    session_takeovers: int = 0
    takeover_logged_at: float | None = None

    @property
    def state(self) -> Liveness:
        """Current liveness."""
        return self.liveness.state

    def to_doc(self) -> dict[str, Any]:
        """The ``nodes`` document (no status: that lives in ``node_status``)."""
        return {
            "_id": self.id,
            "info": self.info.model_dump(mode="json"),
            "secret_hash": self.secret_hash,
            "joined_at": self.joined_at,
            "draining": self.draining,
            "cordoned": self.cordoned,
            "liveness": self.liveness.state.value,
            "reason": self.reason,
            "last_seen": self.last_seen,
            "credentials_issued": self.credentials_issued,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any], now_mono: float, hold: float = 0.0) -> NodeRecord:
        """Rebuild a node from its document after a restart (unhealthy until it speaks;
        held for `hold` seconds: see `LivenessTracker.new`)."""
        stored = Liveness(doc.get("liveness", Liveness.NOT_READY.value))
        start = Liveness.LOST if stored is Liveness.LOST else Liveness.NOT_READY
        return cls(
            id=doc["_id"],
            info=NodeInfo.model_validate(doc["info"]),
            secret_hash=doc["secret_hash"],
            joined_at=float(doc.get("joined_at", 0.0)),
            liveness=LivenessTracker.new(now_mono, start, hold=hold),
            draining=bool(doc.get("draining", False)),
            cordoned=bool(doc.get("cordoned", False)),
            reason=str(doc.get("reason", "")),
            last_seen=doc.get("last_seen"),
            credentials_issued=int(doc.get("credentials_issued", 0)),
        )


@dataclass(slots=True)
class InstanceRecord:
    """One instance placed in this cluster, its assignment and its lifecycle."""

    id: str
    job_id: str
    job_name: str
    replica: int
    spec: TaskSpec
    constraints: Constraints
    placement_policy: PlacementPolicy | None
    lost_grace_s: float | None
    state: InstanceState
    created_at: float
    updated_at: float
    node_id: str | None = None
    reason: str = ""
    exit_code: int | None = None
    restarts: int = 0
    desired: Desired = "running"
    #: nodes tried in the current dispatch round (refused or timed out)
    tried: list[str] = field(default_factory=list)
    #: monotonic time the current node acknowledged the DEPLOY (None: not yet)
    acked_at: float | None = None
    #: monotonic time of the last assignment (for "missing from status" checks)
    assigned_at: float = 0.0
    #: last explanation of a placement decision
    placement: dict[str, Any] = field(default_factory=dict)
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS_IN_MEMORY))

    @classmethod
    def from_request(cls, request: PlaceInstanceRequest, now: float) -> InstanceRecord:
        """A new instance from the root's (or an operator's) placement request."""
        return cls(
            id=request.instance_id,
            job_id=request.job_id,
            job_name=request.job_name,
            replica=request.replica,
            spec=request.spec,
            constraints=request.constraints,
            placement_policy=request.placement_policy,
            lost_grace_s=request.lost_grace_s,
            state=InstanceState.PENDING,
            created_at=now,
            updated_at=now,
        )

    @property
    def active(self) -> bool:
        """True while the instance holds (or should hold) a node: not finished."""
        return not self.state.terminal

    def to_doc(self) -> dict[str, Any]:
        """The ``instances`` document."""
        return {
            "_id": self.id,
            "job_id": self.job_id,
            "job_name": self.job_name,
            "replica": self.replica,
            "spec": self.spec.model_dump(mode="json"),
            "constraints": self.constraints.model_dump(mode="json"),
            "placement_policy": self.placement_policy.value if self.placement_policy else None,
            "lost_grace_s": self.lost_grace_s,
            "state": self.state.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "node_id": self.node_id,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "restarts": self.restarts,
            "desired": self.desired,
            "placement": self.placement,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> InstanceRecord:
        """Rebuild an instance from its document after a restart."""
        policy = doc.get("placement_policy")
        desired: Desired = "stopped" if doc.get("desired") == "stopped" else "running"
        return cls(
            id=doc["_id"],
            job_id=doc["job_id"],
            job_name=doc["job_name"],
            replica=int(doc.get("replica", 0)),
            spec=TaskSpec.model_validate(doc["spec"]),
            constraints=Constraints.model_validate(doc.get("constraints") or {}),
            placement_policy=PlacementPolicy(policy) if policy else None,
            lost_grace_s=doc.get("lost_grace_s"),
            state=InstanceState(doc["state"]),
            created_at=float(doc.get("created_at", 0.0)),
            updated_at=float(doc.get("updated_at", 0.0)),
            node_id=doc.get("node_id"),
            reason=str(doc.get("reason", "")),
            exit_code=doc.get("exit_code"),
            restarts=int(doc.get("restarts", 0)),
            desired=desired,
            placement=dict(doc.get("placement") or {}),
        )


def event_doc(event: Event) -> dict[str, Any]:
    """The ``events`` document of an event."""
    doc = event.model_dump(mode="json")
    doc["_id"] = doc.pop("id")
    return doc


def event_from_doc(doc: dict[str, Any]) -> Event:
    """An event from its ``events`` document."""
    data = {k: v for k, v in doc.items() if k not in ("_id", "_version")}
    return Event.model_validate({"id": doc["_id"], **data})


def make_event(
    *,
    ts: float,
    kind: str,
    subject: str,
    state: str | None = None,
    reason: str = "",
    job_id: str | None = None,
    instance_id: str | None = None,
    node_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    """Build an :class:`Event` with a fresh id (reasons are truncated to fit).

    Ids sort in creation order (microseconds, then a process-wide counter), so events
    with the same timestamp still list in the order they happened.
    """
    return Event(
        id=f"e{int(ts * 1_000_000):015x}{next(_EVENT_COUNTER) % (1 << 32):08x}",
        ts=ts,
        kind=kind,
        subject=subject,
        state=state,
        reason=reason[:1024],
        job_id=job_id,
        instance_id=instance_id,
        node_id=node_id,
        data=data or {},
    )
