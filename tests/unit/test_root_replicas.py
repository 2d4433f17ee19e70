"""Replica diffing and job state of the root reconciler (table-driven)."""

from __future__ import annotations

import pytest

from root_orchestrator.replicas import (
    InstanceFacts,
    JobState,
    ReplicaPlan,
    diff_replicas,
    job_state,
)
from schemas.job import InstanceState, RestartPolicy, ShedAction

S = InstanceState
P = RestartPolicy


def inst(
    iid: str,
    replica: int,
    state: InstanceState,
    restarts: int = 0,
    created: float = 0.0,
    terminating: bool = False,
) -> InstanceFacts:
    return InstanceFacts(
        id=iid,
        replica=replica,
        state=state,
        restarts=restarts,
        created_at=created,
        terminating=terminating,
    )


DIFF_CASES = [
    ("new job", 3, [], P.NEVER, ReplicaPlan(create=((0, 0), (1, 0), (2, 0)))),
    ("in sync", 2, [inst("a", 0, S.RUNNING), inst("b", 1, S.PENDING)], P.NEVER, ReplicaPlan()),
    ("scale up", 3, [inst("a", 0, S.RUNNING)], P.NEVER, ReplicaPlan(create=((1, 0), (2, 0)))),
    (
        "scale down: highest replica numbers go, highest first",
        1,
        [inst("a", 0, S.RUNNING), inst("b", 1, S.RUNNING), inst("c", 2, S.ASSIGNED)],
        P.NEVER,
        ReplicaPlan(terminate=("c", "b")),
    ),
    (
        "scale to zero",
        0,
        [inst("a", 0, S.RUNNING), inst("b", 1, S.PENDING)],
        P.NEVER,
        ReplicaPlan(terminate=("b", "a")),
    ),
    (
        "terminating instances are not terminated twice",
        0,
        [inst("a", 0, S.RUNNING, terminating=True)],
        P.NEVER,
        ReplicaPlan(),
    ),
    (
        "no replacement while the old one terminates",
        1,
        [inst("a", 0, S.SHED, terminating=True)],
        P.ALWAYS,
        ReplicaPlan(),
    ),
    ("lost is always replaced", 1, [inst("a", 0, S.LOST)], P.NEVER, ReplicaPlan(create=((0, 1),))),
    ("failed, never", 1, [inst("a", 0, S.FAILED)], P.NEVER, ReplicaPlan()),
    (
        "failed, on-failure",
        1,
        [inst("a", 0, S.FAILED)],
        P.ON_FAILURE,
        ReplicaPlan(create=((0, 1),)),
    ),
    (
        "failed, always",
        1,
        [inst("a", 0, S.FAILED, restarts=2)],
        P.ALWAYS,
        ReplicaPlan(create=((0, 3),)),
    ),
    (
        "failed, max restarts reached",
        1,
        [inst("a", 0, S.FAILED, restarts=5)],
        P.ON_FAILURE,
        ReplicaPlan(),
    ),
    ("succeeded, on-failure: done", 1, [inst("a", 0, S.SUCCEEDED)], P.ON_FAILURE, ReplicaPlan()),
    (
        "succeeded, always: run again",
        1,
        [inst("a", 0, S.SUCCEEDED)],
        P.ALWAYS,
        ReplicaPlan(create=((0, 1),)),
    ),
    (
        "terminated by scale down, scaled up again",
        2,
        [inst("a", 0, S.RUNNING), inst("b", 1, S.TERMINATED)],
        P.NEVER,
        ReplicaPlan(create=((1, 0),)),
    ),
    (
        "only the latest instance of a replica counts",
        1,
        [
            inst("a", 0, S.FAILED, restarts=0, created=1),
            inst("b", 0, S.LOST, restarts=1, created=2),
        ],
        P.NEVER,
        ReplicaPlan(create=((0, 2),)),
    ),
    (
        "an active instance wins over history",
        1,
        [inst("a", 0, S.LOST, created=1), inst("b", 0, S.STARTING, restarts=1, created=2)],
        P.NEVER,
        ReplicaPlan(),
    ),
    (
        "history beyond desired is ignored",
        1,
        [inst("a", 0, S.RUNNING), inst("b", 3, S.FAILED)],
        P.ALWAYS,
        ReplicaPlan(),
    ),
]


@pytest.mark.parametrize(
    ("desired", "instances", "policy", "expected"),
    [pytest.param(*c[1:], id=c[0]) for c in DIFF_CASES],
)
def test_diff_replicas(
    desired: int, instances: list[InstanceFacts], policy: RestartPolicy, expected: ReplicaPlan
) -> None:
    assert diff_replicas(desired, instances, policy, 5) == expected


def test_shed_with_reschedule_is_replaced_after_termination() -> None:
    shed = [inst("a", 0, S.SHED)]
    assert diff_replicas(1, shed, on_shed=ShedAction.PAUSE) == ReplicaPlan()
    assert diff_replicas(1, shed, on_shed=ShedAction.RESCHEDULE) == ReplicaPlan(terminate=("a",))
    ended = [inst("a", 0, S.TERMINATED)]
    assert diff_replicas(1, ended, on_shed=ShedAction.RESCHEDULE) == ReplicaPlan(create=((0, 0),))


STATE_CASES = [
    ("no instances yet", 2, False, [], P.NEVER, JobState.PENDING),
    (
        "all running",
        2,
        False,
        [inst("a", 0, S.RUNNING), inst("b", 1, S.RUNNING)],
        P.NEVER,
        JobState.RUNNING,
    ),
    (
        "some running",
        2,
        False,
        [inst("a", 0, S.RUNNING), inst("b", 1, S.PENDING)],
        P.NEVER,
        JobState.DEGRADED,
    ),
    ("starting", 1, False, [inst("a", 0, S.ASSIGNED)], P.NEVER, JobState.PENDING),
    (
        "all succeeded",
        2,
        False,
        [inst("a", 0, S.SUCCEEDED), inst("b", 1, S.SUCCEEDED)],
        P.NEVER,
        JobState.SUCCEEDED,
    ),
    (
        "running and succeeded",
        2,
        False,
        [inst("a", 0, S.RUNNING), inst("b", 1, S.SUCCEEDED)],
        P.NEVER,
        JobState.RUNNING,
    ),
    ("failed for good", 1, False, [inst("a", 0, S.FAILED)], P.NEVER, JobState.FAILED),
    (
        "failed, will be replaced",
        1,
        False,
        [inst("a", 0, S.FAILED)],
        P.ON_FAILURE,
        JobState.PENDING,
    ),
    (
        "one failed one running",
        2,
        False,
        [inst("a", 0, S.FAILED), inst("b", 1, S.RUNNING)],
        P.NEVER,
        JobState.DEGRADED,
    ),
    ("lost is being replaced", 1, False, [inst("a", 0, S.LOST)], P.NEVER, JobState.PENDING),
    ("scaled to zero, empty", 0, False, [inst("a", 0, S.TERMINATED)], P.NEVER, JobState.STOPPED),
    (
        "scaled to zero, draining",
        0,
        False,
        [inst("a", 0, S.RUNNING)],
        P.NEVER,
        JobState.TERMINATING,
    ),
    ("deleted, draining", 2, True, [inst("a", 0, S.RUNNING)], P.NEVER, JobState.TERMINATING),
    (
        "deleted, done",
        2,
        True,
        [inst("a", 0, S.TERMINATED), inst("b", 1, S.LOST)],
        P.NEVER,
        JobState.TERMINATED,
    ),
]


@pytest.mark.parametrize(
    ("desired", "deleted", "instances", "policy", "expected"),
    [pytest.param(*c[1:], id=c[0]) for c in STATE_CASES],
)
def test_job_state(
    desired: int,
    deleted: bool,
    instances: list[InstanceFacts],
    policy: RestartPolicy,
    expected: JobState,
) -> None:
    assert job_state(desired, deleted, instances, policy, 5) is expected
