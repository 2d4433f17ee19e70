"""A rollout's next step at the root (root_orchestrator/rollout_plans.py), table-driven:
the job record, its instances' facts, its kept versions and the clock in; the job as
it ends up, the step and the typed effects out. Old instances run version 1, new ones
version 2 (helpers from test_root_rollout.py); `NOW` is the clock."""

from __future__ import annotations

from typing import Any

import pytest

from root_orchestrator.effects import Emit, Reconcile, SaveJob, SaveVersion
from root_orchestrator.records import JobRecord, VersionRecord
from root_orchestrator.replicas import JobState
from root_orchestrator.rollout import RolloutState
from root_orchestrator.rollout_plans import plan_advance
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
