"""Typed effects of the root's pure decisions: what a plan wants done to the state.

Like the cluster's `cluster_orchestrator/effects.py`: a plan function (`job_plans`,
`rollout_plans`, `lifecycle_plans`) reads a snapshot of what it needs (records, the
clock value, ids made outside) and returns a list of these values; it changes
nothing. `applier.apply` executes them in order, under the state's lock, through
`writes` (memory, indexes, the queued store write), `events.emit` and
`lifecycle.create_instance`. So a decision can be tested by calling it and reading its
effects, and every change goes through one applier.

A `SaveJob`, `SaveInstance` or `SaveVersion` names the record it replaces as the plan
saw it; a plan may save one record twice (`old` then being its own earlier `new`):
the applier replaces what memory holds then, so the store's version numbers stay in
sequence.

| effect | applied as |
| --- | --- |
| `SaveJob` | `writes.save_job(new, old)` (a new job, `old` None, starts with no stored versions) |
| `SaveVersion` | a version record of a job's spec: memory and the queued store write |
| `DropVersion` | a version of a job's spec pruned: out of memory, its document deleted |
| `SaveInstance` | `writes.save_instance(new, old)`: memory, work indexes, queued write |
| `DropReservation` | `writes.drop_reservation`: an instance's reserved capacity freed |
| `CreateInstance` | `lifecycle.create_instance` for the saved job (PENDING, its event) |
| `PutDocument` | a queued store write of a plain document (an Idempotency-Key) |
| `Emit` | `events.emit`: the event, queued and published once durable |
| `Reconcile` | the job is marked for `lifecycle.settle` (replicas, rollout, job state) |
| `Kick` | `writes.kick`: the reconciler is woken (once the call's writes are durable) |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from root_orchestrator.records import InstanceRecord, JobRecord, VersionRecord

__all__ = [
    "CreateInstance",
    "DropReservation",
    "DropVersion",
    "Emit",
    "Kick",
    "PutDocument",
    "Reconcile",
    "RootEffect",
    "SaveInstance",
    "SaveJob",
    "SaveVersion",
]


@dataclass(frozen=True, slots=True)
class SaveJob:
    """Record `new` in place of `old` (None: a new job)."""

    new: JobRecord
    old: JobRecord | None


@dataclass(frozen=True, slots=True)
class SaveVersion:
    """Record version `new` of a job's spec in place of `old` (None: a new version)."""

    new: VersionRecord
    old: VersionRecord | None


@dataclass(frozen=True, slots=True)
class DropVersion:
    """Forget version `number` of job `job_id`'s spec (pruned: beyond the kept ones)."""

    job_id: str
    number: int


@dataclass(frozen=True, slots=True)
class SaveInstance:
    """Record instance `new` in place of `old` (None: a new instance)."""

    new: InstanceRecord
    old: InstanceRecord | None


@dataclass(frozen=True, slots=True)
class DropReservation:
    """Free the capacity reserved for instance `instance_id` (it ended, or is PENDING
    again and will be placed afresh)."""

    instance_id: str


@dataclass(frozen=True, slots=True)
class CreateInstance:
    """A new PENDING instance of job `job_id`, its `generation` already reserved in the
    job record (the instance id is ``{job_id}-{replica}-{generation}``)."""

    job_id: str
    generation: int
    replica: int
    restarts: int
    why: str


@dataclass(frozen=True, slots=True)
class PutDocument:
    """Upsert a plain document (not a record) in `collection`."""

    collection: str
    id: str
    doc: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Emit:
    """An event (`events.emit` with these fields)."""

    kind: str
    subject: str
    reason: str = ""
    state: str | None = None
    job_id: str | None = None
    data: Mapping[str, Any] | None = None
    instance_id: str | None = None
    cluster_id: str | None = None
    node_id: str | None = None


@dataclass(frozen=True, slots=True)
class Reconcile:
    """Bring this job's instances to its spec and re-derive its state (`settle`)."""

    job_id: str


@dataclass(frozen=True, slots=True)
class Kick:
    """Wake the reconciler: there is work for a pass (a DELETE or a placement)."""


RootEffect = (
    SaveJob
    | SaveVersion
    | DropVersion
    | SaveInstance
    | DropReservation
    | CreateInstance
    | PutDocument
    | Emit
    | Reconcile
    | Kick
)
