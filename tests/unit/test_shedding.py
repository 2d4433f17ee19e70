"""Shedding decisions over recorded metric sequences (pure: clock and readings injected).

A scenario is a list of tasks and a per-second recording of host values (and of the p95
latency of inference tasks). `simulate` feeds the policy one reading per second, applies
each decision to the task states the way the supervisor would, checks the invariants
that must hold at every step, and returns the decisions as ``"t:action:instance"``
strings, which is what the tables compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from node_engine.monitor import Sample
from node_engine.shedding import (
    NodeShedder,
    Reading,
    ShedConfig,
    ShedPolicy,
    SignalConfig,
    TaskView,
)
from node_engine.state import TaskRecord
from node_engine.supervisor import ShedDecision
from schemas.common import Runtime
from schemas.job import ShedAction, TaskSpec, TaskState
from schemas.node import (
    DiskStatus,
    InferenceStats,
    MemoryStatus,
    NetworkStatus,
    TaskStatus,
    Throttling,
)

P = ShedAction.PAUSE
S = ShedAction.STOP
R = ShedAction.RESCHEDULE

Segments = Sequence[tuple[float | None, int]]


def series(segments: Segments) -> list[float | None]:
    """[(value, seconds), ...] -> one value per second."""
    out: list[float | None] = []
    for value, seconds in segments:
        out += [value] * seconds
    return out


@dataclass
class Task:
    instance_id: str
    priority: int
    on_shed: ShedAction = P
    budget_ms: float | None = None
    started_at: float = 0.0
    state: TaskState = TaskState.RUNNING
    reason: str = ""
    appears_at: int = 0


@dataclass
class Recording:
    cpu: Segments = ((10.0, 60),)
    memory: Segments = ((30.0, 60),)
    temperature: Segments = ((None, 60),)
    throttled: Segments = ((0.0, 60),)
    p95: dict[str, Segments] = field(default_factory=dict)


def simulate(
    tasks: list[Task], rec: Recording, config: ShedConfig | None = None
) -> tuple[list[str], list[ShedDecision]]:
    cfg = config or ShedConfig()
    policy = ShedPolicy(cfg)
    cpu, mem = series(rec.cpu), series(rec.memory)
    temp, thr = series(rec.temperature), series(rec.throttled)
    p95 = {iid: series(seg) for iid, seg in rec.p95.items()}
    n = max(len(cpu), len(mem), len(temp), len(thr), *(len(v) for v in p95.values()))
    live = {t.instance_id: replace(t) for t in tasks}
    out: list[str] = []
    decisions: list[ShedDecision] = []
    last_step = None
    for now in range(n):

        def at(values: list[float | None], default: float | None, now: int = now) -> Any:
            return values[now] if now < len(values) else default

        reading = Reading(
            cpu_percent=at(cpu, 10.0),
            memory_percent=at(mem, 30.0),
            temperature_c=at(temp, None),
            throttled=bool(at(thr, 0.0)),
        )
        views = []
        for t in live.values():
            if t.appears_at > now:
                continue
            lat = at(p95.get(t.instance_id, []), None)
            views.append(
                TaskView(
                    instance_id=t.instance_id,
                    state=t.state,
                    priority=t.priority,
                    on_shed=t.on_shed,
                    started_at=t.started_at,
                    reason=t.reason,
                    latency_budget_ms=t.budget_ms,
                    latency_p95_ms=lat,
                    frames_executed=30 if lat is not None else 0,
                    inference_age_s=0.5 if lat is not None else None,
                )
            )
        got = policy.decide(float(now), reading, views)
        assert len(got) <= 1, "one step at a time"
        for d in got:
            if last_step is not None:
                assert now - last_step >= cfg.step_interval_s, "steps too close"
            last_step = now
            t = live[d.instance_id]
            if d.action == "pause":
                assert t.state is TaskState.RUNNING
                t.state = TaskState.PAUSED
            elif d.action == "stop":
                t.state = TaskState.SHED
            else:
                assert t.state in (TaskState.PAUSED, TaskState.SHED)
                t.state = TaskState.RUNNING
            t.reason = d.reason
            if d.action in ("pause", "stop"):
                lower = [
                    o.instance_id
                    for o in live.values()
                    if o.state is TaskState.RUNNING
                    and o.priority < t.priority
                    and o.appears_at <= now
                ]
                assert not lower, f"shed {t.instance_id} while lower {lower} runs"
            if d.action == "stop" and t.on_shed is R:
                del live[d.instance_id]  # the cluster moves it and terminates this copy
            out.append(f"{now}:{d.action}:{d.instance_id}")
            decisions.append(d)
        assert policy.active == any(
            t.state in (TaskState.PAUSED, TaskState.SHED) for t in live.values()
        ), "active iff something is held back"
    return out, decisions


THREE = [Task("low", 10), Task("mid", 50), Task("high", 100)]

CASES: list[tuple[str, list[Task], Recording, list[str]]] = [
    (
        "nothing_shed_below_thresholds",
        THREE,
        Recording(
            cpu=((89.9, 120),),
            memory=((89.0, 120),),
            temperature=((79.0, 120),),
        ),
        [],
    ),
    (
        "short_spikes_do_not_count",  # above enter for 4 s at a time, never 5
        THREE,
        Recording(cpu=((99.0, 4), (50.0, 1)) * 20),
        [],
    ),
    (
        "lowest_priority_first_then_next_after_the_step_interval",
        THREE,
        Recording(cpu=((95.0, 20), (30.0, 60))),
        ["5:pause:low", "8:pause:mid", "30:resume:mid", "40:resume:low"],
    ),
    (
        "cpu_never_sheds_the_most_important_task",
        THREE,
        Recording(cpu=((99.0, 60),)),
        ["5:pause:low", "8:pause:mid"],
    ),
    (
        "equal_priorities_newest_first",
        [Task("old", 10, started_at=1.0), Task("new", 10, started_at=2.0), Task("top", 100)],
        Recording(cpu=((95.0, 10),)),
        ["5:pause:new", "8:pause:old", "20:resume:old", "30:resume:new"],
    ),
    (
        "one_step_is_enough_when_pressure_drops_below_enter",
        THREE,
        Recording(cpu=((95.0, 6), (80.0, 30), (50.0, 30))),
        ["5:pause:low", "46:resume:low"],  # 80 % is inside the band: hold, no resume
    ),
    (
        "hysteresis_hovering_around_enter_and_exit_does_not_flap",
        THREE,
        Recording(cpu=((95.0, 6), (72.0, 1), (68.0, 1)) * 1 + ((72.0, 1), (68.0, 1)) * 30),
        ["5:pause:low"],  # never 10 s continuously at or below 70: stays paused
    ),
    (
        "temperature_alone_triggers_and_may_shed_everything",
        THREE,
        Recording(cpu=((5.0, 60),), temperature=((85.0, 12), (65.0, 48))),
        [
            "5:pause:low",
            "8:pause:mid",
            "11:pause:high",
            "22:resume:high",
            "32:resume:mid",
            "42:resume:low",
        ],
    ),
    (
        "throttling_flag_triggers",
        THREE,
        Recording(throttled=((1.0, 7), (0.0, 30))),
        ["5:pause:low", "17:resume:low"],
    ),
    (
        "memory_stops_instead_of_pausing_and_stops_paused_tasks_too",
        THREE,
        Recording(cpu=((95.0, 8), (40.0, 60)), memory=((30.0, 8), (95.0, 10), (50.0, 50))),
        ["5:pause:low", "13:stop:low", "16:stop:mid", "28:resume:mid", "38:resume:low"],
    ),
    (
        "on_shed_stop_and_reschedule",
        [Task("gone", 5, on_shed=R), Task("stopped", 10, on_shed=S), Task("top", 100)],
        Recording(cpu=((95.0, 9), (20.0, 40))),
        ["5:stop:gone", "8:stop:stopped", "19:resume:stopped"],
    ),
    (
        "latency_budget_violation_triggers",
        [Task("batch", 10), Task("camera", 100, budget_ms=100.0)],
        Recording(
            cpu=((60.0, 60),),
            p95={"camera": ((150.0, 8), (40.0, 40))},
        ),
        ["5:pause:batch", "18:resume:batch"],
    ),
    (
        "latency_of_the_lowest_task_sheds_nothing",
        [Task("batch", 10, budget_ms=50.0), Task("camera", 100, budget_ms=100.0)],
        Recording(p95={"batch": ((500.0, 30),), "camera": ((40.0, 30),)}),
        [],
    ),
    (
        "latency_sheds_only_below_the_late_task",
        [Task("a", 10), Task("cam", 50, budget_ms=100.0), Task("top", 100)],
        Recording(p95={"cam": ((300.0, 60),)}),
        ["5:pause:a"],  # nothing below cam is left; top is never shed for cam
    ),
    (
        "a_task_shed_again_soon_waits_twice_as_long",
        [Task("low", 10), Task("top", 100)],
        Recording(cpu=((95.0, 6), (30.0, 15), (95.0, 6), (30.0, 40))),
        ["5:pause:low", "16:resume:low", "26:pause:low", "47:resume:low"],
    ),
    (
        "a_lower_task_deployed_while_a_higher_one_is_held_is_shed_too",
        [Task("mid", 50), Task("top", 100), Task("late", 5, appears_at=12)],
        Recording(cpu=((95.0, 8), (75.0, 10), (40.0, 60))),
        ["5:pause:mid", "12:pause:late", "28:resume:mid", "38:resume:late"],
    ),
]


@pytest.mark.parametrize(
    ("tasks", "recording", "expected"),
    [pytest.param(t, r, e, id=name) for name, t, r, e in CASES],
)
def test_recorded_sequences(tasks: list[Task], recording: Recording, expected: list[str]) -> None:
    got, _ = simulate(tasks, recording)
    assert got == expected


def test_decisions_carry_the_values_that_caused_them() -> None:
    _, decisions = simulate(
        [Task("batch", 10), Task("camera", 100, budget_ms=100.0)],
        Recording(cpu=((95.0, 6), (20.0, 30)), p95={"camera": ((150.0, 6), (30.0, 30))}),
    )
    pause, resume = decisions
    assert pause.action == "pause" and pause.reason.startswith("shed (pause): ")
    assert "cpu 95.0% >= 90% for 5s" in pause.reason
    assert "latency of camera (priority 100) p95 150 ms over its 100 ms budget" in pause.reason
    assert pause.data["signals"] == ["cpu", "latency"]
    assert pause.data["values"]["cpu"] == 95.0 and pause.data["values"]["latency"] == 1.5
    assert pause.data["thresholds"]["cpu"] == {
        "enter": 90.0,
        "exit": 70.0,
        "enter_for_s": 5.0,
        "exit_for_s": 5.0,
    }
    assert pause.data["latency"] == {
        "instance_id": "camera",
        "priority": 100,
        "p95_ms": 150.0,
        "budget_ms": 100.0,
    }
    assert pause.data["priority"] == 10 and pause.data["on_shed"] == "pause"
    assert resume.action == "resume" and resume.reason.startswith("resumed: pressure clear")
    assert resume.data["shedder"] == "resume" and resume.data["values"]["cpu"] == 20.0


def test_disabled_signals_are_ignored() -> None:
    config = ShedConfig(signals=frozenset({"memory"}))
    got, _ = simulate(THREE, Recording(cpu=((100.0, 30),), temperature=((95.0, 30),)), config)
    assert got == []


def test_stale_inference_stats_are_ignored() -> None:
    policy = ShedPolicy(ShedConfig(latency=SignalConfig(1.0, 0.8, 0.0, 0.0)))
    views = [
        TaskView("batch", TaskState.RUNNING, 10),
        TaskView(
            "camera",
            TaskState.RUNNING,
            100,
            latency_budget_ms=100.0,
            latency_p95_ms=500.0,
            frames_executed=10,
            inference_age_s=30.0,  # the worker stopped writing long ago
        ),
    ]
    assert policy.decide(0.0, Reading(), views) == []
    fresh = [views[0], replace(views[1], inference_age_s=1.0)]
    assert [d.instance_id for d in policy.decide(1.0, Reading(), fresh)] == ["batch"]


def test_a_starved_worker_counts_as_over_budget() -> None:
    policy = ShedPolicy(ShedConfig(latency=SignalConfig(1.0, 0.8, 0.0, 0.0)))
    views = [
        TaskView("batch", TaskState.RUNNING, 10),
        TaskView(
            "camera",
            TaskState.RUNNING,
            100,
            latency_budget_ms=100.0,
            frames_dropped=12,  # nothing executed in the window
            inference_age_s=0.5,
        ),
    ]
    (d,) = policy.decide(0.0, Reading(), views)
    assert d.instance_id == "batch" and "frames dropped, none run" in d.reason


def test_tasks_shed_by_a_previous_engine_run_are_adopted_and_resumed() -> None:
    policy = ShedPolicy()
    views = [
        TaskView("a", TaskState.PAUSED, 10, reason="shed (pause): cpu 95% >= 90% for 5s"),
        TaskView("b", TaskState.SHED, 20, on_shed=S, reason="shed (stop): memory ..."),
        TaskView("c", TaskState.SHED, 30, on_shed=R, reason="shed (stop): ..."),  # moved away
        TaskView("d", TaskState.PAUSED, 40, reason="someone else"),
        TaskView("top", TaskState.RUNNING, 100),
    ]
    assert policy.decide(0.0, Reading(cpu_percent=10.0), views) == []
    assert policy.held == ["a", "b"] and policy.active
    (first,) = policy.decide(10.0, Reading(cpu_percent=10.0), views)
    assert (first.instance_id, first.action) == ("b", "resume")


def test_tasks_that_disappear_are_forgotten() -> None:
    policy = ShedPolicy(ShedConfig(cpu=SignalConfig(90.0, 70.0, 0.0, 0.0)))
    views = [TaskView("low", TaskState.RUNNING, 10), TaskView("top", TaskState.RUNNING, 100)]
    (d,) = policy.decide(0.0, Reading(cpu_percent=99.0), views)
    assert d.instance_id == "low" and policy.active
    policy.decide(1.0, Reading(cpu_percent=99.0), views[1:])  # terminated meanwhile
    assert not policy.active


def test_signal_config_rejects_exit_above_enter() -> None:
    with pytest.raises(ValueError, match="above enter"):
        SignalConfig(70.0, 90.0)
    with pytest.raises(ValueError, match="unknown shedding signal"):
        ShedConfig(signals=frozenset({"cpu", "humidity"}))


# ---------------------------------------------------------------- the adapter


def _sample(cpu: float = 50.0, temp: float | None = None, throttling: Throttling | None = None):
    return Sample(
        ts=1000.0,
        cpu_percent=cpu,
        cpu_per_core=[cpu, cpu],
        load_1m=1.0,
        memory=MemoryStatus(total_mib=1000, available_mib=400, used_percent=60.0),
        disk=DiskStatus(total_mib=1000, free_mib=500, used_percent=50.0),
        network=NetworkStatus(),
        temperatures_c={"cpu": temp} if temp is not None else {},
        max_temperature_c=temp,
        throttling=throttling or Throttling(),
    )


def _record(iid: str, **spec: Any) -> TaskRecord:
    return TaskRecord(
        instance_id=iid,
        job_id="j",
        spec=TaskSpec(runtime=Runtime.NATIVE, command=["sleep", "1"], **spec),
    )


def test_adapter_builds_readings_and_views() -> None:
    records = {
        "cam": _record("cam", priority=100, latency_budget_ms=80.0),
        "batch": _record("batch", priority=10, on_shed=ShedAction.STOP),
    }
    shedder = NodeShedder(
        ShedPolicy(), lambda: records, cpu_source="tasks", cpu_count=2, wall=lambda: 1000.0
    )
    tasks = [
        TaskStatus(
            instance_id="cam",
            state=TaskState.RUNNING,
            runtime=Runtime.NATIVE,
            priority=100,
            cpu_percent=30.0,
            inference=InferenceStats(frames_executed=10, latency_p95_ms=40.0, ts=998.0),
        ),
        TaskStatus(
            instance_id="batch",
            state=TaskState.RUNNING,
            runtime=Runtime.NATIVE,
            priority=10,
            cpu_percent=100.0,
        ),
    ]
    reading = shedder.reading(_sample(cpu=90.0, temp=71.5), tasks)
    assert reading.cpu_percent == 65.0  # (30 + 100) / 2 cores: the tasks only
    assert reading.memory_percent == 60.0 and reading.temperature_c == 71.5
    assert not reading.throttled
    cam, batch = shedder.views(tasks)
    assert cam.latency_budget_ms == 80.0 and cam.latency_p95_ms == 40.0
    assert cam.inference_age_s == 2.0 and cam.frames_executed == 10
    assert batch.on_shed is ShedAction.STOP and batch.inference_age_s is None
    host = NodeShedder(ShedPolicy(), lambda: records)
    assert host.reading(_sample(cpu=90.0), tasks).cpu_percent == 90.0
    capped = host.reading(_sample(throttling=Throttling(frequency_capped=True)), tasks)
    assert capped.throttled
    assert not host.reading(_sample(throttling=Throttling(under_voltage=True)), tasks).throttled


def test_adapter_evaluates_with_its_clock() -> None:
    now = [0.0]
    config = ShedConfig(cpu=SignalConfig(90.0, 70.0, 2.0, 2.0))
    records = {"low": _record("low", priority=1), "top": _record("top", priority=9)}
    shedder = NodeShedder(ShedPolicy(config), lambda: records, clock=lambda: now[0])
    tasks = [
        TaskStatus(instance_id=i, state=TaskState.RUNNING, runtime=Runtime.NATIVE, priority=p)
        for i, p in (("low", 1), ("top", 9))
    ]
    assert shedder.evaluate(_sample(cpu=95.0), tasks) == []
    now[0] = 2.0
    (d,) = shedder.evaluate(_sample(cpu=95.0), tasks)
    assert d.instance_id == "low" and d.action == "pause" and shedder.active


@pytest.mark.parametrize("seed", range(12), ids=lambda s: f"random_walk_{s}")
def test_never_sheds_a_higher_priority_task_while_a_lower_one_runs(seed: int) -> None:
    """Random walks of every signal and random priorities; `simulate` checks at each
    decision that no lower-priority task still runs, one step at a time, step spacing,
    and that `active` matches what is held back."""
    import random

    rng = random.Random(seed)

    def walk(lo: float, hi: float, n: int = 240) -> Segments:
        value, out = rng.uniform(lo, hi), []
        for _ in range(n // 4):
            value = min(hi, max(lo, value + rng.uniform(-15, 15)))
            out.append((round(value, 1), 4))
        return out

    tasks = [
        Task(
            f"t{i}",
            rng.choice([1, 5, 10, 50, 100, 500]),
            on_shed=rng.choice([P, P, S, R]),
            budget_ms=100.0 if i % 3 == 0 else None,
            started_at=float(i),
            appears_at=rng.choice([0, 0, 30, 90]),
        )
        for i in range(6)
    ]
    recording = Recording(
        cpu=walk(40, 100),
        memory=walk(60, 100),
        temperature=walk(55, 95),
        throttled=[(float(rng.random() < 0.2), 8) for _ in range(30)],
        p95={t.instance_id: walk(20, 200) for t in tasks if t.budget_ms},
    )
    got, _ = simulate(tasks, recording)
    assert got, "the walk should cause some shedding"


# ---------------------------------------------------------------- in the engine loop


def test_engine_publishes_the_shed_event_before_the_status_showing_it(tmp_path) -> None:
    """With the real policy in the engine's hook: the PAUSED event (with its data) goes
    out before the status that lists the task PAUSED and `shedding: true`."""
    import queue

    from node_engine.engine import Engine
    from node_engine.mqtt import CommandReceived
    from node_engine.state import Outbox, SeenCommands, TaskStore
    from node_engine.supervisor import Supervisor
    from schemas.mqtt import (
        DeployCommand,
        DeployMessage,
        StatusMessage,
        TaskEventMessage,
        decode,
    )
    from tests.unit.test_node_engine_engine import FakeTransport, go_online
    from tests.unit.test_node_engine_monitor import FakePsutil, _monitor
    from tests.unit.test_node_engine_supervisor import FakeRuntime

    transport = FakeTransport()
    store = TaskStore(tmp_path)
    eng = Engine(
        node_id="node1",
        inbox=queue.SimpleQueue(),
        transport=transport,
        monitor=_monitor(tmp_path, FakePsutil()),
        supervisor_factory=lambda emit: Supervisor(
            {Runtime.NATIVE: FakeRuntime()}, {}, store, emit
        ),
        outbox=Outbox(tmp_path / "outbox.json"),
        seen=SeenCommands(tmp_path / "commands.json"),
        status_interval=1.0,
        runtimes=[Runtime.NATIVE],
    )
    config = ShedConfig(cpu=SignalConfig(1.0, 0.5, 0.0, 0.0), signals=frozenset({"cpu"}))
    eng.shedder = NodeShedder(ShedPolicy(config), lambda: eng.supervisor.tasks)
    go_online(eng, transport)
    for i, (iid, prio) in enumerate((("low", 1), ("top", 9))):
        spec = TaskSpec(runtime=Runtime.NATIVE, command=["sleep", "1"], priority=prio)
        msg = DeployMessage(
            id=f"c{i}",
            node_id="node1",
            payload=DeployCommand(instance_id=iid, job_id="j", spec=spec),
        )
        eng._handle(CommandReceived(msg, i + 1, 1, 1))
    eng._flush()
    transport.published.clear()
    eng.tick()  # FakePsutil reports 30 % CPU: over the 1 % threshold at once
    kinds = [decode(p).kind for _, p, _, _ in transport.published]
    assert kinds == ["task_event", "status"]
    event, status = (decode(p) for _, p, _, _ in transport.published)
    assert isinstance(event, TaskEventMessage) and isinstance(status, StatusMessage)
    assert event.payload.instance_id == "low" and event.payload.state is TaskState.PAUSED
    assert event.payload.data.values is not None and event.payload.data.values["cpu"] == 30.0
    assert status.payload.shedding is True
    assert {t.instance_id: t.state for t in status.payload.tasks} == {
        "low": TaskState.PAUSED,
        "top": TaskState.RUNNING,
    }
