"""The core loop's decisions, driven synchronously with a fake clock and a fake broker.

No thread runs here: tests feed messages with `handle` (one step: `inbound.apply`,
then its effects) and advance time with `tick` (`timers.tick`, then its effects), so
dispatch retries, liveness, rescheduling and reconcile are checked exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
from pydantic import SecretStr

from cluster_orchestrator.core import ClusterCore, Forbidden, NotFound
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.mqtt_adapter import Inbound
from cluster_orchestrator.persister import Persister
from cluster_orchestrator.records import INSTANCES, NODES
from cluster_orchestrator.settings import ClusterSettings
from schemas.cluster import MAX_INSTANCE_CHANGES, PlaceInstanceRequest
from schemas.common import Arch, Runtime
from schemas.job import (
    Constraints,
    InstanceState,
    RestartPolicy,
    ShedAction,
    TaskSpec,
    TaskState,
)
from schemas.mqtt import (
    AckMessage,
    CommandAck,
    CommandMessage,
    DeployMessage,
    Presence,
    PresenceMessage,
    StatusMessage,
    TaskEvent,
    TaskEventMessage,
    TerminateMessage,
)
from schemas.node import (
    DiskStatus,
    JoinRequest,
    Liveness,
    MemoryStatus,
    NodeInfo,
    NodeStatus,
    TaskStatus,
)
from schemas.resources import Resources
from store import Store, open_store


@dataclass
class Clock:
    t: float = 1000.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1.7e9 + self.t


class Harness:
    def __init__(
        self,
        core: ClusterCore,
        clock: Clock,
        sent: list[CommandMessage],
        store: Store,
        persister: Persister,
        metrics: Metrics,
    ) -> None:
        self.core = core
        self.clock = clock
        self.sent = sent
        self.store = store
        self.persister = persister
        self.metrics = metrics
        self.seq: dict[str, int] = {}

    # ---- time
    def advance(self, seconds: float, step: float = 0.1) -> None:
        end = self.clock.t + seconds
        while self.clock.t < end - 1e-9:
            self.clock.t = min(end, self.clock.t + step)
            self.core.tick(self.clock.t)

    # ---- nodes
    def join(self, name: str, cores: float = 4, mem: int = 4096, **kw) -> str:
        info = NodeInfo(
            name=name,
            hostname=name,
            arch=kw.pop("arch", Arch.AMD64),
            cpu_cores=cores,
            memory_mib=mem,
            disk_mib=10000,
            runtimes=kw.pop("runtimes", [Runtime.NATIVE]),
            **kw,
        )
        grant = self.core.join(JoinRequest(info=info))
        self.status(grant.node_id)
        return grant.node_id

    def deliver(self, message, retained: bool = False) -> None:
        self.core.handle(Inbound(message=message, retained=retained, received_at=self.clock.wall()))

    def status(self, node_id: str, tasks: Sequence[tuple[str, TaskState]] = (), **kw) -> None:
        seq = self.seq.get(node_id, 0) + 1
        self.seq[node_id] = seq
        payload = NodeStatus(
            ts=self.clock.wall(),
            seq=seq,
            cpu_percent=kw.get("cpu", 0.0),
            memory=MemoryStatus(total_mib=4096, available_mib=4096, used_percent=0),
            disk=DiskStatus(total_mib=10000, free_mib=10000, used_percent=0),
            tasks=[
                TaskStatus(
                    instance_id=i, state=s, runtime=Runtime.NATIVE, restarts=kw.get("restarts", 0)
                )
                for i, s in tasks
            ],
        )
        self.deliver(StatusMessage(node_id=node_id, ts=self.clock.wall(), payload=payload))

    def offline(self, node_id: str) -> None:
        self.deliver(PresenceMessage(node_id=node_id, payload=Presence(online=False)))

    def ack(self, command: CommandMessage, accepted: bool = True, reason: str = "") -> None:
        self.deliver(
            AckMessage(
                node_id=command.node_id,
                payload=CommandAck(
                    command_id=command.id,
                    command_kind=command.kind,
                    instance_id=command.payload.instance_id,
                    accepted=accepted,
                    reason=reason,
                ),
            )
        )

    def task_event(self, node_id: str, instance_id: str, state: TaskState, **data) -> None:
        self.deliver(
            TaskEventMessage(
                node_id=node_id,
                ts=self.clock.wall(),
                payload=TaskEvent(instance_id=instance_id, state=state, data=data),
            )
        )

    # ---- commands
    def take(self) -> list[CommandMessage]:
        out, self.sent[:] = list(self.sent), []
        return out

    def deploys(self) -> list[DeployMessage]:
        return [m for m in self.sent if isinstance(m, DeployMessage)]

    def terminates(self) -> list[TerminateMessage]:
        return [m for m in self.sent if isinstance(m, TerminateMessage)]

    # ---- instances
    def place(self, iid: str, cpu: float = 1.0, mem: int = 256, **kw):
        spec = TaskSpec(
            runtime=Runtime.NATIVE,
            command=["sleep", "100"],
            resources=Resources(cpu=cpu, memory_mib=mem),
            **kw.pop("spec", {}),
        )
        return self.core.place_instance(
            PlaceInstanceRequest(
                instance_id=iid, job_id=kw.pop("job_id", "job1"), job_name="job", spec=spec, **kw
            )
        )

    def inst(self, iid: str):
        return self.core.instances[iid]

    def run(self, iid: str) -> None:
        """Ack the deploy of `iid` and report it RUNNING."""
        deploy = [
            m for m in self.take() if isinstance(m, DeployMessage) and m.payload.instance_id == iid
        ][-1]
        self.ack(deploy)
        self.task_event(deploy.node_id, iid, TaskState.RUNNING)
        assert self.inst(iid).state is InstanceState.RUNNING


@pytest.fixture
def h() -> Iterator[Harness]:
    clock = Clock()
    sent: list[CommandMessage] = []
    store = open_store("sqlite://:memory:")
    metrics = Metrics()
    persister = Persister(store, metrics)
    persister.start()
    settings = ClusterSettings(
        name="c1", status_interval=1.0, lost_grace=3.0, ack_timeout=2.0, dispatch_attempts=3
    )

    def publish(message: CommandMessage) -> bool:
        sent.append(message)
        return True

    core = ClusterCore(
        settings=settings,
        store=store,
        persister=persister,
        metrics=metrics,
        publish=publish,
        mono=clock.mono,
        wall=clock.wall,
        rng=random.Random(7),
    )
    yield Harness(core, clock, sent, store, persister, metrics)
    persister.stop()
    store.close()


# ------------------------------------------------------------------ join


def test_join_rejoin_and_wrong_secret(h: Harness) -> None:
    info = NodeInfo(
        name="a", hostname="a", arch=Arch.ARM64, cpu_cores=4, memory_mib=1024, disk_mib=1
    )
    grant = h.core.join(JoinRequest(info=info))
    assert grant.new and h.core.nodes[grant.node_id].state is Liveness.NOT_READY
    again = h.core.join(
        JoinRequest(info=info, node_id=grant.node_id, node_secret=SecretStr(grant.node_secret))
    )
    assert again.node_id == grant.node_id and not again.new
    with pytest.raises(Forbidden):
        h.core.join(JoinRequest(info=info, node_id=grant.node_id, node_secret=SecretStr("wrong")))
    with pytest.raises(Forbidden):
        h.core.join(JoinRequest(info=info, node_id=grant.node_id))
    assert len(h.core.nodes) == 1
    # the stored node has only a hash of the secret
    assert h.persister.flush(5)
    doc = h.store.get(NODES, grant.node_id)
    assert doc is not None and grant.node_secret not in str(doc)


def test_unknown_node_messages_are_counted_not_applied(h: Harness) -> None:
    h.status("nobody")
    assert h.metrics.counter("edge_cluster_mqtt_rejected_total", {"reason": "unknown_node"}) == 1
    assert h.core.nodes == {}


# ------------------------------------------------------------------ placement + dispatch


def test_place_ack_run_delete(h: Harness) -> None:
    a = h.join("a")
    resp = h.place("i1")
    assert resp.accepted and resp.node_id == a and resp.node_name == "a"
    assert h.inst("i1").state is InstanceState.ASSIGNED
    (deploy,) = h.deploys()
    assert deploy.node_id == a and deploy.payload.instance_id == "i1"
    h.ack(deploy)
    assert h.inst("i1").state is InstanceState.STARTING
    h.status(a, [("i1", TaskState.RUNNING)])
    assert h.inst("i1").state is InstanceState.RUNNING
    # a status from before (STARTING) does not move it back
    h.status(a, [("i1", TaskState.STARTING)])
    assert h.inst("i1").state is InstanceState.RUNNING
    h.take()
    view = h.core.delete_instance("i1")
    assert view.desired == "stopped" and view.state is InstanceState.RUNNING
    (term,) = h.terminates()
    h.ack(term)
    assert h.inst("i1").state is InstanceState.TERMINATED
    states = [e.state for e in h.inst("i1").events]
    assert states == ["SCHEDULED", "ASSIGNED", "STARTING", "RUNNING", "RUNNING", "TERMINATED"]
    h.persister.flush(5)
    doc = h.store.get(INSTANCES, "i1")
    assert doc is not None and doc["state"] == "TERMINATED"


def test_place_is_idempotent_for_an_active_instance(h: Harness) -> None:
    h.join("a")
    first = h.place("i1")
    second = h.place("i1")
    assert second.accepted and second.node_id == first.node_id
    assert len(h.deploys()) == 1


def test_rejection_carries_the_reasons(h: Harness) -> None:
    h.join("a", cores=1)
    h.join("b", cores=1)
    h.join("c", cores=8, runtimes=[Runtime.DOCKER])
    resp = h.place("big", cpu=4)
    assert not resp.accepted
    assert resp.reasons == {"insufficient cpu": 2, "runtime native unavailable": 1}
    assert "2 nodes: insufficient cpu" in resp.explanation
    assert "big" not in h.core.instances
    resp = h.place("x", constraints=Constraints(cluster="other"))
    assert not resp.accepted and "cluster other required" in resp.reasons
    resp = h.place("y", constraints=Constraints(node="zz"))
    assert not resp.accepted and resp.reasons == {"node zz not in this cluster": 1}


def test_no_nodes_at_all(h: Harness) -> None:
    resp = h.place("i1")
    assert not resp.accepted and resp.reasons == {"no nodes joined": 1}


def test_burst_uses_reservations(h: Harness) -> None:
    for name in ("a", "b", "c"):
        h.join(name, cores=2)
    chosen = [h.place(f"i{i}", cpu=1.0, placement_policy="binpack").node_id for i in range(6)]
    assert sorted(chosen.count(n) for n in set(chosen)) == [2, 2, 2]
    assert not h.place("i6", cpu=1.0).accepted


def test_refusal_retries_on_other_nodes_then_fails(h: Harness) -> None:
    for name in ("a", "b", "c", "d"):
        h.join(name)
    h.place("i1")
    tried = []
    for _ in range(3):
        (deploy,) = h.take()
        tried.append(deploy.node_id)
        h.ack(deploy, accepted=False, reason="image not found")
    inst = h.inst("i1")
    assert inst.state is InstanceState.FAILED
    assert "gave up after 3 node(s)" in inst.reason and "image not found" in inst.reason
    assert len(set(tried)) == 3
    assert h.take() == []  # no more attempts


def test_ack_timeout_moves_on_and_terminates_the_silent_copy(h: Harness) -> None:
    a, b = h.join("a"), h.join("b")
    h.place("i1")
    (first,) = h.take()
    other = b if first.node_id == a else a
    h.advance(2.05)
    msgs = h.take()
    deploys = [m for m in msgs if isinstance(m, DeployMessage)]
    terms = [m for m in msgs if isinstance(m, TerminateMessage)]
    assert [m.node_id for m in deploys] == [other]
    assert [m.node_id for m in terms] == [first.node_id]
    assert h.inst("i1").node_id == other
    assert "no ack" in h.inst("i1").reason
    # the late ack of the first node is ignored
    h.ack(first)
    assert h.inst("i1").state is InstanceState.ASSIGNED


def test_only_node_times_out_three_times_then_fails(h: Harness) -> None:
    h.join("a")
    h.place("i1")
    h.take()
    h.advance(2.1)
    inst = h.inst("i1")
    assert inst.state is InstanceState.FAILED and "no other node fits" in inst.reason


# ------------------------------------------------------------------ liveness + rescheduling


def test_offline_node_instances_move_after_grace(h: Harness) -> None:
    a = h.join("a")
    h.place("i1", constraints=Constraints(node="a"))
    h.run("i1")
    b = h.join("b")
    h.inst("i1").constraints = Constraints()  # allow it to move
    h.offline(a)
    assert h.core.nodes[a].state is Liveness.OFFLINE
    h.status(b)
    h.advance(2.9)
    assert h.inst("i1").node_id == a
    for _ in range(5):
        h.status(b)
        h.advance(0.2)
    assert h.core.nodes[a].state is Liveness.LOST
    inst = h.inst("i1")
    assert inst.node_id == b and inst.state is InstanceState.ASSIGNED
    assert "rescheduled: node a" in inst.reason
    assert [e.state for e in inst.events][-2:] == ["LOST", "ASSIGNED"]
    # the root is told the result, not the intermediate LOST
    assert [c.state for c in h.core.take_changes()][-1] is InstanceState.ASSIGNED


def test_per_job_grace_longer_than_cluster_grace(h: Harness) -> None:
    a = h.join("a")
    b = h.join("b")
    h.place("slow", constraints=Constraints(node="a"), lost_grace_s=10.0)
    h.run("slow")
    h.place("fast", constraints=Constraints(node="a"))
    h.run("fast")
    for iid in ("slow", "fast"):
        h.inst(iid).constraints = Constraints()
    h.offline(a)
    for _ in range(25):
        h.status(b)
        h.advance(0.2)
    assert h.inst("fast").node_id == b
    assert h.inst("slow").node_id == a  # still waiting for its node
    for _ in range(30):
        h.status(b)
        h.advance(0.2)
    assert h.inst("slow").node_id == b


def test_silent_node_not_ready_then_lost_and_nowhere_to_go(h: Harness) -> None:
    a = h.join("a")
    h.place("i1")
    h.run("i1")
    h.advance(3.05)
    assert h.core.nodes[a].state is Liveness.NOT_READY
    h.advance(3.0)
    assert h.core.nodes[a].state is Liveness.LOST
    inst = h.inst("i1")
    assert inst.state is InstanceState.LOST and inst.desired == "stopped"
    assert "no other node fits" in inst.reason


def test_returning_node_gets_its_foreign_tasks_terminated(h: Harness) -> None:
    a, b = h.join("a"), h.join("b")
    h.place("i1", constraints=Constraints(node="a"))
    h.run("i1")
    h.inst("i1").constraints = Constraints()
    h.offline(a)
    for _ in range(20):
        h.status(b)
        h.advance(0.2)
    assert h.inst("i1").node_id == b
    h.run("i1")
    # a comes back, still running i1
    h.status(a, [("i1", TaskState.RUNNING)])
    assert h.core.nodes[a].state is Liveness.READY
    h.advance(1.1)
    terms = [m for m in h.terminates() if m.node_id == a]
    assert [t.payload.instance_id for t in terms] == ["i1"]
    assert h.inst("i1").node_id == b  # the assignment stands


def test_drain_moves_instances_and_blocks_new_ones(h: Harness) -> None:
    a, b = h.join("a"), h.join("b")
    h.place("i1", constraints=Constraints(node="a"))
    h.run("i1")
    h.inst("i1").constraints = Constraints()
    result = h.core.set_draining(a, True)
    assert result.moved == {"i1": b} and result.node.draining
    msgs = h.take()
    assert {(type(m).__name__, m.node_id) for m in msgs} == {
        ("DeployMessage", b),
        ("TerminateMessage", a),
    }
    resp = h.place("i2")
    assert resp.node_id == b
    with pytest.raises(NotFound):
        h.core.set_draining("nope", True)


def test_cordon_keeps_instances_blocks_new_ones_and_survives_a_restart(h: Harness) -> None:
    a, b = h.join("a", cores=4), h.join("b", cores=2)
    h.place("i1", constraints=Constraints(node="a"))
    h.run("i1")
    result = h.core.set_cordoned(a, True)
    assert result.node.cordoned and not result.node.draining
    assert (result.moved, result.stuck) == ({}, {})
    assert h.terminates() == [] and h.inst("i1").node_id == a  # what runs stays
    assert h.place("i2").node_id == b  # new work goes elsewhere
    # the report leaves the cordoned node out of the capacity the root schedules with
    report = h.core.build_report(seq=1, full=True, changes=[])
    assert report.nodes_cordoned == 1 and report.total.cpu == 2
    # pinned to the cordoned node: refused with the reason
    refused = h.place("i3", constraints=Constraints(node="a"))
    assert not refused.accepted and "cordoned or draining" in str(refused.reasons)
    assert h.core.get_node(a).cordoned
    assert h.persister.flush(5)
    fresh = ClusterCore(
        settings=h.core.settings,
        store=h.store,
        persister=h.persister,
        metrics=h.metrics,
        publish=lambda m: True,
        mono=h.clock.mono,
        wall=h.clock.wall,
    )
    fresh.load()
    assert fresh.nodes[a].cordoned and not fresh.nodes[b].cordoned


def test_uncordon_clears_cordon_and_drain(h: Harness) -> None:
    a, _b = h.join("a"), h.join("b")
    h.core.set_draining(a, True)
    h.core.set_cordoned(a, True)
    result = h.core.set_cordoned(a, False)
    assert not result.node.cordoned and not result.node.draining
    report = h.core.build_report(seq=1, full=True, changes=[])
    assert report.nodes_cordoned == 0
    kinds = (
        [d["kind"] for d in h.store.find("events", {"node_id": a})] if h.persister.flush(5) else []
    )
    assert {"node.drain", "node.cordon", "node.uncordon"} <= set(kinds)
    with pytest.raises(NotFound):
        h.core.set_cordoned("nope", True)


# ------------------------------------------------------------------ reconcile


def test_reconcile_terminates_orphans_and_redeploys_missing(h: Harness) -> None:
    a = h.join("a")
    h.place("i1", spec={"max_restarts": 1})
    h.run("i1")
    # the node reports a task nobody assigned, and not i1
    h.advance(2.5)
    h.status(a, [("ghost", TaskState.RUNNING)])
    h.core.reconcile()
    msgs = h.take()
    assert [(type(m).__name__, m.payload.instance_id) for m in msgs] == [
        ("TerminateMessage", "ghost"),
        ("DeployMessage", "i1"),
    ]
    assert h.inst("i1").restarts == 1
    redeploy = msgs[1]
    h.ack(redeploy)
    h.advance(2.5)
    h.status(a, [])
    h.core.reconcile()
    inst = h.inst("i1")
    assert inst.state is InstanceState.FAILED and "restart limit (1)" in inst.reason


def test_node_restarting_a_failed_task_keeps_the_instance(h: Harness) -> None:
    a = h.join("a")
    h.place("i1", spec={"restart_policy": RestartPolicy.ON_FAILURE, "max_restarts": 3})
    h.run("i1")
    h.task_event(a, "i1", TaskState.FAILED, restart_in_s=1.0, restarts=1)
    inst = h.inst("i1")
    assert inst.state is InstanceState.STARTING and inst.desired == "running"
    h.status(a, [("i1", TaskState.FAILED)], restarts=1)
    assert h.inst("i1").state is InstanceState.STARTING
    h.task_event(a, "i1", TaskState.RUNNING)
    assert h.inst("i1").state is InstanceState.RUNNING
    h.task_event(a, "i1", TaskState.FAILED)  # no restart announced: final
    assert h.inst("i1").state is InstanceState.FAILED


def test_shed_with_reschedule_moves_elsewhere(h: Harness) -> None:
    a, b = h.join("a"), h.join("b")
    h.place("i1", constraints=Constraints(node="a"), spec={"on_shed": ShedAction.RESCHEDULE})
    h.run("i1")
    h.inst("i1").constraints = Constraints()
    h.task_event(a, "i1", TaskState.SHED)
    assert h.inst("i1").node_id == b


def test_shed_pause_is_reported_as_shed(h: Harness) -> None:
    a = h.join("a")
    h.place("i1")
    h.run("i1")
    h.task_event(a, "i1", TaskState.PAUSED)
    assert h.inst("i1").state is InstanceState.SHED
    h.status(a, [("i1", TaskState.RUNNING)])
    assert h.inst("i1").state is InstanceState.RUNNING


def test_report_reflects_nodes_and_changes(h: Harness) -> None:
    h.join("a", cores=4)
    h.join("b", cores=2)
    h.place("i1", cpu=1)
    report = h.core.build_report(seq=1, full=True, changes=[])
    assert report.nodes_by_liveness == {Liveness.READY: 2}
    assert report.total.cpu == 6 and report.free.cpu == 5
    assert [i.instance_id for i in report.instances] == ["i1"]


def test_a_full_report_carries_the_changes_before_the_listing(h: Harness) -> None:
    """A node that starts a task again (STARTING, then RUNNING) right before a full
    report: the root still sees the STARTING step, then where the instance is now."""
    a = h.join("a")
    h.place("i1")
    h.run("i1")
    h.core.take_changes()
    h.task_event(a, "i1", TaskState.STARTING)
    h.task_event(a, "i1", TaskState.RUNNING)
    changes = h.core.take_changes()
    report = h.core.build_report(seq=2, full=True, changes=changes)
    assert report.full
    assert [(i.instance_id, i.state) for i in report.instances] == [
        ("i1", InstanceState.STARTING),
        ("i1", InstanceState.RUNNING),
        ("i1", InstanceState.RUNNING),  # the listing
    ]


def test_a_full_report_without_room_for_the_changes_lists_every_instance(h: Harness) -> None:
    h.join("a")
    h.place("i1")
    many = [h.core.build_report(seq=1, full=True, changes=[]).instances[0]] * MAX_INSTANCE_CHANGES
    report = h.core.build_report(seq=2, full=True, changes=many)
    assert report.full and [i.instance_id for i in report.instances] == ["i1"]


def test_restart_reloads_state(h: Harness) -> None:
    a = h.join("a")
    h.place("i1")
    h.run("i1")
    h.core.flush_snapshots()
    assert h.persister.flush(5)
    fresh = ClusterCore(
        settings=h.core.settings,
        store=h.store,
        persister=h.persister,
        metrics=h.metrics,
        publish=lambda m: True,
        mono=h.clock.mono,
        wall=h.clock.wall,
    )
    fresh.load()
    assert fresh.nodes[a].state is Liveness.NOT_READY
    assert fresh.nodes[a].status is not None
    assert fresh.instances["i1"].state is InstanceState.RUNNING
    assert [e.state for e in fresh.instances["i1"].events][-1] == "RUNNING"


def _restarted(h: Harness, **settings: object) -> ClusterCore:
    """A new core over the same store, as after a restart of the orchestrator."""
    h.core.flush_snapshots()
    assert h.persister.flush(5)
    sent: list[CommandMessage] = []
    fresh = ClusterCore(
        settings=h.core.settings.model_copy(update=settings),
        store=h.store,
        persister=h.persister,
        metrics=h.metrics,
        publish=lambda m: sent.append(m) or True,
        mono=h.clock.mono,
        wall=h.clock.wall,
    )
    fresh.load()
    h.core = fresh
    h.sent = sent
    return fresh


def test_restart_grace_keeps_instances_on_nodes_that_report_late(h: Harness) -> None:
    a, b = h.join("a"), h.join("b")
    h.place("i1")
    h.run("i1")
    on = h.inst("i1").node_id
    _restarted(h, restart_grace=20.0)
    h.advance(15.0)  # far beyond lost_grace (3 s): the nodes have not spoken yet
    assert {n.state for n in h.core.nodes.values()} == {Liveness.NOT_READY}
    assert h.inst("i1").state is InstanceState.RUNNING and h.inst("i1").node_id == on
    assert h.deploys() == [] and h.terminates() == []
    for _ in range(10):  # both report again: nothing moves, ever
        h.status(on, [("i1", TaskState.RUNNING)])
        h.status(a if on == b else b)
        h.advance(1.0)
    assert {n.state for n in h.core.nodes.values()} == {Liveness.READY}
    assert h.inst("i1").node_id == on and h.inst("i1").state is InstanceState.RUNNING
    assert h.deploys() == []


def test_restart_grace_ends_and_a_node_that_never_returns_loses_its_instances(
    h: Harness,
) -> None:
    h.join("a")
    h.join("b")
    h.place("i1")
    h.run("i1")
    on = h.inst("i1").node_id
    other = next(n for n in h.core.nodes if n != on)
    _restarted(h, restart_grace=10.0)
    h.status(other)
    h.advance(9.5)
    h.status(other)
    assert h.inst("i1").node_id == on
    h.advance(1.0)  # the hold of `on` ends: it is LOST and i1 moves to the node that spoke
    assert h.core.nodes[on].state is Liveness.LOST
    assert h.inst("i1").node_id == other
    assert "rescheduled" in h.inst("i1").reason


def _run_assigned(h: Harness) -> None:
    """Ack every DEPLOY sent so far and report its task RUNNING."""
    for deploy in [m for m in h.take() if isinstance(m, DeployMessage)]:
        h.ack(deploy)
        h.task_event(deploy.node_id, deploy.payload.instance_id, TaskState.RUNNING)


def _heartbeat(
    h: Harness, seconds: float, *nodes: str, until: Callable[[], bool] = lambda: False
) -> None:
    """Let time pass (at most `seconds`, or until `until()`) while `nodes` send a status
    every 0.5 s listing what they start or run."""
    for _ in range(int(seconds / 0.5)):
        if until():
            return
        for n in nodes:
            tasks = [
                (i.id, TaskState(i.state.value))
                for i in h.core.instances.values()
                if i.node_id == n and i.state in (InstanceState.STARTING, InstanceState.RUNNING)
            ]
            h.status(n, tasks)
        h.advance(0.5)


def test_returning_node_gets_replicas_of_spread_jobs_back_one_at_a_time(h: Harness) -> None:
    a, b = h.join("a"), h.join("b")
    for iid in ("s0", "s1", "s2", "s3"):
        h.place(iid, job_id="spread", cpu=0.1, mem=16)
        h.run(iid)
    h.place("packed", job_id="bin", cpu=0.1, mem=16, placement_policy="binpack")
    h.run("packed")
    assert sorted(h.inst(i).node_id == a for i in ("s0", "s1", "s2", "s3")) == [0, 0, 1, 1]
    h.offline(a)
    _heartbeat(h, 4.0, b)
    _run_assigned(h)
    assert {h.inst(i).node_id for i in ("s0", "s1", "s2", "s3")} == {b}
    h.take()
    # a returns; nothing moves before it has been READY for rebalance_after (10 s)
    _heartbeat(h, 9.5, a, b)
    assert h.deploys() == []
    _heartbeat(h, 1.0, a, b)
    (first,) = h.deploys()
    assert first.node_id == a
    moved = h.inst(first.payload.instance_id)
    assert moved.state is InstanceState.ASSIGNED and "rebalanced" in moved.reason
    # the copy on b is stopped (a still gets the terminates of its old copies re-sent)
    assert [t.payload.instance_id for t in h.terminates() if t.node_id == b] == [moved.id]
    # the next replica waits until the moved one runs (acked: STARTING, for a while)
    h.ack(first)
    assert moved.state is InstanceState.STARTING
    h.take()
    _heartbeat(h, 3.0, a, b)
    assert h.deploys() == []
    h.task_event(a, moved.id, TaskState.RUNNING)
    _heartbeat(h, 3.0, a, b, until=lambda: bool(h.deploys()))
    second = h.deploys()
    assert [d.node_id for d in second] == [a]
    h.run(second[0].payload.instance_id)
    h.take()
    _heartbeat(h, 6.0, a, b)  # 2 and 2: even, nothing more moves
    assert h.deploys() == []
    spread = [h.inst(i).node_id for i in ("s0", "s1", "s2", "s3")]
    assert sorted(spread.count(n) for n in (a, b)) == [2, 2]
    assert h.inst("packed").node_id == b  # binpack jobs are left where they are
    assert h.metrics.counter("edge_cluster_rebalance_moves_total") == 2


def test_rebalance_can_be_turned_off(h: Harness) -> None:
    h.core.settings = h.core.settings.model_copy(update={"rebalance": False})
    a, b = h.join("a"), h.join("b")
    for iid in ("s0", "s1"):
        h.place(iid, job_id="spread", cpu=0.1, mem=16)
        h.run(iid)
    h.offline(a)
    _heartbeat(h, 4.0, b)
    _run_assigned(h)
    _heartbeat(h, 15.0, a, b)
    assert h.deploys() == []


# ------------------------------------------------------------------ one message per fact


def ack_with(command: CommandMessage, state: TaskState, *, accepted: bool = True, reason=""):
    """A revision 2 ack: the state change the command caused travels in it."""
    return AckMessage(
        node_id=command.node_id,
        payload=CommandAck(
            command_id=command.id,
            command_kind=command.kind,
            instance_id=command.payload.instance_id,
            accepted=accepted,
            reason=reason,
            event=TaskEvent(instance_id=command.payload.instance_id, state=state, reason=reason),
        ),
    )


def test_a_fresh_placement_reports_only_what_the_root_does_not_know(h: Harness) -> None:
    """The root has the node from the placement answer: no ASSIGNED change for it; the
    RUNNING carried by the ack is the one change of the deploy."""
    a = h.join("a")
    h.core.take_changes()
    assert h.place("i1").node_id == a
    assert h.core.take_changes() == []
    (deploy,) = h.take()
    h.deliver(ack_with(deploy, TaskState.RUNNING))
    changes = h.core.take_changes()
    assert [(c.state, c.node_id) for c in changes] == [(InstanceState.RUNNING, a)]
    assert [e.state for e in h.inst("i1").events] == ["SCHEDULED", "ASSIGNED", "RUNNING"]
    assert h.core.stats()["pending_commands"] == 0
    h.persister.flush(5)
    doc = h.store.get(INSTANCES, "i1")
    assert doc is not None and doc["state"] == "RUNNING" and doc["node_id"] == a
    # a terminate's ack carries the TERMINATED
    h.core.delete_instance("i1")
    (term,) = h.terminates()
    h.deliver(ack_with(term, TaskState.TERMINATED))
    assert h.inst("i1").state is InstanceState.TERMINATED


def test_a_node_change_is_still_reported(h: Harness) -> None:
    """Rescheduling after a refusal moves the instance: the root learns the new node."""
    a = h.join("a")
    h.place("i1", constraints=Constraints(node="a"))
    h.join("b")
    h.inst("i1").constraints = Constraints()
    h.core.take_changes()
    (deploy,) = h.take()
    h.deliver(ack_with(deploy, TaskState.FAILED, accepted=False, reason="busy"))
    # the FAILED in the refusal is applied first, as an older engine's separate event
    assert h.inst("i1").state is InstanceState.FAILED and h.take() == []
    assert [c.state for c in h.core.take_changes()] == [InstanceState.FAILED]
    h.place("i2")
    (deploy,) = h.take()
    h.ack(deploy, accepted=False, reason="no such image")  # refused, nothing changed
    (retry,) = h.deploys()
    assert retry.node_id != deploy.node_id
    changes = h.core.take_changes()
    assert [(c.state, c.node_id) for c in changes] == [(InstanceState.ASSIGNED, retry.node_id)]
    assert a in (deploy.node_id, retry.node_id)


def test_a_status_listing_the_task_running_stands_in_for_a_lost_ack(h: Harness) -> None:
    a = h.join("a")
    h.join("b")
    h.place("i1")
    (deploy,) = h.take()
    h.status(deploy.node_id, [("i1", TaskState.STARTING)])  # not yet proof of a deploy
    assert h.core.stats()["pending_commands"] == 1
    h.status(deploy.node_id, [("i1", TaskState.RUNNING)])
    assert h.inst("i1").state is InstanceState.RUNNING
    assert h.core.stats()["pending_commands"] == 0
    for node in h.core.nodes:
        h.status(node, [("i1", TaskState.RUNNING)] if node == deploy.node_id else [])
    h.advance(h.core.settings.ack_timeout + 1)  # nothing left to time out
    assert h.take() == [] and h.inst("i1").node_id == deploy.node_id
    assert h.inst("i1").state is InstanceState.RUNNING
    assert a in h.core.nodes
    # the late ack (duplicate, or delivered after all) changes nothing
    h.deliver(ack_with(deploy, TaskState.RUNNING))
    assert h.inst("i1").state is InstanceState.RUNNING and h.take() == []
