"""The jobs resource's pure decisions (root_orchestrator/job_plans.py), table-driven:
records and the clock value in, typed effects out. No state, store or lock; what the
applier does with the effects is covered through RootService in
tests/integration/test_root_api.py and test_root_scheduling.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from root_orchestrator.effects import CreateInstance, Emit, PutDocument, Reconcile, SaveJob
from root_orchestrator.job_plans import (
    IdempotencyKey,
    plan_delete,
    plan_spec_change,
    plan_submit,
)
from root_orchestrator.records import IDEMPOTENCY, JobRecord
from root_orchestrator.replicas import JobState
from root_orchestrator.spec_update import apply_patch
from schemas.job import JobSpec

NOW = 1000.0


def spec(**extra: Any) -> JobSpec:
    values: dict[str, Any] = {"name": "web", "runtime": "native", "command": ["x"]}
    values.update(extra)
    return JobSpec.model_validate(values)


def job(**extra: Any) -> JobRecord:
    values: dict[str, Any] = {
        "id": "j1",
        "name": "web",
        "spec": spec(replicas=2),
        "state": JobState.RUNNING,
        "created_at": 10.0,
        "updated_at": 10.0,
        "next_generation": 2,
        "version": 4,
    }
    values.update(extra)
    return JobRecord(**values)


def kinds(effects: list[Any]) -> list[str]:
    """Each effect by type, an event with its kind: ["SaveJob", "Emit job.deleted", ...]."""
    return [f"Emit {e.kind}" if isinstance(e, Emit) else type(e).__name__ for e in effects]


# ---------------------------------------------------------------------- submit

SUBMIT_CASES: dict[str, dict[str, Any]] = {
    "three replicas: the job, its event, three PENDING instances": {
        "spec": spec(replicas=3),
        "kinds": ["SaveJob", "Emit job.submitted", *["CreateInstance"] * 3, "Reconcile"],
        "state": JobState.PENDING,
        "reason": "3 replicas of native job web",
    },
    "zero replicas: a STOPPED job without instances": {
        "spec": spec(replicas=0),
        "kinds": ["SaveJob", "Emit job.submitted", "Reconcile"],
        "state": JobState.STOPPED,
        "reason": "0 replicas of native job web",
    },
    "a first Idempotency-Key is stored before the job": {
        "spec": spec(replicas=1),
        "key": IdempotencyKey("k1", "h1"),
        "kinds": ["PutDocument", "SaveJob", "Emit job.submitted", "CreateInstance", "Reconcile"],
        "state": JobState.PENDING,
        "reason": "1 replicas of native job web",
    },
}


@pytest.mark.parametrize("case", SUBMIT_CASES.values(), ids=SUBMIT_CASES.keys())
def test_submit(case: dict[str, Any]) -> None:
    effects = plan_submit(case["spec"], "j7", NOW, key=case.get("key"))
    assert kinds(effects) == case["kinds"]
    saved = next(e for e in effects if isinstance(e, SaveJob))
    assert saved.old is None
    assert (saved.new.id, saved.new.state, saved.new.created_at) == ("j7", case["state"], NOW)
    # the instances' generations are reserved in the job record as it is created
    created = [e for e in effects if isinstance(e, CreateInstance)]
    assert saved.new.next_generation == len(created) == case["spec"].replicas
    assert [(c.replica, c.generation, c.restarts) for c in created] == [
        (r, r, 0) for r in range(len(created))
    ]
    event = next(e for e in effects if isinstance(e, Emit))
    assert (event.subject, event.reason, event.state) == ("j7", case["reason"], case["state"].value)
    if "key" in case:
        put = effects[0]
        assert isinstance(put, PutDocument)
        assert (put.collection, put.id) == (IDEMPOTENCY, "k1")
        assert put.doc == {"job_id": "j7", "body_hash": "h1", "created_at": NOW}
    assert effects[-1] == Reconcile("j7")


# ---------------------------------------------------------------------- a change in place

CHANGE_CASES: dict[str, dict[str, Any]] = {
    "scaled up": {
        "patch": {"replicas": 5},
        "kinds": ["SaveJob", "Emit job.scaled", "Reconcile"],
        "reason": "replicas 2 -> 5",
        "data": {"replicas": {"from": 2, "to": 5}},
    },
    "priority changed": {
        "patch": {"priority": 7},
        "kinds": ["SaveJob", "Emit job.updated", "Reconcile"],
        "reason": "priority 100 -> 7",
        "data": {"priority": {"from": 100, "to": 7}},
    },
    "scaled and reprioritised: one job.scaled naming both": {
        "patch": {"replicas": 1, "priority": 3},
        "kinds": ["SaveJob", "Emit job.scaled", "Reconcile"],
        "reason": "priority 100 -> 3, replicas 2 -> 1",
    },
    "the update strategy changed: named, with its old and new value in the data": {
        "patch": {"update": {"max_surge": 2}},
        "kinds": ["SaveJob", "Emit job.updated", "Reconcile"],
        "reason": "update",
    },
    "the same values again: nothing to do": {
        "patch": {"replicas": 2},
        "kinds": [],
    },
}


@pytest.mark.parametrize("case", CHANGE_CASES.values(), ids=CHANGE_CASES.keys())
def test_a_change_in_place(case: dict[str, Any]) -> None:
    before = job()
    change = apply_patch(before.spec, case["patch"])
    effects = plan_spec_change(before, change, NOW)
    assert kinds(effects) == case["kinds"]
    if not effects:
        return
    saved, event, _ = effects
    assert isinstance(saved, SaveJob) and isinstance(event, Emit)
    assert saved.old is before
    assert saved.new == replace(before, spec=change.spec, updated_at=NOW)
    assert event.reason == case["reason"]
    if "data" in case:
        assert event.data == case["data"]
    if "update" in case["patch"]:
        assert event.data is not None
        assert event.data["update"]["to"]["max_surge"] == 2
        assert event.data["update"]["from"]["max_surge"] == before.spec.update.max_surge


def test_a_change_that_makes_a_version_is_not_planned_in_place() -> None:
    before = job()
    change = apply_patch(before.spec, {"command": ["y"]})
    assert change.versioned
    with pytest.raises(ValueError, match="rollout"):
        plan_spec_change(before, change, NOW)


# ---------------------------------------------------------------------- delete

DELETE_CASES: dict[str, dict[str, Any]] = {
    "a live job: deleted now, its replicas go": {
        "job": job(),
        "kinds": ["SaveJob", "Emit job.deleted", "Reconcile"],
    },
    "a job deleted before: nothing more": {
        "job": job(deleted_at=500.0, state=JobState.TERMINATING),
        "kinds": [],
    },
}


@pytest.mark.parametrize("case", DELETE_CASES.values(), ids=DELETE_CASES.keys())
def test_delete(case: dict[str, Any]) -> None:
    effects = plan_delete(case["job"], NOW)
    assert kinds(effects) == case["kinds"]
    if effects:
        saved = effects[0]
        assert isinstance(saved, SaveJob)
        assert (saved.new.deleted_at, saved.new.updated_at, saved.new.desired) == (NOW, NOW, 0)
        assert effects[1] == Emit("job.deleted", "j1", job_id="j1", reason="deleted by operator")


# ---------------------------------------------------------------------- the applier


def test_the_applier_executes_the_effects_in_order_through_writes() -> None:
    """Submit then delete, applied to a bare RootState (its store writer not started:
    writes go through at once): the tables, the store and the events are what the
    effects say, in order."""
    from root_orchestrator import applier, lifecycle
    from root_orchestrator.records import EVENTS, INSTANCES, JOBS
    from root_orchestrator.settings import RootSettings
    from root_orchestrator.state import RootState
    from store import open_store

    settings = RootSettings(
        store_url="sqlite://:memory:",
        operator_tokens=["operator-token-1"],
        registration_token="registration-token-1",
    )
    st = RootState(open_store("sqlite://:memory:"), settings, clock=lambda: NOW)
    applier.apply(st, plan_submit(spec(replicas=2), "j7", NOW, key=IdempotencyKey("k", "h")))
    assert st.jobs["j7"].version == 1 and st.versions["j7"] == {}
    assert sorted(st.instances) == ["j7-0-0", "j7-1-1"]
    assert st.pending_ids == {"j7-0-0", "j7-1-1"} and st.dirty == {"j7"}
    assert st.store.get(IDEMPOTENCY, "k") == {
        "_id": "k",
        "_version": 1,
        "job_id": "j7",
        "body_hash": "h",
        "created_at": NOW,
    }
    lifecycle.settle(st)
    applier.apply(st, plan_delete(st.jobs["j7"], NOW + 1))
    assert st.jobs["j7"].deleted_at == NOW + 1 and st.jobs["j7"].version == 2
    lifecycle.settle(st)  # PENDING instances of a deleted job end at once
    assert all(i.state.terminal for i in st.instances.values())
    events = [d["kind"] for d in st.store.find(EVENTS, order_by="seq")]
    assert events[:4] == ["job.submitted", "instance.state", "instance.state", "job.deleted"]
    stored = st.store.get(JOBS, "j7")
    assert stored is not None and stored["deleted_at"] == NOW + 1
    assert len(st.store.find(INSTANCES, {"job_id": "j7"})) == 2
