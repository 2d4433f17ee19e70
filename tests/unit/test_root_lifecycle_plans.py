"""An instance's lifecycle and a job's replicas as pure decisions at the root
(root_orchestrator/lifecycle_plans.py), table-driven: records, the clock value and the
instances with a placement call in flight in; typed effects out. No state, store or
lock; the applier's side is covered at the end and, through RootService, in
tests/integration/test_root_*.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from root_orchestrator.effects import (
    CreateInstance,
    DropReservation,
    Emit,
    Kick,
    Reconcile,
    SaveInstance,
    SaveJob,
    SaveVersion,
)
from root_orchestrator.lifecycle_plans import (
    plan_job_state,
    plan_reconcile,
    plan_termination,
    plan_transition,
)
from root_orchestrator.records import InstanceRecord, JobRecord, VersionRecord
from root_orchestrator.replicas import JobState
from root_orchestrator.rollout import Rollout, RolloutState
from root_orchestrator.texts import MAX_TEXT, short
from schemas.job import InstanceState, JobSpec

S = InstanceState
NOW = 1000.0
LONG = "why " * MAX_TEXT  # a reason too long to keep whole


def spec(**extra: Any) -> JobSpec:
    values: dict[str, Any] = {
        "name": "web",
        "runtime": "native",
        "command": ["x"],
        "replicas": 2,
        "update": {"max_surge": 1, "min_healthy_s": 5},
    }
    values.update(extra)
    return JobSpec.model_validate(values)


def job(**extra: Any) -> JobRecord:
    values: dict[str, Any] = {
        "id": "j1",
        "name": "web",
        "spec": spec(),
        "state": JobState.RUNNING,
        "created_at": 10.0,
        "updated_at": 10.0,
        "next_generation": 5,
        "version": 4,
    }
    values.update(extra)
    return JobRecord(**values)


def inst(
    replica: int, state: InstanceState = S.RUNNING, gen: int = 0, **extra: Any
) -> InstanceRecord:
    """Instance `j1-{replica}-{gen}` (on cluster c1, node n1 unless PENDING)."""
    placed = state is not S.PENDING
    values: dict[str, Any] = {
        "id": f"j1-{replica}-{gen}",
        "job_id": "j1",
        "replica": replica,
        "state": state,
        "created_at": 20.0 + gen,
        "updated_at": 20.0 + gen,
        "cluster_id": "c1" if placed else None,
        "node_id": "n1" if placed else None,
        "running_since": 30.0 if state is S.RUNNING else None,
        "pending_since": 20.0 if state is S.PENDING else None,
        "version": 3,
    }
    values.update(extra)
    return InstanceRecord(**values)


def described(effects: list[Any]) -> list[str]:
    """Each effect in a few words: "SaveInstance j1-0-0 TERMINATED", "Emit job.state",
    "CreateInstance replica 1 generation 5", ...; a marked instance ends in "terminate"."""
    out = []
    for e in effects:
        if isinstance(e, SaveInstance):
            marked = e.new.terminate and not (e.old is not None and e.old.terminate)
            mark = " terminate" if marked else ""
            out.append(f"SaveInstance {e.new.id} {e.new.state.value}{mark}")
        elif isinstance(e, DropReservation):
            out.append(f"DropReservation {e.instance_id}")
        elif isinstance(e, Emit):
            out.append(f"Emit {e.kind}")
        elif isinstance(e, CreateInstance):
            out.append(f"CreateInstance replica {e.replica} generation {e.generation}")
        elif isinstance(e, SaveJob):
            rollout = e.new.rollout
            out.append(
                f"SaveJob {rollout.state.value}"
                if rollout and rollout != e.old.rollout
                else "SaveJob"
            )
        elif isinstance(e, SaveVersion):
            out.append(f"SaveVersion {e.new.number} {e.new.state}")
        else:
            assert isinstance(e, Reconcile | Kick), e
            out.append(type(e).__name__)
    return out


# ---------------------------------------------------------------------- a transition

ACTIVE = Rollout(
    state=RolloutState.PROGRESSING,
    from_version=1,
    to_version=2,
    started_at=900.0,
    progress_at=900.0,
    baseline=2,
)

TRANSITION_CASES: dict[str, dict[str, Any]] = {
    "accepted by its cluster: the record, its event, the job reconciled": {
        "inst": inst(0, S.SCHEDULED, node_id=None),
        "to": S.ASSIGNED,
        "changes": {"node_id": "n2", "assigned_at": NOW},
        "effects": ["SaveInstance j1-0-0 ASSIGNED", "Emit instance.state", "Reconcile"],
        "fields": {"node_id": "n2", "assigned_at": NOW, "running_since": None},
    },
    "running: its health window starts now": {
        "inst": inst(0, S.ASSIGNED),
        "to": S.RUNNING,
        "effects": ["SaveInstance j1-0-0 RUNNING", "Emit instance.state", "Reconcile"],
        "fields": {"running_since": NOW},
    },
    "running while a rollout is active: the reconciler is woken first": {
        "inst": inst(0, S.ASSIGNED),
        "to": S.RUNNING,
        "job": job(rollout=ACTIVE),
        "effects": ["Kick", "SaveInstance j1-0-0 RUNNING", "Emit instance.state", "Reconcile"],
        "fields": {"running_since": NOW},
    },
    "running again with a new node: no event, the health window goes on": {
        "inst": inst(0, S.RUNNING),
        "to": S.RUNNING,
        "changes": {"node_id": "n2"},
        "job": job(rollout=ACTIVE),
        "effects": ["SaveInstance j1-0-0 RUNNING", "Reconcile"],
        "fields": {"running_since": 30.0, "node_id": "n2"},
    },
    "failed: the health window ends, its reservation is freed": {
        "inst": inst(0, S.RUNNING),
        "to": S.FAILED,
        "effects": [
            "SaveInstance j1-0-0 FAILED",
            "DropReservation j1-0-0",
            "Emit instance.state",
            "Reconcile",
        ],
        "fields": {"running_since": None},
    },
    "refused by its cluster: PENDING again since now, the event names the old cluster": {
        "inst": inst(0, S.SCHEDULED),
        "to": S.PENDING,
        "changes": {"cluster_id": None, "node_id": None},
        "effects": [
            "SaveInstance j1-0-0 PENDING",
            "DropReservation j1-0-0",
            "Emit instance.state",
            "Reconcile",
        ],
        "fields": {"pending_since": NOW, "cluster_id": None},
        "event_cluster": "c1",
    },
    "still PENDING with other reasons: pending since as before, no event": {
        "inst": inst(0, S.PENDING),
        "to": S.PENDING,
        "effects": ["SaveInstance j1-0-0 PENDING", "DropReservation j1-0-0", "Reconcile"],
        "fields": {"pending_since": 20.0},
    },
}


@pytest.mark.parametrize("case", TRANSITION_CASES.values(), ids=TRANSITION_CASES.keys())
def test_transition(case: dict[str, Any]) -> None:
    before: InstanceRecord = case["inst"]
    effects = plan_transition(
        before, case["to"], LONG, NOW, job=case.get("job", job()), changes=case.get("changes")
    )
    assert described(effects) == case["effects"]
    saved = next(e for e in effects if isinstance(e, SaveInstance))
    assert saved.old is before
    assert (saved.new.state, saved.new.updated_at) == (case["to"], NOW)
    assert saved.new.reason == short(LONG) != LONG  # the record keeps it short
    for name, value in case["fields"].items():
        assert getattr(saved.new, name) == value, name
    assert effects[-1] == Reconcile("j1")
    for event in (e for e in effects if isinstance(e, Emit)):
        assert (event.subject, event.instance_id, event.state) == (
            before.id,
            before.id,
            case["to"].value,
        )
        assert event.cluster_id == case.get("event_cluster", saved.new.cluster_id)
        assert event.data == {"from": before.state.value, "replica": 0, "job_version": 1}


# ---------------------------------------------------------------------- a termination

MARKED = [
    "SaveInstance j1-0-0 {state} terminate",
    "Emit instance.terminating",
    "Reconcile",
    "Kick",
]

TERMINATION_CASES: dict[str, dict[str, Any]] = {
    "PENDING, no call under way: TERMINATED at once": {
        "inst": inst(0, S.PENDING),
        "effects": [
            "SaveInstance j1-0-0 TERMINATED",
            "DropReservation j1-0-0",
            "Emit instance.state",
            "Reconcile",
        ],
    },
    "PENDING while its placement call is in flight: marked, the DELETE follows": {
        "inst": inst(0, S.PENDING),
        "in_flight": True,
        "effects": [e.format(state="PENDING") for e in MARKED],
    },
    "RUNNING on its cluster: marked, the reconciler woken for the DELETE": {
        "inst": inst(0, S.RUNNING),
        "effects": [e.format(state="RUNNING") for e in MARKED],
    },
    "already being stopped: nothing more": {
        "inst": inst(0, S.RUNNING, terminate=True, terminate_reason="earlier"),
        "effects": [],
    },
    "already ended: nothing": {"inst": inst(0, S.SUCCEEDED), "effects": []},
}


@pytest.mark.parametrize("case", TERMINATION_CASES.values(), ids=TERMINATION_CASES.keys())
def test_termination(case: dict[str, Any]) -> None:
    before: InstanceRecord = case["inst"]
    effects = plan_termination(before, "scaled down", NOW, in_flight=case.get("in_flight", False))
    assert described(effects) == case["effects"]
    if not effects:
        return
    saved = effects[0]
    assert isinstance(saved, SaveInstance) and saved.old is before
    assert (saved.new.updated_at, saved.new.reason or "scaled down") == (NOW, "scaled down")
    if saved.new.terminate:
        assert saved.new.terminate_reason == "scaled down"
        event = effects[1]
        assert isinstance(event, Emit)
        assert (event.state, event.cluster_id, event.node_id) == (
            before.state.value,
            before.cluster_id,
            before.node_id,
        )


# ---------------------------------------------------------------------- a job's replicas

ROLLING = Rollout(
    state=RolloutState.PROGRESSING,
    from_version=1,
    to_version=2,
    started_at=NOW - 10,
    progress_at=NOW - 10,
    baseline=2,
)
KEPT = {
    n: VersionRecord(job_id="j1", number=n, spec=spec(), created_at=1.0, state=s, version=1)
    for n, s in ((1, "current"), (2, "rolling_out"))
}

RECONCILE_CASES: dict[str, dict[str, Any]] = {
    "every replica runs: nothing to do": {
        "job": job(),
        "instances": [inst(0), inst(1)],
        "effects": [],
    },
    "a replica without an instance: its generation reserved first, then created": {
        "job": job(),
        "instances": [inst(0)],
        "effects": ["SaveJob", "CreateInstance replica 1 generation 5", "Kick"],
        "created": [(1, 0, "replica 1 created")],
    },
    "scaled up by two: one write reserves both generations": {
        "job": job(spec=spec(replicas=4)),
        "instances": [inst(0), inst(1)],
        "effects": [
            "SaveJob",
            "CreateInstance replica 2 generation 5",
            "CreateInstance replica 3 generation 6",
            "Kick",
        ],
    },
    "scaled down: the highest replica is stopped, the others keep their numbers": {
        "job": job(spec=spec(replicas=1)),
        "instances": [inst(0), inst(1), inst(2)],
        "effects": [
            *[e.format(state="RUNNING").replace("j1-0-0", "j1-2-0") for e in MARKED],
            *[e.format(state="RUNNING").replace("j1-0-0", "j1-1-0") for e in MARKED],
        ],
        "reasons": ["scaled down to 1 replicas"] * 2,
    },
    "its LOST replica is replaced, one restart more": {
        "job": job(),
        "instances": [inst(0), inst(1, S.LOST, restarts=1)],
        "effects": ["SaveJob", "CreateInstance replica 1 generation 5", "Kick"],
        "created": [(1, 2, "replica 1 replaced (restart 2)")],
    },
    "a FAILED replica under restart policy never: left alone": {
        "job": job(),
        "instances": [inst(0), inst(1, S.FAILED)],
        "effects": [],
    },
    "a SHED instance of a job that reschedules: stopped, replaced once gone": {
        "job": job(spec=spec(on_shed="reschedule")),
        "instances": [inst(0), inst(1, S.SHED)],
        "effects": [e.format(state="SHED").replace("j1-0-0", "j1-1-0") for e in MARKED],
        "reasons": ["shed by its node; rescheduling (on_shed=reschedule)"],
    },
    "deleted: a PENDING instance ends at once, a running one is marked for DELETE": {
        "job": job(deleted_at=900.0),
        "instances": [inst(0), inst(1, S.PENDING)],
        "effects": [
            "SaveInstance j1-1-0 TERMINATED",
            "DropReservation j1-1-0",
            "Emit instance.state",
            "Reconcile",
            *[e.format(state="RUNNING") for e in MARKED],
        ],
        "reasons": ["job deleted", "job deleted"],
    },
    "deleted while a PENDING instance's placement call is in flight: it is marked": {
        "job": job(deleted_at=900.0, spec=spec(replicas=1)),
        "instances": [inst(0, S.PENDING)],
        "in_flight": {"j1-0-0"},
        "effects": [e.format(state="PENDING") for e in MARKED],
        "reasons": ["job deleted"],
    },
    "a rollout at its start: a surge instance at the new version beside the old ones": {
        "job": job(rollout=ROLLING, job_version=2, latest_version=2),
        "instances": [inst(0), inst(1)],
        "effects": ["SaveJob", "CreateInstance replica 0 generation 5", "Kick"],
        "created": [(0, 0, None)],
    },
    "a deleted job's rollout is cancelled before its instances are stopped": {
        "job": job(rollout=ROLLING, job_version=2, latest_version=2, deleted_at=900.0),
        "instances": [inst(0)],
        "effects": [
            "SaveVersion 2 cancelled",
            "SaveJob cancelled",
            "Emit job.rollout",
            *[e.format(state="RUNNING") for e in MARKED],
        ],
        "reasons": ["job deleted"],
    },
}


@pytest.mark.parametrize("case", RECONCILE_CASES.values(), ids=RECONCILE_CASES.keys())
def test_reconcile(case: dict[str, Any]) -> None:
    before: JobRecord = case["job"]
    effects = plan_reconcile(
        before, case["instances"], NOW, versions=KEPT, in_flight=case.get("in_flight", set())
    )
    assert described(effects) == case["effects"]
    marked = [e.new for e in effects if isinstance(e, SaveInstance)]
    assert [i.terminate_reason or i.reason for i in marked] == case.get("reasons", [])
    created = [e for e in effects if isinstance(e, CreateInstance)]
    if "created" in case:
        for c, (replica, restarts, why) in zip(created, case["created"], strict=True):
            assert (c.replica, c.restarts) == (replica, restarts)
            if why is not None:
                assert c.why == why
            else:
                assert "version 2" in c.why  # the rollout's own reason
    if created:
        # the generations are reserved in the job as the rollout (if any) left it
        reserve = next(
            e for e in effects if isinstance(e, SaveJob) and e.new.rollout == e.old.rollout
        )
        assert reserve.new.next_generation == before.next_generation + len(created)
        assert reserve.new.updated_at == NOW
        assert reserve.old.rollout == before.rollout
        assert all(c.job_id == "j1" for c in created)


# ---------------------------------------------------------------------- a job's state

STATE_CASES: dict[str, dict[str, Any]] = {
    "as recorded: nothing": {
        "job": job(),
        "instances": [inst(0), inst(1)],
        "state": None,
    },
    "every replica runs: RUNNING": {
        "job": job(state=JobState.PENDING),
        "instances": [inst(0), inst(1)],
        "state": JobState.RUNNING,
    },
    "one replica failed for good, one runs: DEGRADED": {
        "job": job(),
        "instances": [inst(0), inst(1, S.FAILED)],
        "state": JobState.DEGRADED,
    },
    "none placed yet: PENDING": {
        "job": job(),
        "instances": [inst(0, S.PENDING), inst(1, S.PENDING)],
        "state": JobState.PENDING,
    },
    "scaled to zero, nothing left: STOPPED": {
        "job": job(spec=spec(replicas=0)),
        "instances": [inst(0, S.TERMINATED)],
        "state": JobState.STOPPED,
    },
    "deleted, one instance still stopping: TERMINATING": {
        "job": job(deleted_at=900.0),
        "instances": [inst(0, S.TERMINATED), inst(1, terminate=True)],
        "state": JobState.TERMINATING,
    },
    "deleted, every instance gone: TERMINATED": {
        "job": job(deleted_at=900.0, state=JobState.TERMINATING),
        "instances": [inst(0, S.TERMINATED), inst(1, S.LOST)],
        "state": JobState.TERMINATED,
    },
}


@pytest.mark.parametrize("case", STATE_CASES.values(), ids=STATE_CASES.keys())
def test_job_state(case: dict[str, Any]) -> None:
    before: JobRecord = case["job"]
    effects = plan_job_state(before, case["instances"], NOW)
    if case["state"] is None:
        assert effects == []
        return
    assert described(effects) == ["SaveJob", "Emit job.state"]
    saved, event = effects
    assert isinstance(saved, SaveJob) and saved.old is before
    assert (saved.new.state, saved.new.updated_at) == (case["state"], NOW)
    assert event == Emit(
        "job.state",
        "j1",
        state=case["state"].value,
        job_id="j1",
        data={"from": before.state.value},
    )


# ---------------------------------------------------------------------- the applier


def test_the_applier_executes_a_reconciliation_through_writes() -> None:
    """A job scaled down and up, applied to a bare RootState (its store writer not
    started: writes go through at once): the indexes, the reservation and the
    version numbers follow the effects."""
    from placement import Request
    from root_orchestrator import applier, lifecycle
    from root_orchestrator.job_plans import plan_submit
    from root_orchestrator.records import EVENTS, INSTANCES
    from root_orchestrator.settings import RootSettings
    from root_orchestrator.state import RootState
    from store import open_store

    settings = RootSettings(
        store_url="sqlite://:memory:",
        operator_tokens=["operator-token-1"],
        registration_token="registration-token-1",
    )
    st = RootState(open_store("sqlite://:memory:"), settings, clock=lambda: NOW)
    kicks: list[int] = []
    st.listeners.append(lambda: kicks.append(1))
    applier.apply(st, plan_submit(spec(replicas=2), "j1", NOW))
    lifecycle.settle(st)
    first = st.instances["j1-0-0"]
    st.reservations["c1"] = {first.id: (Request(cpu=1.0), NOW)}
    running = lifecycle.transition(st, first, S.RUNNING, "reported", cluster_id="c1")
    assert running.version == 2 and st.on_cluster == {"c1": {"j1-0-0"}}
    lifecycle.settle(st)
    job_now = st.jobs["j1"]
    applier.apply(st, [SaveJob(replace(job_now, spec=spec(replicas=0)), job_now), Reconcile("j1")])
    lifecycle.settle(st)  # j1-1-1 PENDING: ended at once; j1-0-0 marked for its DELETE
    assert st.instances["j1-1-1"].state is S.TERMINATED
    assert st.instances["j1-0-0"].terminate and st.to_terminate == {"j1-0-0"}
    assert st.reservations["c1"] == {"j1-0-0": (Request(cpu=1.0), NOW)}  # still placed
    ended = lifecycle.transition(st, st.instances["j1-0-0"], S.TERMINATED, "gone")
    assert ended.version == 4 and st.reservations["c1"] == {}
    lifecycle.settle(st)
    assert st.jobs["j1"].state is JobState.STOPPED and kicks
    kinds = [d["kind"] for d in st.store.find(EVENTS, order_by="seq")]
    assert kinds.count("instance.terminating") == 1 and kinds[-1] == "job.state"
    stored = {d["_id"]: d["_version"] for d in st.store.find(INSTANCES)}
    assert stored == {"j1-0-0": 4, "j1-1-1": 2}
