"""The cluster core's decisions as pure functions: state + message + time -> typed effects.

No core, no thread, no store and no broker here: a `ClusterState`, the plan functions
(`inbound.apply`, `admission`, `timers.tick`) and the effects they return. Then the
runner, on a real persister over in-memory SQLite, executes effects.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from cluster_orchestrator import admission, timers
from cluster_orchestrator.effects import (
    Count,
    Effect,
    Effects,
    Now,
    Persist,
    Publish,
    RecordEvent,
    Report,
)
from cluster_orchestrator.inbound import apply
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.mqtt_adapter import Inbound
from cluster_orchestrator.persister import Persister
from cluster_orchestrator.records import EVENTS, INSTANCES, NODES
from cluster_orchestrator.runner import EffectRunner
from cluster_orchestrator.settings import ClusterSettings
from cluster_orchestrator.state import ClusterState
from schemas.cluster import InstanceChange, PlaceInstanceRequest
from schemas.common import Arch, Runtime
from schemas.job import InstanceState, TaskSpec, TaskState
from schemas.mqtt import (
    AckMessage,
    CommandAck,
    CommandMessage,
    DeployMessage,
    StatusMessage,
    TerminateMessage,
)
from schemas.node import DiskStatus, JoinRequest, Liveness, MemoryStatus, NodeInfo, NodeStatus
from schemas.resources import Resources
from store import open_store

T0 = 1000.0
WALL = 1.7e9


def at(t: float) -> Now:
    return Now(mono=t, wall=WALL + t)


def new_state() -> ClusterState:
    settings = ClusterSettings(
        name="c1", status_interval=1.0, lost_grace=3.0, ack_timeout=2.0, dispatch_attempts=3
    )
    return ClusterState(settings=settings, rng=random.Random(7))


def join(st: ClusterState, name: str, t: float = T0) -> str:
    info = NodeInfo(
        name=name,
        hostname=name,
        arch=Arch.AMD64,
        cpu_cores=4,
        memory_mib=4096,
        disk_mib=10000,
        runtimes=[Runtime.NATIVE],
    )
    fx = Effects(at(t))
    return admission.join(st, fx, JoinRequest(info=info)).node_id


def status(node_id: str, seq: int, t: float, tasks: list[Any] | None = None) -> Inbound:
    payload = NodeStatus(
        ts=WALL + t,
        seq=seq,
        cpu_percent=0.0,
        memory=MemoryStatus(total_mib=4096, available_mib=4096, used_percent=0),
        disk=DiskStatus(total_mib=10000, free_mib=10000, used_percent=0),
        tasks=tasks or [],
    )
    message = StatusMessage(node_id=node_id, ts=WALL + t, payload=payload)
    return Inbound(message=message, retained=False, received_at=WALL + t)


def ack_of(command: CommandMessage, t: float, accepted: bool = True) -> Inbound:
    ack = CommandAck(
        command_id=command.id,
        command_kind=command.kind,
        instance_id=command.payload.instance_id,
        accepted=accepted,
    )
    message = AckMessage(node_id=command.node_id, ts=WALL + t, payload=ack)
    return Inbound(message=message, retained=False, received_at=WALL + t)


def request(iid: str) -> PlaceInstanceRequest:
    spec = TaskSpec(
        runtime=Runtime.NATIVE, command=["sleep", "100"], resources=Resources(cpu=1, memory_mib=64)
    )
    return PlaceInstanceRequest(instance_id=iid, job_id="j", job_name="job", spec=spec)


def kinds(effects: list[Effect]) -> list[str]:
    return [type(e).__name__ for e in effects]


def published(effects: list[Effect]) -> list[CommandMessage]:
    return [e.message for e in effects if isinstance(e, Publish)]


def changes(effects: list[Effect]) -> list[InstanceChange]:
    return [e.change for e in effects if isinstance(e, Report) and e.change is not None]


# ------------------------------------------------------------------ inbound.apply


def test_a_status_from_an_unknown_node_is_one_counted_rejection() -> None:
    st = new_state()
    effects = apply(st, status("nobody", 1, T0), at(T0))
    assert effects == [Count("edge_cluster_mqtt_rejected_total", {"reason": "unknown_node"})]
    assert st.nodes == {} and st.lags == []


def test_the_first_status_makes_a_node_ready_with_its_effects_typed() -> None:
    st = new_state()
    node_id = join(st, "a")
    effects = apply(st, status(node_id, 1, T0 + 0.5), at(T0 + 0.5))
    assert st.nodes[node_id].state is Liveness.READY
    assert kinds(effects) == ["Persist", "Count", "RecordEvent", "Report"]
    persist, count, event, report = effects
    assert isinstance(persist, Persist) and persist.collection == NODES
    assert persist.doc["liveness"] == "READY" and not persist.durable
    assert count == Count("edge_cluster_node_transitions_total", {"state": "READY"})
    assert isinstance(event, RecordEvent) and event.event.kind == "node.liveness"
    assert report == Report(None)  # capacity changed: report soon
    # the next status changes memory only: no write, no report
    assert apply(st, status(node_id, 2, T0 + 1.5), at(T0 + 1.5)) == []
    # an older one is refused
    assert apply(st, status(node_id, 1, T0 + 0.5), at(T0 + 1.6)) == [
        Count("edge_cluster_mqtt_rejected_total", {"reason": "stale_status"})
    ]


def test_a_placement_then_its_ack_as_plans_and_effects() -> None:
    st = new_state()
    node_id = join(st, "a")
    apply(st, status(node_id, 1, T0), at(T0))
    fx = Effects(at(T0 + 1))
    answer = admission.place_instance(st, fx, request("i1"))
    assert answer.accepted and answer.node_id == node_id
    (deploy,) = published(fx.items)
    assert isinstance(deploy, DeployMessage) and deploy.node_id == node_id
    # a fresh placement: the root has the node from the answer, no instance change
    assert changes(fx.items) == []
    writes = [e for e in fx.items if isinstance(e, Persist) and e.collection == INSTANCES]
    assert [w.doc["state"] for w in writes] == ["ASSIGNED"]
    assert st.instances["i1"].state is InstanceState.ASSIGNED and deploy.id in st.pending

    effects = apply(st, ack_of(deploy, T0 + 1.1), at(T0 + 1.1))
    assert st.instances["i1"].state is InstanceState.STARTING and st.pending == {}
    (change,) = changes(effects)
    assert change.state is InstanceState.STARTING and change.node_id == node_id
    assert [e.doc["state"] for e in effects if isinstance(e, Persist)] == ["STARTING"]
    assert published(effects) == []
    # the same ack again (QoS 1 redelivery): counted, nothing else
    assert kinds(apply(st, ack_of(deploy, T0 + 1.2), at(T0 + 1.2))) == ["Count"]


def test_a_refused_deploy_plans_the_next_node() -> None:
    st = new_state()
    a, b = join(st, "a"), join(st, "b")
    apply(st, status(a, 1, T0), at(T0))
    apply(st, status(b, 1, T0), at(T0))
    fx = Effects(at(T0 + 1))
    admission.place_instance(st, fx, request("i1"))
    (first,) = published(fx.items)
    effects = apply(st, ack_of(first, T0 + 1.1, accepted=False), at(T0 + 1.1))
    (second,) = published(effects)
    assert isinstance(second, DeployMessage) and second.node_id != first.node_id
    assert st.instances["i1"].tried == [first.node_id]
    assert [c.state for c in changes(effects)] == [InstanceState.ASSIGNED]  # a node change


def test_a_status_listing_the_task_stands_in_for_a_lost_ack() -> None:
    from schemas.node import TaskStatus

    st = new_state()
    node_id = join(st, "a")
    apply(st, status(node_id, 1, T0), at(T0))
    fx = Effects(at(T0 + 1))
    admission.place_instance(st, fx, request("i1"))
    running = TaskStatus(instance_id="i1", state=TaskState.RUNNING, runtime=Runtime.NATIVE)
    effects = apply(st, status(node_id, 2, T0 + 1.5, [running]), at(T0 + 1.5))
    assert st.pending == {} and st.instances["i1"].state is InstanceState.RUNNING
    assert Count("edge_cluster_acks_by_status_total") in effects
    assert [c.state for c in changes(effects)] == [InstanceState.RUNNING]


# ------------------------------------------------------------------ timers.tick


def test_silence_then_loss_reschedules_with_commands_as_effects() -> None:
    st = new_state()
    a, b = join(st, "a"), join(st, "b")
    apply(st, status(a, 1, T0), at(T0))
    apply(st, status(b, 1, T0), at(T0))
    fx = Effects(at(T0))
    admission.place_instance(st, fx, request("i1"))
    (deploy,) = published(fx.items)
    apply(st, ack_of(deploy, T0), at(T0))
    held, other = deploy.node_id, (b if deploy.node_id == a else a)
    seen: list[Effect] = []
    t = T0
    while t < T0 + 7.0:  # `other` keeps reporting, `held` is silent
        t += 0.5
        apply(st, status(other, int(t * 10), t), at(t))
        fx = Effects(at(t))
        timers.tick(st, fx)
        seen += fx.items
    assert st.nodes[held].state is Liveness.LOST
    assert st.instances["i1"].node_id == other
    commands = published(seen)
    assert [type(c).__name__ for c in commands] == ["TerminateMessage", "DeployMessage"]
    assert isinstance(commands[0], TerminateMessage) and commands[0].node_id == held
    assert commands[1].node_id == other
    assert [c.state for c in changes(seen)] == [InstanceState.ASSIGNED]  # moved, not LOST


# ------------------------------------------------------------------ the runner


def test_the_runner_executes_effects_in_order() -> None:
    store = open_store("sqlite://:memory:")
    metrics = Metrics()
    persister = Persister(store, metrics)
    persister.start()
    sent: list[CommandMessage] = []
    wakes: list[int] = []

    def publish(message: CommandMessage) -> bool:
        sent.append(message)
        return True

    runner = EffectRunner(persister=persister, metrics=metrics, publish=publish)
    runner.add_listener(lambda: wakes.append(1))
    try:
        st = new_state()
        node_id = join(st, "a")
        apply(st, status(node_id, 1, T0), at(T0))
        fx = Effects(at(T0 + 1))
        admission.place_instance(st, fx, request("i1"))
        (deploy,) = published(fx.items)
        effects = [*fx.items, *apply(st, ack_of(deploy, T0 + 1.1), at(T0 + 1.1))]
        assert runner.run(effects) is None  # no durable write among them
        assert persister.flush(5)
        assert sent == [deploy]
        doc = store.get(INSTANCES, "i1")
        assert doc is not None and doc["state"] == "STARTING"
        kept = {e.event.id for e in effects if isinstance(e, RecordEvent)}
        assert {d["_id"] for d in store.find(EVENTS)} == kept
        assert [c.state for c in runner.take_changes()] == [InstanceState.STARTING]
        assert wakes == [1]  # one wake-up per run, however many changes
        assert metrics.counter("edge_cluster_placements_total", {"result": "placed"}) == 1
        # a durable write hands back its future
        done = runner.run([Persist(NODES, {"_id": "x"}, durable=True)])
        assert done is not None and done.result(5) is None
        assert store.get(NODES, "x") is not None
    finally:
        persister.stop()
        store.close()


def test_a_command_the_broker_does_not_take_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    store = open_store("sqlite://:memory:")
    metrics = Metrics()
    runner = EffectRunner(persister=Persister(store, metrics), metrics=metrics)
    st = new_state()
    node_id = join(st, "a")
    apply(st, status(node_id, 1, T0), at(T0))
    fx = Effects(at(T0))
    admission.place_instance(st, fx, request("i1"))
    with caplog.at_level("WARNING"):
        runner.run([e for e in fx.items if isinstance(e, Publish)])
    assert "could not publish deploy" in caplog.text
    store.close()
