"""Candidate building from node info + latest status + reservations, and the report."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_orchestrator.aggregate import HOT_THRESHOLD_C, NodeSnapshot, aggregate
from cluster_orchestrator.candidates import (
    Usage,
    build_candidate,
    reported_usage,
    reservations,
)
from placement import Request, place
from placement.from_spec import request_for
from schemas.cluster import MAX_NODE_SUMMARIES, InstanceChange
from schemas.common import Arch, Runtime
from schemas.job import Constraints, InstanceState, TaskSpec
from schemas.node import DiskStatus, Liveness, MemoryStatus, NodeInfo, NodeStatus, Throttling
from schemas.resources import Accelerator, Resources


def info(name: str = "n", cores: float = 4.0, mem: int = 4096, disk: int = 10000, **kw) -> NodeInfo:
    return NodeInfo(
        name=name,
        hostname=name,
        arch=kw.pop("arch", Arch.AMD64),
        cpu_cores=cores,
        memory_mib=mem,
        disk_mib=disk,
        runtimes=kw.pop("runtimes", [Runtime.NATIVE, Runtime.DOCKER]),
        **kw,
    )


def status(
    cpu_percent: float = 0.0,
    mem_total: int = 4096,
    mem_avail: int = 4096,
    disk_total: int = 10000,
    disk_free: int = 10000,
    **kw,
) -> NodeStatus:
    return NodeStatus(
        ts=1.0,
        seq=1,
        cpu_percent=cpu_percent,
        memory=MemoryStatus(total_mib=mem_total, available_mib=mem_avail, used_percent=0),
        disk=DiskStatus(total_mib=disk_total, free_mib=disk_free, used_percent=0),
        **kw,
    )


def cand(
    node_info: NodeInfo,
    st_: NodeStatus | None = None,
    reserved: Usage | None = None,
    liveness: Liveness = Liveness.READY,
    draining: bool = False,
    node_id: str = "id1",
    cluster_labels: dict[str, str] | None = None,
    overload_cpu_percent: float | None = None,
):
    return build_candidate(
        node_id=node_id,
        info=node_info,
        status=st_,
        liveness=liveness,
        draining=draining,
        reserved=reserved,
        cluster_labels=cluster_labels,
        overload_cpu_percent=overload_cpu_percent,
    )


def test_no_status_no_reservation_means_everything_free() -> None:
    c = cand(info(cores=4, mem=2048, disk=500))
    assert (c.free_cpu, c.free_memory_mib, c.free_disk_mib) == (4.0, 2048, 500)
    assert (c.capacity_cpu, c.capacity_memory_mib) == (4.0, 2048)
    assert c.ready and not c.draining
    assert c.archs == frozenset({"amd64"}) and c.runtimes == frozenset({"native", "docker"})


@pytest.mark.parametrize(
    ("cpu_percent", "reserved_cpu", "free_cpu", "scoring_free_cpu"),
    [
        pytest.param(50.0, 0.0, 4.0, 2.0, id="busy-host-load-not-reserved"),
        pytest.param(10.0, 3.0, 1.0, 1.0, id="reservation-above-measured"),
        pytest.param(25.0, 1.0, 3.0, 3.0, id="equal-counted-once"),
        pytest.param(100.0, 0.0, 4.0, 0.0, id="saturated-host-still-feasible"),
        pytest.param(0.0, 10.0, 0.0, 0.0, id="over-reserved-never-negative"),
    ],
)
def test_free_cpu_counts_reservations_measured_use_only_scores(
    cpu_percent: float, reserved_cpu: float, free_cpu: float, scoring_free_cpu: float
) -> None:
    c = cand(info(cores=4), status(cpu_percent=cpu_percent), Usage(cpu=reserved_cpu))
    assert c.free_cpu == pytest.approx(free_cpu)
    assert c.cpu_used == pytest.approx(cpu_percent / 100 * 4)
    assert c.scoring_free_cpu == pytest.approx(scoring_free_cpu)
    assert not c.overloaded


def test_no_status_means_cpu_use_unknown() -> None:
    c = cand(info(cores=4), None, Usage(cpu=1.0))
    assert c.cpu_used is None and c.free_cpu == 3.0 and c.scoring_free_cpu == 3.0


def test_busy_host_takes_a_cpu_request_and_spread_prefers_the_idle_node() -> None:
    """The bug: 90% non-orchestrated load made a 1-core request PENDING 'insufficient cpu'."""
    spec = TaskSpec(runtime=Runtime.NATIVE, command=["x"], resources=Resources(cpu=1.0))
    request = request_for(spec, Constraints())
    busy = cand(info("busy", cores=2), status(cpu_percent=90.0), node_id="busy")
    decision = place(request, [busy], "spread", random.Random(0))
    assert decision.chosen is not None and decision.chosen.id == "busy"
    idle = cand(info("idle", cores=2), status(cpu_percent=5.0), node_id="idle")
    for order in ([busy, idle], [idle, busy]):
        decision = place(request, order, "spread", random.Random(0))
        assert decision.chosen is not None and decision.chosen.id == "idle"


@pytest.mark.parametrize(
    ("shedding", "cpu_percent", "limit", "overloaded"),
    [
        pytest.param(False, 99.0, None, False, id="busy-but-no-limit-set"),
        pytest.param(True, 10.0, None, True, id="shedding-is-overloaded"),
        pytest.param(False, 95.0, 95.0, True, id="at-the-limit"),
        pytest.param(False, 94.9, 95.0, False, id="below-the-limit"),
        pytest.param(True, 0.0, 95.0, True, id="shedding-whatever-the-limit"),
    ],
)
def test_overloaded_node(
    shedding: bool, cpu_percent: float, limit: float | None, overloaded: bool
) -> None:
    c = cand(info(), status(cpu_percent=cpu_percent, shedding=shedding), overload_cpu_percent=limit)
    assert c.overloaded is overloaded
    decision = place(Request(runtime="native"), [c], "spread", random.Random(0))
    if overloaded:
        assert decision.chosen is None and decision.rejections == {"overloaded": 1}
        assert decision.explain() == "no candidate fits: 1 node: overloaded"
    else:
        assert decision.chosen is not None


def test_no_status_is_never_overloaded() -> None:
    assert not cand(info(), None, overload_cpu_percent=1.0).overloaded


@pytest.mark.parametrize(
    ("cluster_labels", "node_labels", "required", "fits"),
    [
        pytest.param({"region": "eu"}, {}, {"region": "eu"}, True, id="cluster-label-only"),
        pytest.param(
            {"region": "eu"},
            {"zone": "a"},
            {"region": "eu", "zone": "a"},
            True,
            id="cluster-and-node-label",
        ),
        pytest.param(
            {"region": "eu"}, {"region": "us"}, {"region": "eu"}, False, id="node-overrides-cluster"
        ),
        pytest.param(
            {"region": "eu"}, {"region": "us"}, {"region": "us"}, True, id="node-value-wins"
        ),
        pytest.param({}, {"zone": "a"}, {"region": "eu"}, False, id="label-nowhere"),
        pytest.param({"region": "eu"}, {}, {}, True, id="no-constraint"),
    ],
)
def test_effective_labels_are_cluster_labels_overlaid_by_node_labels(
    cluster_labels: dict[str, str],
    node_labels: dict[str, str],
    required: dict[str, str],
    fits: bool,
) -> None:
    c = cand(info(labels=node_labels), status(), cluster_labels=cluster_labels)
    assert dict(c.labels) == {**cluster_labels, **node_labels}
    spec = TaskSpec(runtime=Runtime.NATIVE, command=["x"])
    request = request_for(spec, Constraints(labels=required))
    decision = place(request, [c], "spread", random.Random(0))
    assert (decision.chosen is not None) is fits


def test_memory_and_disk_use_status_and_reservations() -> None:
    c = cand(
        info(mem=4096, disk=10000),
        status(mem_avail=3000, disk_total=8000, disk_free=7000),
        Usage(memory_mib=2000, disk_mib=500),
    )
    assert c.free_memory_mib == 4096 - 2000  # reservation 2000 > used 1096
    assert c.capacity_disk_mib == 8000  # status knows the real file system
    assert c.free_disk_mib == 8000 - 1000  # used 1000 > reserved 500


def test_accelerators_temperature_throttling_labels() -> None:
    node = info(
        accelerators=[Accelerator(kind="gpu", count=2), Accelerator(kind="npu")],
        labels={"zone": "a"},
    )
    st_ = status(
        max_temperature_c=71.5, throttling=Throttling(throttled=True), runtimes=[Runtime.NATIVE]
    )
    c = cand(node, st_, Usage(accelerators={"gpu": 1}))
    assert dict(c.free_accelerators) == {"gpu": 1, "npu": 1}
    assert c.temperature_c == 71.5 and c.throttled
    assert c.runtimes == frozenset({"native"})  # the status says what works now
    assert dict(c.labels) == {"zone": "a"}


def test_temperature_falls_back_to_hottest_sensor() -> None:
    c = cand(info(), status(temperatures_c={"cpu": 50.0, "gpu": 61.0}))
    assert c.temperature_c == 61.0


@pytest.mark.parametrize("liveness", [Liveness.NOT_READY, Liveness.OFFLINE, Liveness.LOST])
def test_only_ready_nodes_are_ready_candidates(liveness: Liveness) -> None:
    assert not cand(info(), liveness=liveness).ready


def test_reservations_sum_per_node() -> None:
    res = reservations(
        [
            ("a", Resources(cpu=1, memory_mib=100)),
            ("a", Resources(cpu=0.5, memory_mib=50, accelerators={"gpu": 1})),
            ("b", Resources(cpu=2)),
        ]
    )
    assert (
        res["a"].cpu == 1.5 and res["a"].memory_mib == 150 and res["a"].accelerators == {"gpu": 1}
    )
    assert res["b"].cpu == 2


def test_reported_usage() -> None:
    used = reported_usage(info(cores=8), status(cpu_percent=25, mem_avail=1000))
    assert used.cpu == 2.0 and used.memory_mib == 3096


def test_burst_of_placements_does_not_stack_on_one_node() -> None:
    """Reservations taken at decision time spread a burst before any status arrives."""
    nodes = {f"n{i}": info(name=f"n{i}", cores=2, mem=2048) for i in range(3)}
    spec = TaskSpec(
        runtime=Runtime.NATIVE, command=["x"], resources=Resources(cpu=1.0, memory_mib=512)
    )
    assigned: list[tuple[str, Resources]] = []
    rng = random.Random(1)
    for _ in range(6):
        res = reservations(assigned)
        cands = [cand(i, None, res.get(nid), node_id=nid) for nid, i in nodes.items()]
        decision = place(request_for(spec, Constraints()), cands, "binpack", rng)
        assert decision.chosen is not None
        assigned.append((decision.chosen.id, spec.resources))
    counts = {nid: sum(1 for a, _ in assigned if a == nid) for nid in nodes}
    assert counts == {"n0": 2, "n1": 2, "n2": 2}
    res = reservations(assigned)
    cands = [cand(i, None, res.get(nid), node_id=nid) for nid, i in nodes.items()]
    decision = place(request_for(spec, Constraints()), cands, "spread", rng)
    assert decision.chosen is None and decision.rejections == {"insufficient cpu": 3}


def test_constraints_become_request_filters() -> None:
    spec = TaskSpec(
        runtime=Runtime.DOCKER,
        image="busybox",
        resources=Resources(cpu=0.5, memory_mib=64, accelerators={"gpu": 1}),
    )
    req = request_for(
        spec,
        Constraints(
            labels={"zone": "a"}, arch=[Arch.ARM64], accelerator="gpu", max_temperature_c=70
        ),
        policy="binpack",
        pinned_id="n1",
    )
    assert req.runtime == "docker" and req.cpu == 0.5 and dict(req.accelerators) == {"gpu": 1}
    assert req.archs == frozenset({"arm64"}) and req.accelerator == "gpu"
    assert req.max_temperature_c == 70 and req.pinned_id == "n1" and req.policy == "binpack"


# ------------------------------------------------------------------ aggregation


def snap(
    name: str,
    liveness: Liveness = Liveness.READY,
    draining: bool = False,
    cores: float = 4,
    mem: int = 4096,
    used_pct: float = 0.0,
    reserved_mem: int = 0,
    temp: float | None = None,
    throttled: bool = False,
    **kw,
) -> NodeSnapshot:
    node_info = info(name=name, cores=cores, mem=mem, **kw)
    st_ = status(
        cpu_percent=used_pct,
        mem_total=mem,
        mem_avail=mem,
        max_temperature_c=temp,
        throttling=Throttling(throttled=throttled),
    )
    return NodeSnapshot(
        liveness,
        node_info,
        cand(
            node_info,
            st_,
            Usage(memory_mib=reserved_mem),
            liveness=liveness,
            draining=draining,
            node_id=name,
        ),
    )


def test_report_counts_every_node_but_capacity_only_of_schedulable_ones() -> None:
    nodes = [
        snap(
            "a", cores=4, mem=4096, used_pct=50, reserved_mem=1024, temp=60.0, labels={"zone": "x"}
        ),
        snap(
            "b",
            cores=2,
            mem=8192,
            temp=HOT_THRESHOLD_C + 1,
            throttled=True,
            arch=Arch.ARM64,
            runtimes=[Runtime.NATIVE],
            labels={"zone": "y"},
            accelerators=[Accelerator(kind="npu")],
        ),
        snap("c", Liveness.NOT_READY, cores=16, mem=65536),
        snap("d", draining=True, cores=16, mem=65536, temp=90.0),
        snap("e", Liveness.LOST),
    ]
    changes = [
        InstanceChange(
            instance_id="i1", job_id="j", state=InstanceState.RUNNING, node_id="a", ts=5.0
        )
    ]
    report = aggregate(nodes, ts=10.0, seq=3, full=False, instances=changes)
    assert report.nodes_by_liveness == {Liveness.READY: 3, Liveness.NOT_READY: 1, Liveness.LOST: 1}
    assert report.total.cpu == 6 and report.total.memory_mib == 4096 + 8192
    # CPU free by reservations (a's 50% measured use is not reserved), memory by max()
    assert report.free.cpu == pytest.approx(4 + 2) and report.free.memory_mib == 3072 + 8192
    assert report.largest_free_cpu == 4.0 and report.largest_free_memory_mib == 8192
    assert [n.free.memory_mib for n in report.nodes] == [8192, 3072]  # largest first
    assert report.runtimes == [Runtime.DOCKER, Runtime.NATIVE]
    assert report.archs == [Arch.AMD64, Arch.ARM64]
    assert report.accelerators == {"npu": 1}
    assert report.labels == {"zone": ["x", "y"]}
    # thermal covers every READY node, the draining one too
    assert report.thermal.max_temperature_c == 90.0
    assert report.thermal.hot_nodes == 2 and report.thermal.throttled_nodes == 1
    assert report.instances == changes and report.seq == 3 and not report.full


def test_spread_out_free_memory_is_visible_per_node() -> None:
    """8 nodes with 1 GB free each: totals say 8 GB, largest_free says no 4 GB job fits."""
    nodes = [snap(f"n{i}", mem=1024) for i in range(8)]
    report = aggregate(nodes, ts=1.0, seq=1, full=True)
    assert report.free.memory_mib == 8192
    assert report.largest_free_memory_mib == 1024
    assert all(n.free.memory_mib == 1024 for n in report.nodes)


def test_empty_cluster_report() -> None:
    report = aggregate([], ts=1.0, seq=0, full=True)
    assert report.nodes_by_liveness == {} and report.total == Resources()
    assert report.nodes == [] and report.thermal.max_temperature_c is None


def test_node_summary_is_capped_and_values_clamped() -> None:
    nodes = [
        snap(f"n{i}", cores=64, mem=1024 + i, accelerators=[Accelerator(kind="gpu", count=8)])
        for i in range(MAX_NODE_SUMMARIES + 10)
    ]
    report = aggregate(nodes, ts=1.0, seq=1, full=True)
    assert len(report.nodes) == MAX_NODE_SUMMARIES
    assert report.nodes[0].free.memory_mib == 1024 + MAX_NODE_SUMMARIES + 9
    assert report.total.cpu == 4096  # clamped to the wire limit
    assert report.accelerators == {"gpu": 64}


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.5, 64),
            st.integers(1, 1 << 16),
            st.floats(0, 100),
            st.integers(0, 1 << 16),
            st.booleans(),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_free_never_exceeds_total_and_largest_is_a_max(rows) -> None:
    nodes = [
        snap(f"n{i}", cores=c, mem=m, used_pct=u, reserved_mem=r, draining=d)
        for i, (c, m, u, r, d) in enumerate(rows)
    ]
    report = aggregate(nodes, ts=1.0, seq=1, full=True)
    assert report.free.cpu <= report.total.cpu + 1e-6
    assert report.free.memory_mib <= report.total.memory_mib
    sched = [n for n in nodes if n.schedulable]
    if sched:
        assert report.largest_free_memory_mib == max(n.candidate.free_memory_mib for n in sched)
    assert len(report.nodes) == len(sched)


def test_overloaded_node_is_not_schedulable_in_the_report() -> None:
    """The cluster refuses an overloaded node, so the root must not count it either."""
    node_info = info(name="busy", cores=8, mem=8192)
    busy = NodeSnapshot(
        Liveness.READY,
        node_info,
        cand(node_info, status(mem_total=8192, mem_avail=8192, shedding=True), node_id="busy"),
    )
    report = aggregate([busy, snap("ok", cores=2, mem=1024)], ts=1.0, seq=1, full=True)
    assert report.nodes_by_liveness == {Liveness.READY: 2}
    assert report.total.cpu == 2 and report.largest_free_memory_mib == 1024
    assert [n.free.cpu for n in report.nodes] == [2.0]


def test_report_labels_are_effective_and_summaries_carry_the_nodes_own() -> None:
    eu = {"region": "eu", "tier": "edge"}
    a_info = info(name="a", labels={"zone": "x"})
    b_info = info(name="b", labels={"region": "us"})
    nodes = [
        NodeSnapshot(Liveness.READY, i, cand(i, status(), node_id=i.name, cluster_labels=eu))
        for i in (a_info, b_info)
    ]
    report = aggregate(nodes, ts=1.0, seq=1, full=True)
    assert report.labels == {"region": ["eu", "us"], "tier": ["edge"], "zone": ["x"]}
    assert sorted(sorted(n.labels.items()) for n in report.nodes) == [
        [("region", "us")],
        [("zone", "x")],
    ]


CLUSTER_LABELS = {"region": "eu", "tier": "edge"}


@pytest.mark.parametrize(
    "required",
    [
        pytest.param({"region": "eu"}, id="cluster-label"),
        pytest.param({"region": "us"}, id="node-override-value"),
        pytest.param({"region": "eu", "zone": "x"}, id="cluster-plus-node-label"),
        pytest.param({"region": "us", "tier": "edge"}, id="override-plus-cluster-label"),
        pytest.param({"region": "us", "zone": "x"}, id="on-different-nodes"),
        pytest.param({"region": "ap"}, id="nowhere"),
        pytest.param({"tier": "core"}, id="cluster-label-other-value"),
    ],
)
@pytest.mark.parametrize("busy", [False, True], ids=["idle-host", "busy-host"])
def test_root_and_cluster_agree_on_labels_and_cpu(required: dict[str, str], busy: bool) -> None:
    """What the root decides from the cluster's report is what the cluster then accepts."""
    from root_orchestrator.scheduler import ClusterSnapshot
    from root_orchestrator.scheduler import build_candidate as root_candidate

    infos = [
        info(name="a", cores=2, labels={"zone": "x"}),
        info(name="b", cores=2, labels={"region": "us"}),
    ]
    cpu = 95.0 if busy else 0.0
    cands = [
        cand(i, status(cpu_percent=cpu), node_id=i.name, cluster_labels=CLUSTER_LABELS)
        for i in infos
    ]
    report = aggregate(
        [NodeSnapshot(Liveness.READY, i, c) for i, c in zip(infos, cands, strict=True)],
        ts=1.0,
        seq=1,
        full=True,
    )
    spec = TaskSpec(runtime=Runtime.NATIVE, command=["x"], resources=Resources(cpu=1.5))
    constraints = Constraints(labels=required)
    at_cluster = place(request_for(spec, constraints), cands, "spread", random.Random(0))
    snapshot = ClusterSnapshot(id="c1", name="c1", ready=True, report=report, labels=CLUSTER_LABELS)
    request = request_for(spec, constraints)
    at_root = place(request, [root_candidate(request, snapshot)], "spread", random.Random(0))
    assert (at_root.chosen is not None) == (at_cluster.chosen is not None), (
        at_root.explain(),
        at_cluster.explain(),
    )
