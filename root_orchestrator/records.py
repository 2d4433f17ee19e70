"""What the root keeps in its store: jobs, instances and clusters, as records.

Records are frozen dataclasses mirrored in memory by the service; every change is a
new record written through to the store first (optimistic versioning), then swapped
in. `to_doc` / `from_doc` convert to and from store documents.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from root_orchestrator.replicas import InstanceFacts, JobState
from root_orchestrator.rollout import Rollout
from schemas.cluster import ClusterLiveness, ClusterReport
from schemas.job import InstanceState, JobSpec

__all__ = [
    "CLUSTERS",
    "EVENTS",
    "IDEMPOTENCY",
    "INSTANCES",
    "JOBS",
    "JOB_VERSIONS",
    "REGISTRATION_TOKENS",
    "ClusterRecord",
    "InstanceRecord",
    "JobRecord",
    "RegistrationTokenRecord",
    "VersionRecord",
]

JOBS = "jobs"
INSTANCES = "instances"
CLUSTERS = "clusters"
EVENTS = "events"
IDEMPOTENCY = "idempotency"
JOB_VERSIONS = "job_versions"
REGISTRATION_TOKENS = "registration_tokens"


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A submitted job: its spec (replicas and priority included) and summary state.

    `spec` is the spec of the version the job targets now (`job_version`);
    `latest_version` the highest version ever created (versions only grow);
    `rollout` the status of the latest rollout (None before the first spec change).
    """

    id: str
    name: str
    spec: JobSpec
    state: JobState
    created_at: float
    updated_at: float
    deleted_at: float | None = None
    next_generation: int = 0
    reason: str = ""
    placement: dict[str, Any] | None = None
    version: int = 0
    job_version: int = 1
    latest_version: int = 1
    rollout: Rollout | None = None

    @property
    def desired(self) -> int:
        """Replicas wanted now (0 once deleted)."""
        return 0 if self.deleted_at is not None else self.spec.replicas

    def to_doc(self) -> dict[str, Any]:
        """The store document (without `_version`)."""
        return {
            "_id": self.id,
            "name": self.name,
            "state": self.state.value,
            "spec": self.spec.model_dump(mode="json"),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "deleted_at": self.deleted_at,
            "next_generation": self.next_generation,
            "reason": self.reason,
            "placement": self.placement,
            "job_version": self.job_version,
            "latest_version": self.latest_version,
            "rollout": self.rollout.to_doc() if self.rollout else None,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> JobRecord:
        """Rebuild a record from a store document."""
        return cls(
            id=doc["_id"],
            name=doc["name"],
            spec=JobSpec.model_validate(doc["spec"]),
            state=JobState(doc["state"]),
            created_at=doc["created_at"],
            updated_at=doc["updated_at"],
            deleted_at=doc.get("deleted_at"),
            next_generation=doc.get("next_generation", 0),
            reason=doc.get("reason", ""),
            placement=doc.get("placement"),
            version=doc.get("_version", 0),
            job_version=int(doc.get("job_version") or 1),
            latest_version=int(doc.get("latest_version") or doc.get("job_version") or 1),
            rollout=Rollout.from_doc(doc["rollout"]) if doc.get("rollout") else None,
        )


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One version of a job's spec, kept for the history and for rollbacks.

    `number` is the job version; `state`: ``current`` (the last complete version),
    ``rolling_out``, ``superseded``, ``failed`` or ``cancelled``; `changed` the fields
    that differ from the version it replaced. Stored in `JOB_VERSIONS` with the id
    ``<job id>-v<number>``.
    """

    job_id: str
    number: int
    spec: JobSpec
    created_at: float
    state: str
    reason: str = ""
    finished_at: float | None = None
    changed: tuple[str, ...] = ()
    version: int = 0

    @property
    def id(self) -> str:
        """The store id."""
        return version_id(self.job_id, self.number)

    def to_doc(self) -> dict[str, Any]:
        """The store document (without `_version`)."""
        return {
            "_id": self.id,
            "job_id": self.job_id,
            "number": self.number,
            "spec": self.spec.model_dump(mode="json"),
            "created_at": self.created_at,
            "state": self.state,
            "reason": self.reason,
            "finished_at": self.finished_at,
            "changed": list(self.changed),
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> VersionRecord:
        """Rebuild a record from a store document."""
        return cls(
            job_id=doc["job_id"],
            number=int(doc["number"]),
            spec=JobSpec.model_validate(doc["spec"]),
            created_at=float(doc["created_at"]),
            state=str(doc["state"]),
            reason=str(doc.get("reason", "")),
            finished_at=doc.get("finished_at"),
            changed=tuple(doc.get("changed") or ()),
            version=doc.get("_version", 0),
        )


def version_id(job_id: str, number: int) -> str:
    """The store id of version `number` of a job."""
    return f"{job_id}-v{number}"


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One replica's instance: its state, its cluster and node, and its last placement.

    `terminate` marks an instance the root wants gone (scale down, delete, reschedule);
    `assigned_at` is when its cluster accepted it; `cluster_ts` the time stamp of the
    last state change its cluster reported (older changes are ignored). `job_version`
    is the job version it runs, `running_since` when it last became RUNNING (None when
    not RUNNING) and `node_restarts` how often its node restarted it in place.
    """

    id: str
    job_id: str
    replica: int
    state: InstanceState
    created_at: float
    updated_at: float
    cluster_id: str | None = None
    node_id: str | None = None
    node_name: str | None = None
    reason: str = ""
    exit_code: int | None = None
    restarts: int = 0
    terminate: bool = False
    terminate_reason: str = ""
    assigned_at: float | None = None
    pending_since: float | None = None
    cluster_ts: float = 0.0
    placement: dict[str, Any] | None = None
    version: int = 0
    job_version: int = 1
    running_since: float | None = None
    node_restarts: int = 0

    def facts(self) -> InstanceFacts:
        """The view replica diffing and rollout planning work on."""
        pending = ""
        if self.state is InstanceState.PENDING and (self.placement or {}).get("outcome") == (
            "pending"
        ):
            pending = str((self.placement or {}).get("explanation", ""))
        return InstanceFacts(
            id=self.id,
            replica=self.replica,
            state=self.state,
            restarts=self.restarts,
            created_at=self.created_at,
            terminating=self.terminate,
            job_version=self.job_version,
            running_since=self.running_since,
            node_restarts=self.node_restarts,
            reason=self.reason,
            pending_reason=pending,
        )

    def to_doc(self) -> dict[str, Any]:
        """The store document (without `_version`).

        Field by field rather than `dataclasses.asdict`, which deep-copies: records
        are replaced whole, never changed, so `placement` can be shared (as
        `JobRecord.to_doc` does); this runs for every instance write."""
        return {
            "_id": self.id,
            "job_id": self.job_id,
            "replica": self.replica,
            "state": self.state.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "cluster_id": self.cluster_id,
            "node_id": self.node_id,
            "node_name": self.node_name,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "restarts": self.restarts,
            "terminate": self.terminate,
            "terminate_reason": self.terminate_reason,
            "assigned_at": self.assigned_at,
            "pending_since": self.pending_since,
            "cluster_ts": self.cluster_ts,
            "placement": self.placement,
            "job_version": self.job_version,
            "running_since": self.running_since,
            "node_restarts": self.node_restarts,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> InstanceRecord:
        """Rebuild a record from a store document."""
        values = {k: v for k, v in doc.items() if not k.startswith("_")}
        values["state"] = InstanceState(values["state"])
        values["job_version"] = int(values.get("job_version") or 1)
        return cls(id=doc["_id"], version=doc.get("_version", 0), **values)


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    """A registered cluster: identity, how to reach it, liveness and its latest report.

    The credential is kept only as a salted SHA-256 hash (`schemas.secrets`); an empty
    `credential_hash` matches no credential (an operator reset the identity).
    `api_token` is the bearer token the root presents to the cluster's API (sent by
    the cluster when it registers); the root needs it in clear to call the cluster,
    and never returns it from its API. `identity_reset_until`: an operator approved
    that the next registration of this name, until then, takes this record over
    with a new credential (`RootService.reset_identity`).
    """

    id: str
    name: str
    url: str
    credential_hash: str
    registered_at: float
    liveness: ClusterLiveness
    liveness_since: float
    location: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    api_token: str | None = None
    reason: str = ""
    last_report_at: float | None = None
    report: ClusterReport | None = None
    identity_reset_until: float | None = None
    version: int = 0

    def to_doc(self) -> dict[str, Any]:
        """The store document (without `_version`)."""
        return {
            "_id": self.id,
            "name": self.name,
            "url": self.url,
            "credential_hash": self.credential_hash,
            "registered_at": self.registered_at,
            "liveness": self.liveness.value,
            "liveness_since": self.liveness_since,
            "location": self.location,
            "labels": dict(self.labels),
            "api_token": self.api_token,
            "reason": self.reason,
            "last_report_at": self.last_report_at,
            "report": self.report.model_dump(mode="json") if self.report else None,
            "identity_reset_until": self.identity_reset_until,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ClusterRecord:
        """Rebuild a record from a store document."""
        report = doc.get("report")
        return cls(
            id=doc["_id"],
            name=doc["name"],
            url=doc["url"],
            credential_hash=doc["credential_hash"],
            registered_at=doc["registered_at"],
            liveness=ClusterLiveness(doc["liveness"]),
            liveness_since=doc["liveness_since"],
            location=doc.get("location", ""),
            labels=dict(doc.get("labels") or {}),
            api_token=doc.get("api_token"),
            reason=doc.get("reason", ""),
            last_report_at=doc.get("last_report_at"),
            report=ClusterReport.model_validate(report) if report else None,
            identity_reset_until=doc.get("identity_reset_until"),
            version=doc.get("_version", 0),
        )


@dataclass(frozen=True, slots=True)
class RegistrationTokenRecord:
    """A registration token an operator bound to one cluster name (only its hash kept).

    Unused, it registers that name once (a new cluster, or taking over the record of
    that name: the operator's approval) until `expires_at` (None: no expiry). Once
    used (`used_by` set) it only authenticates re-registrations of that cluster that
    prove its cluster_id and credential, so the cluster it registered keeps working.
    """

    id: str
    name: str
    token_hash: str
    created_at: float
    expires_at: float | None = None
    used_by: str | None = None
    used_at: float | None = None
    version: int = 0

    def to_doc(self) -> dict[str, Any]:
        """The store document (without `_version`)."""
        doc = asdict(self)
        doc.pop("version")
        doc["_id"] = doc.pop("id")
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> RegistrationTokenRecord:
        """Rebuild a record from a store document."""
        values = {k: v for k, v in doc.items() if not k.startswith("_")}
        return cls(id=doc["_id"], version=doc.get("_version", 0), **values)
