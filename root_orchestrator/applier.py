"""The one applier of the root's typed effects (`effects.py`), in order, lock held.

Every change goes through `writes` (memory, indexes, the write queued for the store
writer), so the caller waits for durability as before (`writes.mark` / `durable`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from root_orchestrator import events as event_log
from root_orchestrator import lifecycle, lookups, writes
from root_orchestrator.effects import (
    CreateInstance,
    DropReservation,
    DropVersion,
    Emit,
    Kick,
    PutDocument,
    Reconcile,
    RootEffect,
    SaveInstance,
    SaveJob,
    SaveVersion,
)
from root_orchestrator.records import JOB_VERSIONS, version_id
from root_orchestrator.state import RootState

__all__ = ["apply"]


def apply(st: RootState, effects: Iterable[RootEffect]) -> None:
    """Execute `effects` in order (under `st.lock`)."""
    for effect in effects:
        if isinstance(effect, SaveJob):
            if effect.old is None:
                writes.save_job(st, effect.new, None)
                st.versions[effect.new.id] = {}  # a new job has no stored versions yet
            else:
                writes.save_job(st, effect.new, st.jobs.get(effect.new.id, effect.old))
        elif isinstance(effect, SaveVersion):
            versions = lookups.versions_of(st, effect.new.job_id)
            old = versions.get(effect.new.number) if effect.old is not None else None
            new = replace(effect.new, version=(old.version if old else 0) + 1)
            st.persister.put(JOB_VERSIONS, new.id, new)
            versions[new.number] = new
        elif isinstance(effect, DropVersion):
            st.persister.delete(JOB_VERSIONS, version_id(effect.job_id, effect.number))
            lookups.versions_of(st, effect.job_id).pop(effect.number, None)
        elif isinstance(effect, SaveInstance):
            old_inst = effect.old
            if old_inst is not None:
                old_inst = st.instances.get(effect.new.id, old_inst)
            writes.save_instance(st, effect.new, old_inst)
        elif isinstance(effect, DropReservation):
            writes.drop_reservation(st, effect.instance_id)
        elif isinstance(effect, CreateInstance):
            job = st.jobs[effect.job_id]
            lifecycle.create_instance(
                st, job, effect.generation, effect.replica, effect.restarts, effect.why
            )
        elif isinstance(effect, PutDocument):
            st.persister.put(effect.collection, effect.id, dict(effect.doc))
        elif isinstance(effect, Emit):
            event_log.emit(
                st,
                effect.kind,
                effect.subject,
                reason=effect.reason,
                state=effect.state,
                job_id=effect.job_id,
                instance_id=effect.instance_id,
                cluster_id=effect.cluster_id,
                node_id=effect.node_id,
                data=dict(effect.data) if effect.data is not None else None,
            )
        elif isinstance(effect, Reconcile):
            st.dirty.add(effect.job_id)
        elif isinstance(effect, Kick):
            writes.kick(st)
        else:  # pragma: no cover - every effect type is handled above
            raise TypeError(f"unknown effect {effect!r}")
