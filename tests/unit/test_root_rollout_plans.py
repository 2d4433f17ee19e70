"""A rollout's start and next step at the root (root_orchestrator/rollout_plans.py),
table-driven: the job record, its instances' facts, its kept versions and the clock
in; the typed effects out (and, for a step, the job as it ends up and the step). Old
instances run version 1, new ones version 2 (helpers from test_root_rollout.py); `NOW`
is the clock."""

from __future__ import annotations

from typing import Any

import pytest

from root_orchestrator.effects import DropVersion, Emit, Reconcile, SaveJob, SaveVersion
from root_orchestrator.records import JobRecord, VersionRecord
from root_orchestrator.replicas import JobState
from root_orchestrator.rollout import RolloutState
from root_orchestrator.rollout_plans import plan_advance, plan_start
from root_orchestrator.spec_update import apply_patch
from schemas.job import InstanceState, JobSpec
from tests.unit.test_root_rollout import NOW, new, old, rollout

S = InstanceState
R = RolloutState


def spec(version: int, *, auto_rollback: bool = True) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "web",
            "runtime": "native",
            "command": ["v", str(version)],
            "replicas": 3,
            "update": {"max_surge": 1, "min_healthy_s": 5, "auto_rollback": auto_rollback},
        }
    )


def version(number: int, state: str) -> VersionRecord:
    return VersionRecord(
        job_id="j1", number=number, spec=spec(number), created_at=1.0, state=state, version=1
    )


KEPT = {1: version(1, "current"), 2: version(2, "rolling_out")}


def job(the_rollout: Any, *, auto_rollback: bool = True, **extra: Any) -> JobRecord:
    values: dict[str, Any] = {
        "id": "j1",
        "name": "web",
        "spec": spec(2, auto_rollback=auto_rollback),
        "state": JobState.RUNNING,
        "created_at": 1.0,
        "updated_at": 1.0,
        "job_version": 2,
        "latest_version": 2,
        "rollout": the_rollout,
        "version": 7,
    }
    values.update(extra)
    return JobRecord(**values)


def described(effects: list[Any]) -> list[str]:
    """Each effect in a word: "SaveJob progressing", "SaveVersion 2 failed", "Emit ..."."""
    out = []
    for e in effects:
        if isinstance(e, SaveJob):
            assert e.new.rollout is not None
            out.append(f"SaveJob {e.new.rollout.state.value}")
        elif isinstance(e, SaveVersion):
            out.append(f"SaveVersion {e.new.number} {e.new.state}")
        elif isinstance(e, Emit):
            out.append(f"Emit {e.kind}")
        else:
            assert isinstance(e, Reconcile)
            out.append("Reconcile")
    return out


HEALTHY_NEW3 = [new(0), new(1), new(2)]

# case -> job, instances, versions kept, what it ends as, the effects, whether a step
# (starts and stops) comes out
CASES: dict[str, dict[str, Any]] = {
    "nothing changed: the step, no effect": {
        "job": job(rollout()),
        "facts": [old(0), old(1), old(2)],
        "state": R.PROGRESSING,
        "effects": [],
        "step": True,
    },
    "a new replica became healthy: the progress is noted": {
        "job": job(rollout()),
        "facts": [new(0), old(0), old(1), old(2)],
        "state": R.PROGRESSING,
        "effects": ["SaveJob progressing", "Emit job.rollout"],
        "step": True,
    },
    "every replica healthy at the new version: complete, version 1 superseded": {
        "job": job(rollout(healthy=2)),
        "facts": HEALTHY_NEW3,
        "state": R.COMPLETE,
        "effects": [
            "SaveVersion 2 current",
            "SaveVersion 1 superseded",
            "SaveJob complete",
            "Emit job.rollout",
        ],
        "step": False,
        "reason": "version 2 rolled out to 3 replicas",
    },
    "the job is deleted: cancelled, with its version": {
        "job": job(rollout(), deleted_at=NOW),
        "facts": [old(0)],
        "state": R.CANCELLED,
        "effects": ["SaveVersion 2 cancelled", "SaveJob cancelled", "Emit job.rollout"],
        "step": False,
    },
    "a new instance FAILED while every old one still runs: rolled back at once": {
        "job": job(rollout()),
        "facts": [new(0, S.FAILED, reason="exit 1"), old(0), old(1), old(2)],
        "state": R.ROLLED_BACK,
        "effects": [
            "SaveVersion 2 failed",
            "SaveJob rolling_back",
            "Emit job.rollout",
            "Reconcile",
            "SaveJob rolled_back",
            "Emit job.rollout",
        ],
        "step": False,
        "target": 1,
    },
    "a new instance FAILED, its old one stopped, auto_rollback: back to version 1": {
        "job": job(rollout()),
        "facts": [new(0, S.FAILED, reason="exit 1"), old(1), old(2)],
        "state": R.ROLLING_BACK,
        "effects": [
            "SaveVersion 2 failed",
            "SaveJob rolling_back",
            "Emit job.rollout",
            "Reconcile",
        ],
        "step": True,
        "target": 1,
    },
    "a new instance FAILED, auto_rollback, version 1 not kept: failed": {
        "job": job(rollout()),
        "facts": [new(0, S.FAILED), old(0), old(1), old(2)],
        "versions": {2: KEPT[2]},
        "state": R.FAILED,
        "effects": ["SaveVersion 2 failed", "SaveJob failed", "Emit job.rollout"],
        "step": True,  # as before: the ended rollout is looked at once more
    },
    "a new instance FAILED, auto_rollback off: failed, what runs is left alone": {
        "job": job(rollout(), auto_rollback=False),
        "facts": [new(0, S.FAILED), old(0), old(1), old(2)],
        "state": R.FAILED,
        "effects": ["SaveVersion 2 failed", "SaveJob failed", "Emit job.rollout"],
        "step": False,
        "reason_starts": "rollout stopped (auto_rollback off)",
    },
    "a rollback whose old instances run again: rolled back": {
        "job": job(rollout(R.ROLLING_BACK, healthy=2), job_version=1),
        "facts": [old(0), old(1), old(2)],
        "state": R.ROLLED_BACK,
        "effects": ["SaveJob rolled_back", "Emit job.rollout"],
        "step": False,
    },
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_advance(case: dict[str, Any]) -> None:
    before: JobRecord = case["job"]
    advance = plan_advance(before, case["facts"], case.get("versions", KEPT), NOW)
    assert described(advance.effects) == case["effects"]
    assert advance.job.rollout is not None and advance.job.rollout.state is case["state"]
    assert (advance.step is not None) == case["step"]
    saves = [e for e in advance.effects if isinstance(e, SaveJob)]
    if saves:
        assert saves[0].old is before and saves[-1].new == advance.job
    else:
        assert advance.job is before
    if "reason" in case:
        assert advance.job.rollout.reason == case["reason"]
    if "reason_starts" in case:
        assert advance.job.rollout.reason.startswith(case["reason_starts"])
    if "target" in case:
        assert advance.job.job_version == case["target"]
        assert advance.job.spec.command == ["v", "1"]  # the stable version's spec...
        assert advance.job.spec.update == before.spec.update  # ...with today's strategy
    for effect in advance.effects:
        if isinstance(effect, SaveVersion) and effect.new.state != "rolling_out":
            assert effect.new.finished_at == NOW


# ---------------------------------------------------------------------- a rollout's start


def started(effects: list[Any]) -> list[str]:
    """`described`, with a pruned version as "DropVersion n"."""
    return [
        f"DropVersion {e.number}" if isinstance(e, DropVersion) else described([e])[0]
        for e in effects
    ]


def kept(*states: tuple[int, str]) -> dict[int, VersionRecord]:
    return {n: version(n, s) for n, s in states}


def v1_job(**extra: Any) -> JobRecord:
    """A job never changed so far: version 1, no rollout, no version kept."""
    values: dict[str, Any] = {"spec": spec(1), "job_version": 1, "latest_version": 1}
    values.update(extra)
    return job(None, **values)


COMPLETE_1_TO_2 = rollout(R.COMPLETE, healthy=3)

# case -> job, its kept versions, its instances, the patch; the effects, where the new
# rollout starts from and its baseline
START_CASES: dict[str, dict[str, Any]] = {
    "the first change: version 1 kept as current, version 2 rolls out": {
        "job": v1_job(),
        "versions": {},
        "facts": [old(0), old(1), old(2, terminating=True)],
        "effects": [
            "SaveVersion 1 current",
            "SaveVersion 2 rolling_out",
            "SaveJob progressing",
            "Emit job.updated",
            "Emit job.rollout",
            "Reconcile",
        ],
        "from": 1,
        "baseline": 2,  # RUNNING and not being stopped
    },
    "after a complete rollout: it starts from the version rolled out": {
        "job": job(COMPLETE_1_TO_2),
        "versions": kept((1, "superseded"), (2, "current")),
        "facts": [new(0), new(1), new(2)],
        "effects": [
            "SaveVersion 3 rolling_out",
            "SaveJob progressing",
            "Emit job.updated",
            "Emit job.rollout",
            "Reconcile",
        ],
        "from": 2,
        "baseline": 3,
    },
    "during a rollout: its version superseded, newest wins, the baseline kept": {
        "job": job(rollout(baseline=3)),
        "versions": KEPT,
        "facts": [new(0), old(1)],
        "effects": [
            "SaveVersion 2 superseded",
            "SaveVersion 3 rolling_out",
            "SaveJob progressing",
            "Emit job.updated",
            "Emit job.rollout",
            "Reconcile",
        ],
        "from": 1,
        "baseline": 3,
    },
    "a leftover document of the new version is replaced": {
        "job": job(COMPLETE_1_TO_2),
        "versions": kept((1, "superseded"), (2, "current"), (3, "rolling_out")),
        "facts": [new(0)],
        "effects": [
            "SaveVersion 3 rolling_out",
            "SaveJob progressing",
            "Emit job.updated",
            "Emit job.rollout",
            "Reconcile",
        ],
        "from": 2,
        "baseline": 1,
        "replaces_leftover": True,
    },
    "beyond ten versions: the oldest go, never one an instance still runs": {
        "job": job(None, spec=spec(12), job_version=12, latest_version=12),
        "versions": kept(*((n, "superseded") for n in range(1, 12)), (12, "current")),
        "facts": [old(0), new(1, job_version=12)],  # o0 still runs version 1
        "effects": [
            "SaveVersion 13 rolling_out",
            "SaveJob progressing",
            "DropVersion 2",
            "DropVersion 3",
            "Emit job.updated",
            "Emit job.rollout",
            "Reconcile",
        ],
        "from": 12,
        "baseline": 2,
    },
}


@pytest.mark.parametrize("case", START_CASES.values(), ids=START_CASES.keys())
def test_start(case: dict[str, Any]) -> None:
    before: JobRecord = case["job"]
    change = apply_patch(before.spec, {"command": ["v", "next"], "replicas": 4})
    effects = plan_start(before, change, case["versions"], case["facts"], NOW)
    assert started(effects) == case["effects"]
    number = before.latest_version + 1
    saved = next(e for e in effects if isinstance(e, SaveJob))
    assert saved.old is before
    after = saved.new
    assert (after.job_version, after.latest_version, after.spec) == (number, number, change.spec)
    assert after.rollout is not None
    assert (after.rollout.from_version, after.rollout.to_version) == (case["from"], number)
    assert (after.rollout.baseline, after.rollout.started_at) == (case["baseline"], NOW)
    assert after.rollout.reason == f"rolling update to version {number}: command changed"
    new_version = next(e for e in effects if isinstance(e, SaveVersion) and e.new.number == number)
    assert (new_version.new.created_at, new_version.new.changed) == (NOW, ("command",))
    assert (new_version.old is not None) == case.get("replaces_leftover", False)
    updated = next(e for e in effects if isinstance(e, Emit) and e.kind == "job.updated")
    assert updated.reason == f"version {number}: command, replicas changed"
    assert updated.data == {
        "version": {"from": before.job_version, "to": number},
        "changed": ["command", "replicas"],
        "replicas": {"from": 3, "to": 4},
    }
    event = next(e for e in effects if isinstance(e, Emit) and e.kind == "job.rollout")
    assert event.data is not None and event.data["to_version"] == number
    assert effects[-1] == Reconcile("j1")


def test_a_change_made_in_place_starts_no_rollout() -> None:
    before = job(COMPLETE_1_TO_2)
    with pytest.raises(ValueError, match="in place"):
        plan_start(before, apply_patch(before.spec, {"replicas": 5}), KEPT, [], NOW)
