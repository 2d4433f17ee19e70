"""What the core's placement sees of a node: cluster labels, busy CPU, overload.

Driven synchronously like tests/unit/test_cluster_core.py (fake clock, fake broker),
with cluster settings that matter here (`labels`, `overload_cpu_percent`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cluster_orchestrator.core import ClusterCore
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.persister import Persister
from cluster_orchestrator.settings import ClusterSettings
from schemas.job import Constraints
from schemas.mqtt import CommandMessage, StatusMessage
from schemas.node import DiskStatus, MemoryStatus, NodeStatus
from store import open_store
from tests.unit.test_cluster_core import Clock, Harness

CLUSTER_LABELS = {"region": "eu", "tier": "edge"}


@pytest.fixture
def make() -> Iterator[Callable[..., Harness]]:
    """Build a harness whose core has the given extra cluster settings."""
    cleanups: list[Callable[[], None]] = []

    def build(**settings: Any) -> Harness:
        clock = Clock()
        sent: list[CommandMessage] = []
        store = open_store("sqlite://:memory:")
        metrics = Metrics()
        persister = Persister(store, metrics)
        persister.start()

        def publish(message: CommandMessage) -> bool:
            sent.append(message)
            return True

        core = ClusterCore(
            settings=ClusterSettings(name="c1", **settings),
            store=store,
            persister=persister,
            metrics=metrics,
            publish=publish,
            mono=clock.mono,
            wall=clock.wall,
            rng=random.Random(7),
        )
        cleanups.extend([persister.stop, store.close])
        return Harness(core, clock, sent, store, persister, metrics)

    yield build
    for cleanup in cleanups:
        cleanup()


def status(h: Harness, node_id: str, *, cpu: float = 0.0, shedding: bool = False) -> None:
    seq = h.seq.get(node_id, 0) + 1
    h.seq[node_id] = seq
    payload = NodeStatus(
        ts=h.clock.wall(),
        seq=seq,
        cpu_percent=cpu,
        memory=MemoryStatus(total_mib=4096, available_mib=4096, used_percent=0),
        disk=DiskStatus(total_mib=10000, free_mib=10000, used_percent=0),
        shedding=shedding,
    )
    h.deliver(StatusMessage(node_id=node_id, ts=h.clock.wall(), payload=payload))


@pytest.mark.parametrize(
    ("required", "node"),
    [
        pytest.param({"region": "eu"}, "a", id="cluster-label-alone"),
        pytest.param({"region": "eu", "zone": "x"}, "a", id="cluster-and-node-label"),
        pytest.param({"tier": "edge", "region": "us"}, "b", id="node-overrides-cluster"),
        pytest.param({"region": "ap"}, None, id="label-nowhere"),
    ],
)
def test_cluster_labels_count_under_node_labels(
    make: Callable[..., Harness], required: dict[str, str], node: str | None
) -> None:
    h = make(labels=CLUSTER_LABELS)
    ids = {"a": h.join("a", labels={"zone": "x"}), "b": h.join("b", labels={"region": "us"})}
    resp = h.place("i1", constraints=Constraints(labels=required))
    if node is None:
        assert not resp.accepted
        assert resp.reasons == {"label region=ap missing": 2}
    else:
        assert resp.accepted and resp.node_id == ids[node], resp.explanation


def test_report_to_the_root_shows_effective_labels(make: Callable[..., Harness]) -> None:
    h = make(labels=CLUSTER_LABELS)
    h.join("a", labels={"zone": "x"})
    h.join("b", labels={"region": "us"})
    report = h.core.build_report(seq=1, full=True, changes=[])
    assert report.labels == {"region": ["eu", "us"], "tier": ["edge"], "zone": ["x"]}


def test_busy_host_still_takes_a_cpu_request(make: Callable[..., Harness]) -> None:
    """95% CPU used by something else is not a reservation: 1.5 of 2 cores fit."""
    h = make()
    a = h.join("a", cores=2)
    status(h, a, cpu=95.0)
    resp = h.place("i1", cpu=1.5)
    assert resp.accepted and resp.node_id == a, resp.explanation
    # reservations still count: a second 1.5-core request does not fit
    resp = h.place("i2", cpu=1.5)
    assert not resp.accepted and resp.reasons == {"insufficient cpu": 1}
    report = h.core.build_report(seq=1, full=True, changes=[])
    assert report.free.cpu == pytest.approx(0.5)


def test_spread_prefers_the_less_loaded_node(make: Callable[..., Harness]) -> None:
    h = make()
    busy, idle = h.join("busy", cores=2), h.join("idle", cores=2)
    status(h, busy, cpu=90.0)
    status(h, idle, cpu=10.0)
    assert h.place("i1", cpu=0.5).node_id == idle


@pytest.mark.parametrize(
    ("settings", "cpu", "shedding", "overloaded"),
    [
        pytest.param({}, 99.0, False, False, id="busy-no-limit"),
        pytest.param({}, 5.0, True, True, id="shedding"),
        pytest.param({"overload_cpu_percent": 90.0}, 95.0, False, True, id="over-the-limit"),
        pytest.param({"overload_cpu_percent": 90.0}, 50.0, False, False, id="under-the-limit"),
    ],
)
def test_overloaded_node_takes_no_work_and_leaves_the_report(
    make: Callable[..., Harness],
    settings: dict[str, Any],
    cpu: float,
    shedding: bool,
    overloaded: bool,
) -> None:
    h = make(**settings)
    a = h.join("a")
    status(h, a, cpu=cpu, shedding=shedding)
    resp = h.place("i1", cpu=0.0)
    report = h.core.build_report(seq=1, full=True, changes=[])
    if overloaded:
        assert not resp.accepted and resp.reasons == {"overloaded": 1}
        assert "1 node: overloaded" in resp.explanation
        assert report.nodes == [] and report.total.cpu == 0
    else:
        assert resp.accepted, resp.explanation
        assert len(report.nodes) == 1
