"""The cluster core's kept placement state equals a from-scratch computation (hypothesis).

`ClusterCore` keeps candidates, reservations and replicas per job in a
`PlacementIndex`, updated as nodes report, change liveness, drain, rejoin, leave,
and as instances are placed, acked, refused, finish or move. Here a real core
(fake clock and broker, in-memory SQLite) goes through random sequences of those
events; after each one, what the index holds must equal what a pass over every node
and instance computes (the way `scheduling.decide` worked before the index), and decisions
through the kept table must equal decisions over freshly built candidates, with the
same seed, explanations and `to_dict` included.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from cluster_orchestrator.candidates import reservations
from cluster_orchestrator.core import ClusterCore, NodeBusy
from cluster_orchestrator.effects import Effects
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.persister import Persister
from cluster_orchestrator.records import InstanceRecord
from cluster_orchestrator.scheduling import decide, with_excluded
from cluster_orchestrator.settings import ClusterSettings
from placement import Candidate, Decision, place
from placement.from_spec import request_for as placement_request
from schemas.cluster import PlaceInstanceRequest
from schemas.common import Arch, Runtime
from schemas.job import Constraints, TaskSpec, TaskState
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
)
from schemas.node import (
    DiskStatus,
    JoinRequest,
    Liveness,
    MemoryStatus,
    NodeInfo,
    NodeStatus,
    Throttling,
)
from schemas.resources import Resources
from store import open_store
from tests.unit.test_cluster_core import Clock, Harness

JOBS = ("j1", "j2", "j3")
#: a coarse grid: exact ties between nodes (and float sums of reservations) are common
CPUS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 1.5)

status_op = st.tuples(
    st.just("status"),
    st.integers(0, 9),
    st.sampled_from([0.0, 30.0, 95.0]),
    st.sampled_from([None, 45.0, 80.0]),
    st.booleans(),
    st.sampled_from([0, 0, 0, 1]),
)
ops = st.one_of(
    status_op,
    status_op,
    st.tuples(
        st.just("join"),
        st.sampled_from([1.0, 2.0, 4.0]),
        st.sampled_from([1024, 2048]),
        st.sampled_from(["a", "b"]),
    ),
    st.tuples(
        st.just("status"),
        st.integers(0, 9),
        st.sampled_from([0.0, 30.0, 95.0]),
        st.sampled_from([None, 45.0, 80.0]),
        st.booleans(),
        st.sampled_from([0, 0, 0, 1]),
    ),
    st.tuples(st.just("place"), st.sampled_from(JOBS), st.sampled_from(CPUS), st.integers(0, 3)),
    st.tuples(st.just("place"), st.sampled_from(JOBS), st.sampled_from(CPUS), st.integers(0, 3)),
    st.tuples(st.just("ack"), st.integers(0, 20), st.booleans()),
    st.tuples(st.just("ack"), st.integers(0, 20), st.just(True)),
    st.tuples(
        st.just("finish"),
        st.integers(0, 30),
        st.sampled_from([TaskState.RUNNING, TaskState.FAILED, TaskState.SUCCEEDED]),
    ),
    st.tuples(st.just("delete"), st.integers(0, 30)),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 2.5, 4.0])),
    st.tuples(st.just("offline"), st.integers(0, 9)),
    st.tuples(st.just("operator"), st.integers(0, 9), st.sampled_from(["drain", "cordon", "un"])),
    st.tuples(st.just("rejoin"), st.integers(0, 9), st.sampled_from([1.0, 8.0])),
    st.tuples(st.just("remove"), st.integers(0, 9)),
)


@contextmanager
def core_harness(overload: float | None) -> Iterator[Harness]:
    clock = Clock()
    sent: list[CommandMessage] = []
    store = open_store("sqlite://:memory:")
    metrics = Metrics()
    persister = Persister(store, metrics)
    persister.start()

    def publish(message: CommandMessage) -> bool:
        sent.append(message)
        return True

    settings_ = ClusterSettings(
        name="c1",
        status_interval=1.0,
        lost_grace=3.0,
        ack_timeout=2.0,
        dispatch_attempts=3,
        labels={"region": "eu"},
        overload_cpu_percent=overload,
    )
    core = ClusterCore(
        settings=settings_,
        store=store,
        persister=persister,
        metrics=metrics,
        publish=publish,
        mono=clock.mono,
        wall=clock.wall,
        rng=random.Random(7),
    )
    try:
        yield Harness(core, clock, sent, store, persister, metrics)
    finally:
        persister.stop()
        store.close()


# ------------------------------------------------------------------ the reference


def scratch_candidates(
    core: ClusterCore, exclude: set[str] | frozenset[str] = frozenset()
) -> list[Candidate]:
    """Every node's candidate built now, reservations summed over every instance."""
    reserved = reservations(
        (inst.node_id, inst.spec.resources)
        for inst in core.instances.values()
        if inst.node_id is not None and not inst.state.terminal
    )
    return [
        core.state.candidate(node, reserved.get(node.id))
        for node in core.nodes.values()
        if node.id not in exclude
    ]


def scratch_replicas(core: ClusterCore, inst: InstanceRecord) -> dict[str, int]:
    existing: dict[str, int] = {}
    for other in core.instances.values():
        if (
            other.job_id == inst.job_id
            and other.node_id
            and not other.state.terminal
            and other.id != inst.id
        ):
            existing[other.node_id] = existing.get(other.node_id, 0) + 1
    return existing


def reference_decide(
    core: ClusterCore, inst: InstanceRecord, exclude: set[str], seed: int
) -> Decision:
    """The decision `scheduling.decide` made before the index: everything rebuilt, then `place`."""
    pinned = None
    if inst.constraints.node is not None:
        named = [n for n in core.nodes.values() if n.info.name == inst.constraints.node]
        named.sort(key=lambda n: (n.liveness.state is not Liveness.READY, n.id))
        pinned = named[0].id if named else f"unknown-node-{inst.constraints.node}"
    policy = (
        inst.placement_policy.value if inst.placement_policy else core.settings.placement_policy
    )
    request = placement_request(inst.spec, inst.constraints, pinned_id=pinned)
    decision = place(
        request,
        scratch_candidates(core, exclude),
        policy,
        random.Random(seed),
        existing=scratch_replicas(core, inst),
        noun="node",
    )
    return with_excluded(decision, len(exclude & core.nodes.keys())) if exclude else decision


def check(core: ClusterCore, seed: int) -> None:
    """The kept state equals the from-scratch one; so do decisions through it."""
    assert core.candidates() == scratch_candidates(core)
    for job in JOBS:
        probe = InstanceRecord.from_request(request_for("probe", job, 0.1, 0), 0.0)
        assert core.state.index.replicas(job, without="probe") == scratch_replicas(core, probe)
    for inst in list(core.instances.values())[:3]:
        kept = core.state.index.replicas(inst.job_id, without=inst.id)
        assert kept == scratch_replicas(core, inst)
    rng = random.Random(seed)
    for inst in [*list(core.instances.values())[-2:], None]:
        if inst is None:
            inst = InstanceRecord.from_request(request_for("new", "j1", rng.choice(CPUS), 0), 0.0)
        exclude = set(rng.sample(sorted(core.nodes), min(len(core.nodes), rng.randrange(3))))
        expected = reference_decide(core, inst, exclude, seed)
        kept = inst.placement
        core.state.rng = random.Random(seed)
        got = decide(core.state, Effects(core.now()), inst, exclude)
        inst.placement = kept
        assert got == expected
        assert got.explain() == expected.explain()
        assert got.to_dict(limit=10) == expected.to_dict(limit=10)


# ------------------------------------------------------------------ the events


def request_for(
    iid: str, job: str, cpu: float, pin: int, nodes: list[str] | None = None
) -> PlaceInstanceRequest:
    constraints = Constraints()
    if pin == 3 and nodes:
        constraints = Constraints(node=nodes[0])
    return PlaceInstanceRequest(
        instance_id=iid,
        job_id=job,
        job_name=job,
        spec=TaskSpec(
            runtime=Runtime.NATIVE,
            command=["sleep", "1"],
            resources=Resources(cpu=cpu, memory_mib=256 * (pin % 3)),
        ),
        constraints=constraints,
        placement_policy="binpack" if pin == 1 else None,
    )


def status(
    h: Harness, node_id: str, cpu: float, temp: float | None, shedding: bool, throttled: int
) -> None:
    seq = h.seq.get(node_id, 0) + 1
    h.seq[node_id] = seq
    tasks = []
    for inst in h.core.instances.values():
        if inst.node_id == node_id and not inst.state.terminal and inst.acked_at is not None:
            tasks.append({"instance_id": inst.id, "state": "RUNNING", "runtime": "native"})
    payload = NodeStatus(
        ts=h.clock.wall(),
        seq=seq,
        cpu_percent=cpu,
        memory=MemoryStatus(total_mib=2048, available_mib=1024 + 512 * throttled, used_percent=0),
        disk=DiskStatus(total_mib=10000, free_mib=9000, used_percent=0),
        max_temperature_c=temp,
        throttling=Throttling(throttled=bool(throttled)),
        shedding=shedding,
        tasks=tasks,
    )
    h.deliver(StatusMessage(node_id=node_id, ts=h.clock.wall(), payload=payload))


def apply(h: Harness, op: tuple[Any, ...], grants: dict[str, str], counter: list[int]) -> None:
    core = h.core
    nodes = list(core.nodes)
    kind = op[0]

    def node(i: int) -> str | None:
        return nodes[i % len(nodes)] if nodes else None

    if kind == "join":
        _, cores, mem, zone = op
        name = f"n{counter[0]}"
        counter[0] += 1
        info = NodeInfo(
            name=name,
            hostname=name,
            arch=Arch.AMD64,
            cpu_cores=cores,
            memory_mib=mem,
            disk_mib=10000,
            runtimes=[Runtime.NATIVE],
            labels={"zone": zone},
        )
        grant = core.join(JoinRequest(info=info))
        grants[grant.node_id] = grant.node_secret
    elif kind == "status" and (nid := node(op[1])):
        status(h, nid, *op[2:])
    elif kind == "place":
        _, job, cpu, pin = op
        counter[0] += 1
        names = [core.nodes[n].info.name for n in nodes]
        core.place_instance(request_for(f"i{counter[0]}", job, cpu, pin, names))
    elif kind == "ack":
        deploys = [m for m in h.sent if isinstance(m, DeployMessage)]
        if deploys:
            message = deploys[op[1] % len(deploys)]
            h.sent.remove(message)
            h.deliver(
                AckMessage(
                    node_id=message.node_id,
                    payload=CommandAck(
                        command_id=message.id,
                        command_kind=message.kind,
                        instance_id=message.payload.instance_id,
                        accepted=op[2],
                        reason="" if op[2] else "no",
                    ),
                )
            )
    elif kind == "finish":
        placed = [i for i in core.instances.values() if i.node_id]
        if placed:
            inst = placed[op[1] % len(placed)]
            assert inst.node_id is not None
            h.deliver(
                TaskEventMessage(
                    node_id=inst.node_id,
                    ts=h.clock.wall(),
                    payload=TaskEvent(instance_id=inst.id, state=op[2]),
                )
            )
    elif kind == "delete" and core.instances:
        core.delete_instance(list(core.instances)[op[1] % len(core.instances)])
    elif kind == "advance":
        h.advance(op[1], step=0.5)
    elif kind == "offline" and (nid := node(op[1])):
        h.deliver(PresenceMessage(node_id=nid, payload=Presence(online=False)))
    elif kind == "operator" and (nid := node(op[1])):
        if op[2] == "drain":
            core.set_draining(nid, True)
        elif op[2] == "cordon":
            core.set_cordoned(nid, True)
        else:
            core.set_cordoned(nid, False)
    elif kind == "rejoin" and (nid := node(op[1])):
        old = core.nodes[nid].info
        info = old.model_copy(update={"cpu_cores": op[2], "labels": {"zone": "c"}})
        core.join(JoinRequest(info=info, node_id=nid, node_secret=SecretStr(grants[nid])))
    elif kind == "remove" and (nid := node(op[1])):
        with suppress(NodeBusy):
            core.remove_node(nid)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(ops, min_size=8, max_size=40),
    st.integers(0, 2**32 - 1),
    st.sampled_from([None, 90.0]),
)
def test_kept_placement_state_equals_from_scratch(
    sequence: list[tuple[Any, ...]], seed: int, overload: float | None
) -> None:
    with core_harness(overload) as h:
        grants: dict[str, str] = {}
        counter = [0]
        for op in (("join", 2.0, 2048, "a"), ("join", 1.0, 1024, "b"), *sequence):
            apply(h, op, grants, counter)
            check(h.core, seed)


def test_load_rebuilds_the_index_from_the_store() -> None:
    """A restarted core's index (after `load`) equals the from-scratch state too."""
    with core_harness(None) as h:
        grants: dict[str, str] = {}
        counter = [0]
        for op in (
            ("join", 2.0, 2048, "a"),
            ("join", 4.0, 2048, "b"),
            ("status", 0, 0.0, None, False, 0),
            ("status", 1, 0.0, None, False, 0),
            ("place", "j1", 0.5, 0),
            ("place", "j1", 0.5, 0),
            ("place", "j2", 1.0, 1),
        ):
            apply(h, op, grants, counter)
        h.persister.flush()
        again = ClusterCore(
            settings=h.core.settings,
            store=h.store,
            persister=h.persister,
            metrics=h.metrics,
            mono=h.clock.mono,
            wall=h.clock.wall,
            rng=random.Random(1),
        )
        again.load()
        assert len(again.instances) == 3
        check(again, 5)
