"""Cluster side of shedding (issue 7): SHED/resume states with their reasons and data,
``on_shed: reschedule`` handled like a lost instance on the shedding node, and the
inference figures of node statuses in the API view and in reports to the root."""

from __future__ import annotations

from schemas.cluster import ClusterReport, InstanceChange
from schemas.common import Runtime
from schemas.job import Constraints, InstanceState, JobSpec, ShedAction, TaskState
from schemas.mqtt import StatusMessage, TaskEvent, TaskEventMessage, TerminateMessage
from schemas.node import DiskStatus, InferenceStats, MemoryStatus, NodeStatus, TaskStatus
from tests.unit import test_cluster_core
from tests.unit.test_cluster_core import Harness

h = test_cluster_core.h  # the fixture

SHED_DATA = {"shedder": "pause", "signals": ["cpu"], "values": {"cpu": 97.5}}


def shed_event(h: Harness, node: str, iid: str, state: TaskState, reason: str, **data) -> None:
    h.deliver(
        TaskEventMessage(
            node_id=node,
            ts=h.clock.wall(),
            payload=TaskEvent(instance_id=iid, state=state, reason=reason, data=data),
        )
    )


def test_pause_and_resume_show_as_shed_and_running_with_reasons_and_values(h: Harness) -> None:
    a = h.join("a")
    h.place("i1")
    h.run("i1")
    h.core.take_changes()
    shed_event(h, a, "i1", TaskState.PAUSED, "shed (pause): cpu 97.5% >= 90% for 5s", **SHED_DATA)
    inst = h.inst("i1")
    assert inst.state is InstanceState.SHED and inst.reason.startswith("shed (pause): cpu")
    event = inst.events[-1]
    assert event.state == "SHED" and event.data["values"] == {"cpu": 97.5}
    assert event.data["previous"] == "RUNNING"
    shed_event(h, a, "i1", TaskState.RUNNING, "resumed: pressure clear for 10s")
    assert h.inst("i1").state is InstanceState.RUNNING
    changes = h.core.take_changes()
    assert [(c.state, c.reason.split(":")[0]) for c in changes] == [
        (InstanceState.SHED, "shed (pause)"),
        (InstanceState.RUNNING, "resumed"),
    ]


def test_reschedule_moves_the_instance_off_the_shedding_node(h: Harness) -> None:
    a, b = h.join("a"), h.join("b")
    h.place("i1", constraints=Constraints(node="a"), spec={"on_shed": ShedAction.RESCHEDULE})
    h.run("i1")
    h.inst("i1").constraints = Constraints()
    h.core.take_changes()
    shed_event(h, a, "i1", TaskState.SHED, "shed (stop): memory 95% >= 90% for 5s", **SHED_DATA)
    inst = h.inst("i1")
    assert inst.node_id == b and inst.state is InstanceState.ASSIGNED
    assert inst.reason.startswith("rescheduled: shed by a: shed (stop): memory")
    states = [(e.state, e.node_id) for e in inst.events][-2:]
    assert states == [("SHED", a), ("ASSIGNED", b)]
    assert inst.events[-2].data["rescheduling"] is True
    assert inst.events[-2].data["values"] == {"cpu": 97.5}
    terminates = [m for m in h.take() if isinstance(m, TerminateMessage)]
    assert [(m.node_id, m.payload.instance_id) for m in terminates] == [(a, "i1")]
    # the root sees the move, not a SHED it would answer by replacing the instance
    assert [c.state for c in h.core.take_changes()] == [InstanceState.ASSIGNED]


def test_reschedule_without_another_node_reports_shed_to_the_root(h: Harness) -> None:
    a = h.join("a")
    h.place("i1", spec={"on_shed": ShedAction.RESCHEDULE})
    h.run("i1")
    h.core.take_changes()
    shed_event(h, a, "i1", TaskState.SHED, "shed (stop): temperature 85 C >= 80 C for 5s")
    inst = h.inst("i1")
    assert inst.state is InstanceState.SHED and inst.node_id == a
    assert "no other node fits" in inst.reason
    (change,) = h.core.take_changes()
    assert change.state is InstanceState.SHED and "shed by a" in change.reason
    # later statuses listing the shed task change nothing (the root decides now)
    h.status(a, [("i1", TaskState.SHED)])
    assert h.inst("i1").state is InstanceState.SHED and h.core.take_changes() == []


def test_shed_root_side_replica_plan_replaces_a_rescheduled_instance() -> None:
    from root_orchestrator.replicas import InstanceFacts, ReplicaPlan, diff_replicas

    shed = [InstanceFacts(id="a", replica=0, state=InstanceState.SHED, restarts=0)]
    plan = diff_replicas(1, shed, on_shed=ShedAction.RESCHEDULE)
    assert plan == ReplicaPlan(terminate=("a",))


def test_inference_figures_reach_the_view_and_the_report(h: Harness) -> None:
    a = h.join("a")
    h.place("cam")
    h.run("cam")
    stats = InferenceStats(
        frames_executed=29, frames_dropped=1, latency_p95_ms=42.0, budget_ms=100.0, ts=5.0
    )
    payload = NodeStatus(
        ts=h.clock.wall(),
        seq=99,
        cpu_percent=10.0,
        memory=MemoryStatus(total_mib=4096, available_mib=4096, used_percent=0),
        disk=DiskStatus(total_mib=10000, free_mib=10000, used_percent=0),
        tasks=[
            TaskStatus(
                instance_id="cam", state=TaskState.RUNNING, runtime=Runtime.NATIVE, inference=stats
            )
        ],
    )
    h.deliver(StatusMessage(node_id=a, ts=h.clock.wall(), payload=payload))
    h.seq[a] = 99
    view = h.core.instance_view(h.inst("cam"))
    assert view.inference == stats
    report: ClusterReport = h.core.build_report(seq=1, full=True, changes=[])
    (change,) = report.instances
    assert change.data.inference is not None and change.data.inference.latency_p95_ms == 42.0
    assert change.data.node_name == "a"
    h.clock.t += 1
    h.status(a, [("cam", TaskState.RUNNING)])  # no figures any more
    assert h.core.instance_view(h.inst("cam")).inference is None


def test_root_keeps_the_latest_inference_figures_of_an_instance() -> None:
    """The root's `clusters.take_inference` (used by `apply_report`) keeps what the last
    change carried, drops it when a change has none or the instance finished."""
    from root_orchestrator import clusters
    from root_orchestrator.settings import RootSettings
    from root_orchestrator.state import RootState
    from store import open_store

    settings = RootSettings(
        store_url="sqlite://:memory:",
        operator_tokens=["operator-token-1"],
        registration_token="registration-token-1",
    )
    state = RootState(open_store("sqlite://:memory:"), settings)
    figures = {"frames_executed": 10, "latency_p95_ms": 12.0}
    change = InstanceChange(
        instance_id="i1",
        job_id="j",
        state=InstanceState.RUNNING,
        ts=1.0,
        data={"node_name": "a", "inference": figures},
    )
    clusters.take_inference(state, change)
    assert state.inference["i1"].latency_p95_ms == 12.0
    clusters.take_inference(state, change.model_copy(update={"data": {"inference": {"bad": 1}}}))
    assert "i1" not in state.inference
    clusters.take_inference(state, change)
    clusters.take_inference(state, change.model_copy(update={"state": InstanceState.TERMINATED}))
    assert "i1" not in state.inference


def test_job_spec_for_the_inference_worker_validates() -> None:
    spec = JobSpec.model_validate(
        {
            "name": "detector",
            "runtime": "native",
            "priority": 900,
            "latency_budget_ms": 100,
            "on_shed": "pause",
            "command": [
                "/opt/edge/venv/bin/python",
                "-m",
                "node_engine.inference.worker",
                "--model",
                "/opt/models/detector.onnx",
                "--target-fps",
                "15",
                "--budget-ms",
                "100",
            ],
        }
    )
    assert spec.task_spec().latency_budget_ms == 100
