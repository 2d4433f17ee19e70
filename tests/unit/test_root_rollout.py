"""Rolling-update planning of the root (root_orchestrator/rollout.py), table-driven.

Every case is a picture of a job's instances at one moment (the clock is passed in),
and what the planner must decide from it. Old instances run version 1, new ones
version 2 (3 for the "newest wins" cases). `NOW` is the clock; a RUNNING instance's
`since` is when it became RUNNING.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from root_orchestrator.replicas import InstanceFacts, ReplicaPlan, diff_replicas
from root_orchestrator.rollout import (
    MAX_ROLLOUT_RESTARTS,
    Rollout,
    RolloutState,
    merge_plans,
    plan_rollout,
    rollout_counts,
    simulate,
)
from root_orchestrator.spec_update import PatchInvalid, apply_patch
from schemas.job import InstanceState, JobSpec, RestartPolicy, UpdateStrategy

S = InstanceState
NOW = 1000.0
LONG_AGO = 0.0


def old(r: int, state: InstanceState = S.RUNNING, **kw: Any) -> InstanceFacts:
    """An instance of version 1 (running since long ago when RUNNING)."""
    since = LONG_AGO if state is S.RUNNING else None
    values: dict[str, Any] = {
        "id": f"o{r}",
        "replica": r,
        "state": state,
        "job_version": 1,
        "running_since": since,
        "created_at": 1.0,
    }
    values.update(kw)
    return InstanceFacts(**values)


def new(
    r: int, state: InstanceState = S.RUNNING, since: float | None = LONG_AGO, **kw: Any
) -> InstanceFacts:
    """An instance of version 2 (`since`: when it became RUNNING)."""
    values: dict[str, Any] = {
        "id": f"n{r}",
        "replica": r,
        "state": state,
        "job_version": 2,
        "running_since": since if state is S.RUNNING else None,
        "created_at": 500.0,
    }
    values.update(kw)
    return InstanceFacts(**values)


def strategy(mu: int = 0, ms: int = 1, healthy: float = 5.0, deadline: float = 120.0) -> Any:
    return UpdateStrategy(
        max_unavailable=mu, max_surge=ms, min_healthy_s=healthy, progress_deadline_s=deadline
    )


def rollout(
    state: RolloutState = RolloutState.PROGRESSING,
    *,
    baseline: int = 3,
    progress_at: float = NOW - 10,
    healthy: int = 0,
    to: int = 2,
) -> Rollout:
    return Rollout(
        state=state,
        from_version=1,
        to_version=to,
        started_at=progress_at,
        progress_at=progress_at,
        baseline=baseline,
        healthy=healthy,
    )


OLD3 = [old(0), old(1), old(2)]

# (case, strategy, desired, instances, rollout, verdict, replicas created, ids stopped)
PLAN_CASES: list[tuple[str, Any, int, list[InstanceFacts], Rollout, str, tuple, tuple]] = [
    (
        "surge 1, unavailable 0: one new instance beside the old ones, nothing stops",
        strategy(0, 1),
        3,
        OLD3,
        rollout(),
        "continue",
        (0,),
        (),
    ),
    (
        "surge 1, unavailable 1: one surge and the highest old replica stops",
        strategy(1, 1),
        3,
        OLD3,
        rollout(),
        "continue",
        (0,),
        ("o2",),
    ),
    (
        "surge 0, unavailable 1: stop first, the replacement follows",
        strategy(1, 0),
        3,
        OLD3,
        rollout(),
        "continue",
        (),
        ("o2",),
    ),
    (
        "surge 0, unavailable 1: the replacement is not healthy yet, nothing more stops",
        strategy(1, 0),
        3,
        [old(0), old(1), old(2, S.TERMINATED), new(2, since=NOW - 1)],
        rollout(),
        "continue",
        (),
        (),
    ),
    (
        "surge 0, unavailable 1: the replacement is healthy, the next old one stops",
        strategy(1, 0),
        3,
        [old(0), old(1), old(2, S.TERMINATED), new(2, since=NOW - 5)],
        rollout(),
        "continue",
        (),
        ("o1",),
    ),
    (
        "surge 3: every replica gets its new instance at once",
        strategy(0, 3),
        3,
        OLD3,
        rollout(),
        "continue",
        (0, 1, 2),
        (),
    ),
    (
        "unavailable 3, surge 0: all old ones stop at once (recreate)",
        strategy(3, 0),
        3,
        OLD3,
        rollout(),
        "continue",
        (),
        ("o2", "o1", "o0"),
    ),
    (
        "health window: RUNNING for less than min_healthy_s does not release the old one",
        strategy(0, 1, healthy=5),
        3,
        [*OLD3, new(0, since=NOW - 4.9)],
        rollout(),
        "continue",
        (),
        (),
    ),
    (
        "health window passed: the old instance of that replica stops",
        strategy(0, 1, healthy=5),
        3,
        [*OLD3, new(0, since=NOW - 5)],
        rollout(),
        "continue",
        (),
        ("o0",),
    ),
    (
        "health window: a new instance that left RUNNING starts its window again",
        strategy(0, 1, healthy=5),
        3,
        [*OLD3, new(0, S.STARTING)],
        rollout(),
        "continue",
        (),
        (),
    ),
    (
        "old instances that do not run are replaced at once (no availability cost)",
        strategy(0, 1),
        3,
        [old(0), old(1, S.PENDING), old(2, S.STARTING)],
        rollout(baseline=1),
        "continue",
        (0,),
        ("o1", "o2"),
    ),
    (
        "the floor counts only the replicas RUNNING when the rollout began",
        strategy(1, 1),
        3,
        [old(0), old(1), old(2, S.PENDING)],
        rollout(baseline=2),
        "continue",
        (0,),
        ("o2", "o1"),
    ),
    (
        "never more than replicas + max_surge: an instance being stopped still counts",
        strategy(0, 1),
        3,
        [old(0, terminating=True), old(1), old(2), new(0)],
        rollout(),
        "continue",
        (),
        (),
    ),
    (
        "a replica about to be recreated counts toward the cap; it comes back at version 2",
        strategy(0, 1),
        3,
        [old(0), old(1), old(2, S.TERMINATED), new(0, since=NOW - 1)],
        rollout(),
        "continue",
        (2,),
        (),
    ),
    (
        "a replica whose old instance failed for good is recreated at the new version",
        strategy(0, 1),
        2,
        [old(0), old(1, S.FAILED), new(0, since=NOW - 1)],
        rollout(baseline=1),
        "continue",
        (1,),
        (),
    ),
    (
        "availability below the floor (an old one died): nothing more stops",
        strategy(1, 1),
        3,
        [old(0), old(1, S.LOST), old(2, S.TERMINATED), new(0, since=NOW - 1)],
        rollout(),
        "continue",
        (1, 2),
        (),
    ),
    (
        "complete: every replica has a healthy new instance and no old one is left",
        strategy(0, 1),
        3,
        [old(0, S.TERMINATED), new(0), new(1), new(2)],
        rollout(),
        "complete",
        (),
        (),
    ),
    (
        "not complete while an old instance is still being stopped",
        strategy(0, 1),
        3,
        [old(0, terminating=True), new(0), new(1), new(2)],
        rollout(),
        "continue",
        (),
        (),
    ),
    (
        "failure: a new instance FAILED",
        strategy(1, 1),
        3,
        [old(0), old(1), new(0, S.FAILED, reason="exited with code 3")],
        rollout(),
        "failed",
        (),
        (),
    ),
    (
        "failure: the new version keeps restarting (node restarts)",
        strategy(0, 1),
        3,
        [*OLD3, new(0, S.STARTING, node_restarts=MAX_ROLLOUT_RESTARTS)],
        rollout(),
        "failed",
        (),
        (),
    ),
    (
        "failure: lost new instances count as restarts",
        strategy(0, 1),
        3,
        [*OLD3, new(0, S.LOST), new(0, S.RUNNING, since=NOW - 1, id="n0b", node_restarts=2)],
        rollout(),
        "failed",
        (),
        (),
    ),
    (
        "deadline: no progress for progress_deadline_s (a new replica stays PENDING)",
        strategy(0, 1, deadline=60),
        3,
        [*OLD3, new(0, S.PENDING, pending_reason="pending: 2 clusters: insufficient memory")],
        rollout(progress_at=NOW - 61),
        "failed",
        (),
        (),
    ),
    (
        "deadline: not reached yet",
        strategy(0, 1, deadline=60),
        3,
        [*OLD3, new(0, S.PENDING)],
        rollout(progress_at=NOW - 59),
        "continue",
        (),
        (),
    ),
    (
        "deadline: a replica became healthy since the last progress: no failure",
        strategy(0, 1, deadline=60),
        3,
        [*OLD3, new(0)],
        rollout(progress_at=NOW - 300, healthy=0),
        "continue",
        (),
        ("o0",),
    ),
    (
        "newest wins: version 2 instances are old for version 3 and get a surge beside them",
        strategy(0, 1),
        3,
        [old(0, S.TERMINATED), new(0), old(1), old(2)],
        rollout(to=3),
        "continue",
        (0,),
        (),
    ),
    (
        "newest wins: a healthy version 3 instance replaces the version 2 one",
        strategy(0, 1),
        3,
        [
            old(0, S.TERMINATED),
            new(0),
            new(0, id="v3-0", job_version=3, since=NOW - 5, created_at=900.0),
            old(1),
            old(2),
        ],
        rollout(to=3),
        "continue",
        (),
        ("n0",),
    ),
    (
        "newest wins: a FAILED version 2 instance does not fail the version 3 rollout",
        strategy(0, 1),
        3,
        [new(0, S.FAILED), old(0), old(1), old(2)],
        rollout(to=3),
        "continue",
        (0,),
        (),
    ),
    (
        "rolling back: new instances are replaced, the removed old replica is recreated",
        strategy(1, 1),
        3,
        [old(0), old(1), old(2, S.TERMINATED), new(0, since=NOW - 1), new(2, S.FAILED)],
        rollout(RolloutState.ROLLING_BACK),
        "continue",
        (2,),
        ("n0",),
    ),
    (
        "rolling back: a new instance that does not run is stopped at once",
        strategy(0, 1),
        3,
        [*OLD3, new(0, S.STARTING)],
        rollout(RolloutState.ROLLING_BACK),
        "continue",
        (),
        ("n0",),
    ),
    (
        "rolling back: done when only healthy old-version instances are left",
        strategy(0, 1),
        3,
        [*OLD3, new(0, S.TERMINATED)],
        rollout(RolloutState.ROLLING_BACK),
        "complete",
        (),
        (),
    ),
    (
        "rolling back: no progress for progress_deadline_s stops the rollback",
        strategy(0, 1, deadline=60),
        3,
        [old(0), old(1), old(2, S.FAILED), new(0, since=NOW - 1)],
        rollout(RolloutState.ROLLING_BACK, progress_at=NOW - 61, healthy=2),
        "failed",
        (),
        (),
    ),
    (
        "scale down during a rollout: the rollout leaves replicas >= desired to the diff",
        strategy(0, 1),
        2,
        [*OLD3, new(2, since=NOW - 1)],
        rollout(),
        "continue",
        (),
        (),
    ),
    (
        "delete during a rollout (0 desired): the rollout starts and stops nothing itself",
        strategy(1, 1),
        0,
        [*OLD3, new(0, since=NOW - 1)],
        rollout(),
        "continue",
        (),
        (),
    ),
]


@pytest.mark.parametrize(
    ("strat", "desired", "instances", "state", "verdict", "created", "stopped"),
    [pytest.param(*c[1:], id=c[0]) for c in PLAN_CASES],
)
def test_plan_rollout(
    strat: UpdateStrategy,
    desired: int,
    instances: list[InstanceFacts],
    state: Rollout,
    verdict: str,
    created: tuple[int, ...],
    stopped: tuple[str, ...],
) -> None:
    step = plan_rollout(state, desired, instances, strat, NOW)
    assert step.verdict == verdict, step
    assert tuple(r for r, _why in step.create) == created
    assert tuple(i for i, _why in step.terminate) == stopped
    for _id, why in step.terminate:
        assert why  # every stop says why


REASON_CASES = [
    (
        "a FAILED instance is named with its reason",
        [old(0), new(0, S.FAILED, reason="exited with code 3")],
        rollout(),
        "instance n0 (replica 0) of version 2 FAILED: exited with code 3",
    ),
    (
        "restarts are counted",
        [old(0), new(0, S.STARTING, node_restarts=4)],
        rollout(),
        "version 2 keeps restarting: 4 restarts",
    ),
    (
        "the deadline names what was waited for",
        [old(0), new(0, S.PENDING, pending_reason="pending: 1 cluster: insufficient memory")],
        rollout(progress_at=NOW - 500),
        "replica 0: pending: 1 cluster: insufficient memory",
    ),
]


@pytest.mark.parametrize(
    ("instances", "state", "expected"), [pytest.param(*c[1:], id=c[0]) for c in REASON_CASES]
)
def test_failure_reasons(instances: list[InstanceFacts], state: Rollout, expected: str) -> None:
    step = plan_rollout(state, 1, instances, strategy(0, 1), NOW)
    assert step.verdict == "failed"
    assert expected in step.reason


def test_counts_updated_healthy_unavailable() -> None:
    facts = [old(0, S.TERMINATED), new(0), old(1, terminating=True), new(1, since=NOW - 1), old(2)]
    counts = rollout_counts(3, facts, 2, NOW, 5.0)
    # replica 0 updated and healthy; replica 1 still has its old one (being stopped);
    # available: n0 (healthy) + o2; o1 is being stopped, n1 not healthy yet
    assert (counts.updated, counts.healthy, counts.available, counts.unavailable) == (1, 1, 2, 1)
    assert (counts.old, counts.total) == (2, 4)


MERGE_CASES = [
    (
        "a new version's replica starts its restart count afresh",
        ReplicaPlan(create=((0, 3),)),
        [old(0, S.TERMINATED, restarts=3)],
        ((0, 0, None),),
        (),
    ),
    (
        "a replica of the target version keeps its restart count",
        ReplicaPlan(create=((0, 2),)),
        [new(0, S.LOST, restarts=1)],
        ((0, 2, None),),
        (),
    ),
]


@pytest.mark.parametrize(
    ("diff", "instances", "create", "terminate"),
    [pytest.param(*c[1:], id=c[0]) for c in MERGE_CASES],
)
def test_merge_plans(
    diff: ReplicaPlan,
    instances: list[InstanceFacts],
    create: tuple[Any, ...],
    terminate: tuple[Any, ...],
) -> None:
    merged = merge_plans(diff, None, instances, 2)
    assert merged.create == create and merged.terminate == terminate


def test_scale_up_during_a_rollout_new_replicas_come_at_the_new_version() -> None:
    facts = list(OLD3)
    step = plan_rollout(rollout(), 4, facts, strategy(0, 1), NOW)
    diff = diff_replicas(4, facts)
    merged = merge_plans(diff, step, facts, 2)
    # replica 3 by the diff (new replicas are created at the target version), replica 0
    # by the surge: the cap grew with the replicas (4 + 1)
    assert [r for r, _restarts, _why in merged.create] == [0, 3]


def test_scale_down_during_a_rollout_the_diff_stops_the_surplus() -> None:
    facts = [*OLD3, new(2, since=NOW - 1)]
    step = plan_rollout(rollout(), 2, facts, strategy(0, 1), NOW)
    merged = merge_plans(diff_replicas(2, facts), step, facts, 2)
    assert [i for i, _why in merged.terminate] == ["n2", "o2"]
    assert merged.create == ()


def test_delete_during_a_rollout_stops_everything_through_the_diff() -> None:
    facts = [*OLD3, new(0, since=NOW - 1)]
    step = plan_rollout(rollout(), 0, facts, strategy(1, 1), NOW)
    merged = merge_plans(diff_replicas(0, facts), step, facts, 2)
    assert sorted(i for i, _why in merged.terminate) == ["n0", "o0", "o1", "o2"]
    assert merged.create == ()


# ---------------------------------------------------------------------- the replay


SIM_CASES = [
    ("unavailable 1, surge 1", 1, 1, [((0,), ("o2",)), ((2,), ("o0",)), ((1,), ()), ((), ("o1",))]),
    ("unavailable 0, surge 3", 0, 3, [((0, 1, 2), ()), ((), ("o0", "o1", "o2"))]),
    ("unavailable 3, surge 0", 3, 0, [((), ("o2", "o1", "o0")), ((0, 1, 2), ())]),
]


@pytest.mark.parametrize(
    ("mu", "ms", "expected"), [pytest.param(*c[1:], id=c[0]) for c in SIM_CASES]
)
def test_simulate_batches(mu: int, ms: int, expected: list[tuple[Any, Any]]) -> None:
    batches, outcome = simulate(rollout(progress_at=NOW), 3, OLD3, strategy(mu, ms), NOW)
    assert outcome == "complete"
    assert [(b.start, tuple(i for i, _w in b.stop)) for b in batches] == expected


@settings(max_examples=150, deadline=None)
@given(
    desired=st.integers(min_value=0, max_value=6),
    running=st.integers(min_value=0, max_value=6),
    mu=st.integers(min_value=0, max_value=3),
    ms=st.integers(min_value=0, max_value=3),
)
def test_replay_invariants(desired: int, running: int, mu: int, ms: int) -> None:
    """Whatever the strategy: the replay completes, never has fewer than
    min(replicas, running at start) - max_unavailable available instances, and never
    more than replicas + max_surge instances."""
    if mu == 0 and ms == 0:
        ms = 1
    facts = [old(r) if r < running else old(r, S.PENDING) for r in range(desired)]
    baseline = min(running, desired)
    batches, outcome = simulate(
        rollout(progress_at=NOW, baseline=baseline), desired, facts, strategy(mu, ms), NOW
    )
    assert outcome == "complete", (outcome, batches)
    floor = max(0, baseline - mu)
    for batch in batches:
        assert batch.available_at_least >= floor, batch
        assert batch.instances_at_most <= desired + ms, batch


def test_simulate_reports_a_rollout_that_cannot_finish() -> None:
    # the only replica's new instance is never created: version 2 SUCCEEDED for good
    facts = [old(0, S.TERMINATED), new(0, S.SUCCEEDED)]
    batches, outcome = simulate(rollout(progress_at=NOW), 1, facts, strategy(), NOW)
    assert batches == [] and outcome.startswith("stuck")


# ---------------------------------------------------------------------- the patch


BASE = JobSpec(name="web", runtime="native", command=["sleep", "60"], replicas=3)

PATCH_CASES = [
    ("env change makes a version", {"env": {"A": "1"}}, ("env",), ("env",)),
    ("replicas alone: no version", {"replicas": 5}, ("replicas",), ()),
    ("priority alone: no version", {"priority": 7}, ("priority",), ()),
    ("strategy alone: no version", {"update": {"max_surge": 2}}, ("update",), ()),
    ("same values: nothing changes", {"command": ["sleep", "60"], "name": "web"}, (), ()),
    (
        "command and replicas: a version, replicas too",
        {"command": ["sleep", "61"], "replicas": 1},
        ("command", "replicas"),
        ("command",),
    ),
    ("null resets to the default", {"latency_budget_ms": None}, (), ()),
    ("null keeps replicas", {"replicas": None}, (), ()),
    (
        "runtime change with its image",
        {"runtime": "docker", "image": "busybox", "command": []},
        ("runtime", "image", "command"),
        ("runtime", "image", "command"),
    ),
]


@pytest.mark.parametrize(
    ("given_", "changed", "versioned"), [pytest.param(*c[1:], id=c[0]) for c in PATCH_CASES]
)
def test_apply_patch(
    given_: dict[str, Any], changed: tuple[str, ...], versioned: tuple[str, ...]
) -> None:
    change = apply_patch(BASE, given_)
    assert set(change.changed) == set(changed)
    assert set(change.versioned) == set(versioned)


INVALID_PATCHES = [
    ("name cannot change", {"name": "other"}, ["body", "name"], "cannot be changed"),
    ("bounds are checked", {"max_restarts": -1}, ["body", "max_restarts"], "greater than"),
    ("env names are checked", {"env": {"1A": "x"}}, ["body", "env"], "invalid environment"),
    (
        "runtime rules name the field",
        {"image": "busybox"},
        ["body", "image"],
        "image must not be set",
    ),
    (
        "a strategy that cannot progress",
        {"update": {"max_surge": 0, "max_unavailable": 0}},
        ["body", "update"],
        "cannot both be 0",
    ),
]


@pytest.mark.parametrize(
    ("given_", "loc", "text"), [pytest.param(*c[1:], id=c[0]) for c in INVALID_PATCHES]
)
def test_apply_patch_invalid(given_: dict[str, Any], loc: list[str], text: str) -> None:
    with pytest.raises(PatchInvalid) as caught:
        apply_patch(BASE, given_)
    first = caught.value.errors[0]
    assert first["loc"][: len(loc)] == loc, caught.value.errors
    assert text in first["msg"]


def test_rollout_record_round_trip() -> None:
    state = replace(rollout(), reason="why", finished_at=NOW)
    assert Rollout.from_doc(state.to_doc()) == state
    assert state.target_version == 2 and state.stable_version == 1
    back = replace(state, state=RolloutState.ROLLING_BACK)
    assert back.target_version == 1
    assert replace(state, state=RolloutState.COMPLETE).stable_version == 2


def test_restart_policy_does_not_block_the_new_version() -> None:
    # old replica 0 FAILED for good under "never"; the new version still gets it
    facts = [old(0, S.FAILED)]
    step = plan_rollout(rollout(baseline=0), 1, facts, strategy(), NOW)
    merged = merge_plans(diff_replicas(1, facts, RestartPolicy.NEVER), step, facts, 2)
    assert [r for r, _restarts, _why in merged.create] == [0]
