"""Report -> placement candidate conversion of the root scheduler (table-driven)."""

from __future__ import annotations

from typing import Any

import pytest

from placement import Request, first_failure, place
from placement.from_spec import request_for
from root_orchestrator.scheduler import ClusterSnapshot, build_candidate
from schemas.cluster import ClusterReport, NodeCapacity, ThermalSummary
from schemas.common import Arch, Runtime
from schemas.job import Constraints, JobSpec
from schemas.node import Liveness
from schemas.resources import Resources


def node(
    cpu: float = 2,
    mem: int = 2048,
    *,
    arch: Arch = Arch.AMD64,
    runtimes: tuple[Runtime, ...] = (Runtime.NATIVE,),
    labels: dict[str, str] | None = None,
    temp: float | None = None,
    throttled: bool = False,
    accel: dict[str, int] | None = None,
) -> NodeCapacity:
    return NodeCapacity(
        free=Resources(cpu=cpu, memory_mib=mem, disk_mib=1000, accelerators=accel or {}),
        arch=arch,
        runtimes=list(runtimes),
        labels=labels or {},
        temperature_c=temp,
        throttled=throttled,
    )


def report(*nodes: NodeCapacity, **extra: Any) -> ClusterReport:
    values: dict[str, Any] = {
        "ts": 1.0,
        "seq": 1,
        "nodes_by_liveness": {Liveness.READY: len(nodes)},
        "total": Resources(
            cpu=sum(n.free.cpu for n in nodes) * 2,
            memory_mib=sum(n.free.memory_mib for n in nodes) * 2,
            disk_mib=1000 * len(nodes),
        ),
        "free": Resources(
            cpu=sum(n.free.cpu for n in nodes),
            memory_mib=sum(n.free.memory_mib for n in nodes),
            disk_mib=1000 * len(nodes),
            accelerators={
                k: sum(n.free.accelerators.get(k, 0) for n in nodes)
                for n0 in nodes
                for k in n0.free.accelerators
            },
        ),
        "largest_free_cpu": max((n.free.cpu for n in nodes), default=0),
        "largest_free_memory_mib": max((n.free.memory_mib for n in nodes), default=0),
        "nodes": list(nodes),
        "runtimes": sorted({r for n in nodes for r in n.runtimes}),
        "archs": sorted({n.arch for n in nodes}),
    }
    values.update(extra)
    return ClusterReport(**values)


def req(cpu: float = 1, mem: int = 1024, **extra: Any) -> Request:
    values: dict[str, Any] = {"cpu": cpu, "memory_mib": mem, "runtime": "native"}
    values.update(extra)
    return Request(**values)


# (id, report, cluster labels, request, ready, expected first failure or None)
CASES: list[tuple[str, ClusterReport | None, dict[str, str], Request, bool, str | None]] = [
    ("fits", report(node()), {}, req(), True, None),
    ("no report yet", None, {}, req(), True, "not ready"),
    ("not ready", report(node()), {}, req(), False, "not ready"),
    (
        "spread over nodes",
        report(node(mem=1024), node(mem=1024)),
        {},
        req(mem=2048),
        True,
        "no single node fits",
    ),
    ("aggregate too small", report(node(mem=512)), {}, req(mem=2048), True, "insufficient memory"),
    (
        "runtime missing",
        report(node()),
        {},
        req(runtime="docker"),
        True,
        "runtime docker unavailable",
    ),
    (
        "runtime on one node only",
        report(node(cpu=4, mem=4096), node(mem=512, runtimes=(Runtime.DOCKER,))),
        {},
        req(cpu=0.5, mem=1024, runtime="docker"),
        True,
        "no single node fits",
    ),
    (
        "arch",
        report(node()),
        {},
        req(archs=frozenset({"arm64"})),
        True,
        "architecture arm64 required",
    ),
    (
        "arch of the right node",
        report(node(arch=Arch.ARM64, mem=512), node(arch=Arch.AMD64, mem=4096)),
        {},
        req(archs=frozenset({"arm64"}), mem=1024),
        True,
        "no single node fits",
    ),
    (
        "node label present",
        report(node(labels={"zone": "a"}), node(labels={"zone": "b"})),
        {},
        req(labels={"zone": "b"}),
        True,
        None,
    ),
    (
        "node label on a too small node",
        report(node(labels={"zone": "a"}, mem=4096), node(labels={"zone": "b"}, mem=512)),
        {},
        req(labels={"zone": "b"}),
        True,
        "no single node fits",
    ),
    (
        "label missing",
        report(node(labels={"zone": "a"})),
        {},
        req(labels={"zone": "b"}),
        True,
        "label zone=b missing",
    ),
    (
        "cluster label applies to every node",
        report(node()),
        {"region": "eu"},
        req(labels={"region": "eu"}),
        True,
        None,
    ),
    ("too hot", report(node(temp=80)), {}, req(max_temperature_c=70), True, "too hot"),
    (
        "one cool node suffices",
        report(node(temp=80), node(temp=50)),
        {},
        req(max_temperature_c=70),
        True,
        None,
    ),
    (
        "cool node too small",
        report(node(temp=80, mem=4096), node(temp=50, mem=512)),
        {},
        req(max_temperature_c=70),
        True,
        "no single node fits",
    ),
    ("all throttled", report(node(throttled=True)), {}, req(), True, "throttled"),
    (
        "throttled node skipped",
        report(node(throttled=True, mem=4096), node(mem=512)),
        {},
        req(),
        True,
        "no single node fits",
    ),
    (
        "accelerator present",
        report(node(accel={"gpu": 1}), accelerators={"gpu": 1}),
        {},
        req(accelerator="gpu", accelerators={"gpu": 1}),
        True,
        None,
    ),
    (
        "accelerator missing",
        report(node()),
        {},
        req(accelerator="gpu"),
        True,
        "accelerator gpu missing",
    ),
    (
        "accelerator busy",
        report(node(accel={"gpu": 0}), accelerators={"gpu": 1}),
        {},
        req(accelerators={"gpu": 1}),
        True,
        "insufficient accelerator gpu",
    ),
    (
        "no per-node summary: largest free decides",
        report(node(mem=4096)).model_copy(update={"nodes": [], "largest_free_memory_mib": 1024}),
        {},
        req(mem=2048),
        True,
        "no single node fits",
    ),
    (
        "no per-node summary, fits",
        report(node(mem=4096)).model_copy(update={"nodes": []}),
        {},
        req(mem=2048),
        True,
        None,
    ),
    ("empty cluster", report(), {}, req(cpu=0, mem=0), True, "runtime native unavailable"),
    (
        "no ready node",
        report(runtimes=[Runtime.NATIVE]),
        {},
        req(cpu=0, mem=0),
        True,
        "no single node fits",
    ),
]


@pytest.mark.parametrize(
    ("rep", "labels", "request_", "ready", "expected"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_report_to_candidate(
    rep: ClusterReport | None,
    labels: dict[str, str],
    request_: Request,
    ready: bool,
    expected: str | None,
) -> None:
    snap = ClusterSnapshot(id="c1", name="site", ready=ready, report=rep, labels=labels)
    candidate = build_candidate(request_, snap)
    assert candidate.id == "c1" and candidate.name == "site"
    assert first_failure(request_, candidate) == expected


RESERVATION_CASES = [
    # (id, node memories, reserved requests (mem), new request mem, expected)
    ("room left", (4096,), (1024,), 2048, None),
    ("reservation fills the node", (2048,), (1024, 1024), 1024, "insufficient memory"),
    ("reservation takes the best fit, big node stays", (1024, 4096), (1024,), 4096, None),
    ("reservations on both", (2048, 2048), (1536, 1536), 1024, "no single node fits"),
]


@pytest.mark.parametrize(
    ("mems", "reserved", "want", "expected"),
    [pytest.param(*c[1:], id=c[0]) for c in RESERVATION_CASES],
)
def test_reservations_reduce_the_view(
    mems: tuple[int, ...], reserved: tuple[int, ...], want: int, expected: str | None
) -> None:
    rep = report(*(node(cpu=8, mem=m) for m in mems))
    snap = ClusterSnapshot(
        id="c",
        name="c",
        ready=True,
        report=rep,
        reserved=tuple(req(cpu=0.1, mem=m) for m in reserved),
    )
    request = req(cpu=0.1, mem=want)
    assert first_failure(request, build_candidate(request, snap)) == expected


def test_reservation_that_no_longer_fits_is_ignored() -> None:
    snap = ClusterSnapshot(
        id="c", name="c", ready=True, report=report(node(mem=512)), reserved=(req(mem=4096),)
    )
    candidate = build_candidate(req(mem=256), snap)
    assert candidate.free_memory_mib == 512


@pytest.mark.parametrize(
    ("spec", "constraints", "expected"),
    [
        (
            {"runtime": "native", "command": ["x"], "resources": {"cpu": 0.5, "memory_mib": 100}},
            {},
            req(cpu=0.5, mem=100),
        ),
        (
            {"runtime": "docker", "image": "nginx", "resources": {"accelerators": {"gpu": 1}}},
            {
                "arch": ["arm64"],
                "labels": {"zone": "a"},
                "accelerator": "gpu",
                "max_temperature_c": 70,
            },
            Request(
                cpu=0,
                memory_mib=0,
                accelerators={"gpu": 1},
                runtime="docker",
                labels={"zone": "a"},
                archs=frozenset({"arm64"}),
                accelerator="gpu",
                max_temperature_c=70,
            ),
        ),
    ],
)
def test_request_for_spec(
    spec: dict[str, Any], constraints: dict[str, Any], expected: Request
) -> None:
    job = JobSpec.model_validate({"name": "j", **spec, "constraints": constraints})
    assert request_for(job, job.constraints) == expected


def test_cluster_temperature_is_the_coolest_eligible_node() -> None:
    rep = report(
        node(temp=70),
        node(temp=45, labels={"zone": "a"}),
        thermal=ThermalSummary(max_temperature_c=70),
    )
    snap = ClusterSnapshot(id="c", name="c", ready=True, report=rep)
    assert build_candidate(req(), snap).temperature_c == 45
    assert build_candidate(req(labels={"zone": "a"}), snap).temperature_c == 45


def test_placement_prefers_the_emptier_cluster_and_explains() -> None:
    import random

    small = ClusterSnapshot(id="small", name="small", ready=True, report=report(node(cpu=2)))
    big = ClusterSnapshot(id="big", name="big", ready=True, report=report(node(cpu=16, mem=16384)))
    hot = ClusterSnapshot(id="hot", name="hot", ready=False, report=report(node()))
    request = req()
    candidates = [build_candidate(request, s) for s in (small, big, hot)]
    decision = place(request, candidates, "spread", random.Random(1), noun="cluster")
    assert decision.chosen is not None and decision.chosen.id == "big"
    assert decision.rejections == {"not ready": 1}
    assert "1 rejected: not ready" in decision.explain()
    assert Constraints().cluster is None
