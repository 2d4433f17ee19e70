"""The shedder's reasoning about CPU it does not own (pure: readings and clock injected).

Each case feeds one reading per second: host CPU and the part of it the engine and its
tasks use (the rest is foreign: processes this engine does not run), optionally the p95
latency of `high`. Decisions are applied the way the supervisor would; the table compares
the decisions and what the shedder said without acting (`ShedPolicy.notes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from node_engine.monitor import Sample
from node_engine.shedding import NodeShedder, Reading, ShedPolicy, TaskView, cpu_split
from schemas.common import Runtime
from schemas.job import TaskState
from schemas.node import DiskStatus, MemoryStatus, NetworkStatus, TaskStatus

CORES = 2


@dataclass
class Case:
    tasks: list[tuple[str, int, TaskState]]
    # (host cpu %, owned cpu % or None for "not split", seconds)
    cpu: Sequence[tuple[float, float | None, int]]
    high_p95: Sequence[tuple[float | None, int]] = ()
    decisions: list[str] = field(default_factory=list)
    notes: list[tuple[int, str, Sequence[str]]] = field(default_factory=list)


def run(case: Case) -> tuple[list[str], list[tuple[int, str, str]], ShedPolicy, list]:
    policy = ShedPolicy()
    states = {
        iid: (prio, state, "shed (pause): before" if state is TaskState.PAUSED else "")
        for iid, prio, state in case.tasks
    }
    cpu = [(h, o) for h, o, n in case.cpu for _ in range(n)]
    p95 = [v for v, n in case.high_p95 for _ in range(n)]
    out, decisions = [], []
    for now, (host, owned) in enumerate(cpu):
        reading = Reading(
            cpu_percent=host,
            memory_percent=30.0,
            cpu_owned_percent=owned,
            cpu_foreign_percent=None if owned is None else host - owned,
            cpu_count=CORES,
        )
        lat = p95[now] if now < len(p95) else None
        views = [
            TaskView(
                iid,
                state,
                prio,
                reason=reason,
                latency_budget_ms=100.0 if iid == "high" else None,
                latency_p95_ms=lat if iid == "high" else None,
                frames_executed=50 if iid == "high" and lat is not None else 0,
                inference_age_s=0.5 if iid == "high" and lat is not None else None,
            )
            for iid, (prio, state, reason) in states.items()
        ]
        for d in policy.decide(float(now), reading, views):
            prio, _state, _ = states[d.instance_id]
            new = {"pause": TaskState.PAUSED, "stop": TaskState.SHED}.get(
                d.action, TaskState.RUNNING
            )
            states[d.instance_id] = (prio, new, d.reason)
            out.append(f"{now}:{d.action}:{d.instance_id}")
            decisions.append(d)
    notes = [(int(n.at), n.kind, n.text) for n in policy.notes]
    return out, notes, policy, decisions


R, P = TaskState.RUNNING, TaskState.PAUSED
LOWS_PAUSED = [("low-1", 10, P), ("low-2", 20, P), ("high", 900, R)]

CASES: dict[str, Case] = {
    "foreign_load_and_every_low_task_paused: said once, nothing shed": Case(
        LOWS_PAUSED,
        cpu=[(98.0, 25.0, 60)],  # 0.5 of 2 cores are the engine's, 1.46 foreign
        notes=[
            (
                5,
                "foreign",
                [
                    "cpu 98.0% >= 90% for 5s: pressure is from processes this engine does not",
                    "(they use 1.5 of 2 cores, this engine and its tasks 0.5): nothing left",
                ],
            )
        ],
    ),
    "own_load_of_the_most_important_task: another text": Case(
        [("high", 900, R)],
        cpu=[(97.0, 94.0, 30)],
        notes=[
            (
                5,
                "own",
                [
                    "cpu 97.0% >= 90% for 5s: nothing left to shed (the tasks still running have "
                    "priority 900 or more; this engine and its tasks use 1.9 of 2 cores, other "
                    "processes 0.1)",
                ],
            )
        ],
    ),
    "a_new_episode_says_it_again": Case(
        LOWS_PAUSED,
        cpu=[(98.0, 20.0, 20), (40.0, 20.0, 8), (96.0, 20.0, 20)],
        notes=[
            (5, "foreign", ["pressure is from processes"]),
            (33, "foreign", ["cpu 96.0% >= 90%"]),
        ],
    ),
    "the_cause_changes_within_an_episode: said for each": Case(
        [("low-1", 10, P), ("high", 900, R)],
        cpu=[(98.0, 20.0, 12), (98.0, 90.0, 12)],
        notes=[
            (5, "foreign", ["pressure is from processes"]),
            (12, "own", ["nothing left to shed (the tasks still running"]),
        ],
    ),
    "foreign_load_with_low_tasks_running: they are shed, the reason shows the split": Case(
        [("low-1", 10, R), ("low-2", 20, R), ("high", 900, R)],
        cpu=[(99.0, 60.0, 20)],
        decisions=["5:pause:low-1", "8:pause:low-2"],
        notes=[(11, "foreign", ["cpu 99.0% >= 90% for 5s: pressure is from processes"])],
    ),
    "latency_over_budget_on_a_foreign-loaded_host": Case(
        LOWS_PAUSED,
        # busy (>= the 70 % exit) with foreign work before the cpu signal itself is on
        cpu=[(80.0, 26.0, 3), (95.0, 26.0, 30)],
        high_p95=[(202.0, 33)],
        notes=[
            (
                6,
                "foreign",
                [
                    "latency of high (priority 900) p95 202 ms over its 100 ms budget: "
                    "pressure is from processes this engine does not run",
                ],
            )
        ],
    ),
    "no_split_measured: plain text": Case(
        LOWS_PAUSED,
        cpu=[(98.0, None, 20)],
        notes=[
            (
                5,
                "own",
                [
                    "cpu 98.0% >= 90% for 5s: nothing left to shed (the tasks still "
                    "running have priority 900 or more)"
                ],
            )
        ],
    ),
    "busy_but_below_enter: nothing to say": Case(
        LOWS_PAUSED,
        cpu=[(85.0, 20.0, 30)],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_foreign_cpu_reasoning(name: str) -> None:
    case = CASES[name]
    decisions, notes, _policy, _ = run(case)
    assert decisions == case.decisions
    assert [(at, kind) for at, kind, _ in notes] == [(at, kind) for at, kind, _ in case.notes]
    for (_, _, text), (_, _, parts) in zip(notes, case.notes, strict=True):
        for part in parts:
            assert part in text, f"{part!r} not in {text!r}"


def test_shed_decision_carries_the_split() -> None:
    case = CASES["foreign_load_with_low_tasks_running: they are shed, the reason shows the split"]
    _, _, _, decisions = run(case)
    first = decisions[0]
    assert (
        "cpu 99.0% >= 90% for 5s (other processes 0.8 of 2 cores, this engine and its "
        "tasks 1.2)" in first.reason
    )
    assert first.data["cpu_share"] == {
        "cores": 2,
        "owned_percent": 60.0,
        "foreign_percent": 39.0,
        "owned_cores": 1.2,
        "foreign_cores": 0.78,
    }


@pytest.mark.parametrize(
    ("host", "engine", "tasks", "owned", "foreign"),
    [
        (90.0, 4.0, 80.0, 42.0, 48.0),  # (4 + 80) / 2 cores = 42 % of all cores
        (30.0, 10.0, 100.0, 30.0, 0.0),  # samples not simultaneous: owned capped at host
        (50.0, 0.0, 0.0, 0.0, 50.0),
    ],
)
def test_cpu_split(host: float, engine: float, tasks: float, owned: float, foreign: float) -> None:
    assert cpu_split(host, engine, tasks, CORES) == (owned, foreign)


def test_adapter_splits_host_cpu_from_the_sample() -> None:
    sample = Sample(
        ts=1000.0,
        cpu_percent=90.0,
        cpu_per_core=[90.0, 90.0],
        load_1m=2.0,
        memory=MemoryStatus(total_mib=1000, available_mib=400, used_percent=60.0),
        disk=DiskStatus(total_mib=1000, free_mib=500, used_percent=50.0),
        network=NetworkStatus(),
        engine_cpu_percent=4.0,
    )
    tasks = [
        TaskStatus(
            instance_id="a", state=TaskState.RUNNING, runtime=Runtime.NATIVE, cpu_percent=50.0
        ),
        TaskStatus(
            instance_id="b", state=TaskState.PAUSED, runtime=Runtime.NATIVE, cpu_percent=0.0
        ),
        TaskStatus(
            instance_id="c", state=TaskState.RUNNING, runtime=Runtime.DOCKER, cpu_percent=30.0
        ),
    ]
    reading = NodeShedder(ShedPolicy(), dict, cpu_count=CORES).reading(sample, tasks)
    assert (reading.cpu_owned_percent, reading.cpu_foreign_percent) == (42.0, 48.0)
    assert reading.cpu_count == CORES and reading.cpu_percent == 90.0
