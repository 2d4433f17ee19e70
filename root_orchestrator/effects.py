"""Typed effects of the root's pure decisions: what a plan wants done to the state.

Like the cluster's `cluster_orchestrator/effects.py`: a plan function (`job_plans`,
`rollout_plans`)
reads a snapshot of what it needs (records, the clock value, ids made outside) and
returns a list of these values; it changes nothing. `applier.apply` executes them in
order, under the state's lock, through `writes` (memory, indexes, the queued store
write), `events.emit` and `lifecycle.create_instance`. So a decision can be tested by
calling it and reading its effects, and every change goes through one applier.

A `SaveJob` or `SaveVersion` names the record it replaces as the plan saw it; a plan
may save one record twice (`old` then being its own earlier `new`): the applier
replaces what memory holds then, so the store's version numbers stay in sequence.

| effect | applied as |
| --- | --- |
| `SaveJob` | `writes.save_job(new, old)` (a new job, `old` None, starts with no stored versions) |
| `SaveVersion` | a version record of a job's spec: memory and the queued store write |
| `CreateInstance` | `lifecycle.create_instance` for the saved job (PENDING, its event) |
| `PutDocument` | a queued store write of a plain document (an Idempotency-Key) |
| `Emit` | `events.emit`: the event, queued and published once durable |
| `Reconcile` | the job is marked for `lifecycle.settle` (replicas, rollout, job state) |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from root_orchestrator.records import JobRecord, VersionRecord

__all__ = [
    "CreateInstance",
    "Emit",
    "PutDocument",
    "Reconcile",
    "RootEffect",
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


@dataclass(frozen=True, slots=True)
class Reconcile:
    """Bring this job's instances to its spec and re-derive its state (`settle`)."""

    job_id: str


RootEffect = SaveJob | SaveVersion | CreateInstance | PutDocument | Emit | Reconcile
