"""The root's pure placement plan: snapshot + instance -> typed plan (no I/O, no state)."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from root_orchestrator.models import ClusterRejection
from root_orchestrator.placement_plan import (
    PinnedCluster,
    SendTo,
    StayPending,
    plan_placement,
    plan_placements,
    request_of,
)
from root_orchestrator.scheduler import ClusterSnapshot
from schemas.cluster import ClusterLiveness
from schemas.job import JobSpec
from tests.unit.test_root_scheduler import node, report


def spec(**extra: Any) -> JobSpec:
    values: dict[str, Any] = {
        "name": "j",
        "runtime": "native",
        "command": ["x"],
        "resources": {"cpu": 1, "memory_mib": 1024},
    }
    values.update(extra)
    return JobSpec.model_validate(values)


def snap(cid: str, cpu: float = 2, *, ready: bool = True) -> ClusterSnapshot:
    return ClusterSnapshot(id=cid, name=f"name-{cid}", ready=ready, report=report(node(cpu=cpu)))


def plan(clusters: list[ClusterSnapshot], **kw: Any) -> SendTo | StayPending:
    args: dict[str, Any] = {
        "pinned": None,
        "existing": {},
        "policy": "binpack",
        "rng": random.Random(1),
        "now": 100.0,
    }
    args.update(kw)
    rejections = args.pop("rejections", {})
    return plan_placement("i1", spec(), clusters, rejections, **args)


def test_chooses_a_fitting_cluster_and_reserves_the_request_there() -> None:
    result = plan([snap("c1", cpu=0.5), snap("c2", cpu=4)])
    assert isinstance(result, SendTo)
    assert (result.cluster_id, result.cluster_name, result.pinned) == ("c2", "name-c2", False)
    assert result.reserve == request_of(spec())
    assert result.info.outcome == "scheduled" and result.info.at == 100.0
    assert result.info.decision is not None


def test_refusing_clusters_are_left_out_and_named_in_the_explanation() -> None:
    refused = ClusterRejection(cluster_id="c2", cluster_name="name-c2", explanation="full")
    result = plan([snap("c1"), snap("c2", cpu=4)], rejections={"c2": refused})
    assert isinstance(result, SendTo) and result.cluster_id == "c1"
    assert "cluster name-c2 refused: full" in result.info.explanation
    assert result.info.cluster_rejections == [refused]


def test_nothing_fits_stays_pending_with_the_reasons() -> None:
    result = plan([snap("c1", cpu=0.5), snap("c2", ready=False)])
    assert isinstance(result, StayPending) and result.decision is not None
    assert result.text.startswith("pending: ")
    empty = plan([])
    assert isinstance(empty, StayPending)
    assert empty.text == "pending: no cluster is registered"


def test_a_pinned_cluster_is_forwarded_to_only_when_ready_and_not_refusing() -> None:
    ready = PinnedCluster("edge", "c9", "edge", ClusterLiveness.READY)
    forwarded = plan([snap("c1")], pinned=ready)
    assert isinstance(forwarded, SendTo)
    assert (forwarded.cluster_id, forwarded.pinned, forwarded.reserve) == ("c9", True, None)
    assert forwarded.info.outcome == "forwarded"
    unknown = plan([snap("c1")], pinned=PinnedCluster("edge"))
    assert isinstance(unknown, StayPending)
    assert unknown.text == "cluster edge (constraints.cluster) is not registered"
    lost = plan([], pinned=PinnedCluster("edge", "c9", "edge", ClusterLiveness.LOST))
    assert isinstance(lost, StayPending) and lost.text.endswith("is LOST")
    refused = ClusterRejection(cluster_id="c9", cluster_name="edge")
    again = plan([], pinned=ready, rejections={"c9": refused})
    assert isinstance(again, StayPending) and again.text.endswith("refused it")


def test_the_same_seed_gives_the_same_plan() -> None:
    clusters = [snap(f"c{i}") for i in range(5)]
    first = plan(clusters, policy="spread", rng=random.Random(7))
    second = plan(clusters, policy="spread", rng=random.Random(7))
    assert first == second


def test_several_replicas_reserve_in_a_local_copy_only() -> None:
    clusters = [snap("c1", cpu=1.5), snap("c2", cpu=1.5)]
    planned = plan_placements(
        spec(),
        [0, 1, 2],
        clusters,
        pinned=None,
        existing={},
        policy="binpack",
        rng=random.Random(1),
    )
    assert [p.outcome for p in planned] == ["scheduled", "scheduled", "pending"]
    assert {p.cluster_id for p in planned[:2]} == {"c1", "c2"}
    assert all(s.reserved == () for s in clusters)  # the snapshots are untouched


# The dry run (`plan_placements`) against the real placement (`plan_placement`): one
# table of fleets, each with what the dry run must plan for every replica (a cluster id,
# "forwarded:<id>" or "pending") and the explanation of the last replica. The values
# were taken from the dry run before it was built on `plan_placement`; the second test
# replays every case one replica at a time through `plan_placement`, reserving each
# choice, and checks it decides the same.


def fleet(*clusters: tuple[str, float, int] | tuple[str, float, int, bool]) -> list[Any]:
    """Snapshots from (id, cpu, memory MiB[, ready]); one node each."""
    out = []
    for c in clusters:
        cid, cpu, mem, ready = (*c, True)[:4]
        node_report = report(node(cpu=cpu, mem=mem))
        out.append(ClusterSnapshot(id=cid, name=f"name-{cid}", ready=ready, report=node_report))
    return out


READY_PIN = PinnedCluster("edge", "c9", "edge", ClusterLiveness.READY)

DRY_RUN_CASES: dict[str, dict[str, Any]] = {
    "two one-slot clusters take one replica each, the third stays pending": {
        "clusters": fleet(("c1", 1.5, 2048), ("c2", 1.5, 2048)),
        "replicas": 3,
        "expect": ["c1", "c2", "pending"],
        "last": "pending: no candidate fits: 2 clusters: insufficient cpu",
    },
    "binpack fills the small cluster before the big one": {
        "clusters": fleet(("c1", 8, 8192), ("c2", 2, 2048)),
        "replicas": 4,
        "expect": ["c2", "c2", "c1", "c1"],
        "last": "chose name-c1 (score 60.0) among 1 feasible; 1 rejected: insufficient cpu",
    },
    "spread counts the replicas already running": {
        "clusters": fleet(("c1", 8, 8192), ("c2", 8, 8192)),
        "replicas": 3,
        "existing": {"c1": 2},
        "policy": "spread",
        "expect": ["c2", "c2", "c1"],
        "last": "chose name-c1 (score 40.8) among 2 feasible",
    },
    "spread over four clusters until one is full": {
        "clusters": fleet(*((f"c{i}", 2, 4096) for i in range(4))),
        "replicas": 6,
        "policy": "spread",
        "expect": ["c1", "c3", "c0", "c2", "c3", "c2"],
        "last": "chose name-c2 (score 35.0, 3-way tie) among 3 feasible; "
        "1 rejected: insufficient cpu",
    },
    "a cluster that is not ready is never chosen": {
        "clusters": fleet(("c1", 8, 8192, False), ("c2", 1, 2048)),
        "replicas": 2,
        "expect": ["c2", "pending"],
        "last": "pending: no candidate fits: 1 cluster: insufficient cpu, 1 cluster: not ready",
    },
    "no cluster registered": {
        "clusters": [],
        "replicas": 2,
        "expect": ["pending", "pending"],
        "last": "pending: no cluster is registered",
    },
    "a ready pinned cluster gets every replica forwarded": {
        "pinned": READY_PIN,
        "replicas": 2,
        "expect": ["forwarded:c9", "forwarded:c9"],
        "last": "forwarded to cluster edge named by constraints.cluster (no root scheduling)",
    },
    "a pinned cluster that is not registered": {
        "pinned": PinnedCluster("edge"),
        "replicas": 1,
        "expect": ["pending"],
        "last": "pending: cluster edge (constraints.cluster) is not registered",
    },
    "a pinned cluster that is lost": {
        "pinned": PinnedCluster("edge", "c9", "edge", ClusterLiveness.LOST),
        "replicas": 1,
        "expect": ["pending"],
        "last": "pending: cluster edge (constraints.cluster) is LOST",
    },
    "a pinned cluster that is unreachable": {
        "pinned": PinnedCluster("edge", "c9", "edge", ClusterLiveness.UNREACHABLE),
        "replicas": 1,
        "expect": ["pending"],
        "last": "pending: cluster edge (constraints.cluster) is UNREACHABLE",
    },
}


def dry_run(case: dict[str, Any]) -> list[Any]:
    return plan_placements(
        spec(),
        list(range(case["replicas"])),
        case.get("clusters", []),
        pinned=case.get("pinned"),
        existing=case.get("existing", {}),
        policy=case.get("policy", "binpack"),
        rng=random.Random(3),
    )


def where(planned: Any) -> str:
    if planned.outcome == "forwarded":
        return f"forwarded:{planned.cluster_id}"
    return "pending" if planned.outcome == "pending" else str(planned.cluster_id)


@pytest.mark.parametrize("case", DRY_RUN_CASES.values(), ids=DRY_RUN_CASES.keys())
def test_the_dry_run_plans_each_replica(case: dict[str, Any]) -> None:
    planned = dry_run(case)
    assert [p.replica for p in planned] == list(range(case["replicas"]))
    assert [where(p) for p in planned] == case["expect"]
    assert planned[-1].explanation == case["last"]
    # the scheduler's decision comes along unless the job names its cluster
    assert all((p.decision is None) == ("pinned" in case) for p in planned)


@pytest.mark.parametrize("case", DRY_RUN_CASES.values(), ids=DRY_RUN_CASES.keys())
def test_the_dry_run_decides_what_placing_one_replica_at_a_time_decides(
    case: dict[str, Any],
) -> None:
    clusters: list[ClusterSnapshot] = case.get("clusters", [])
    existing = dict(case.get("existing", {}))
    rng = random.Random(3)
    reserved: dict[str, tuple[Any, ...]] = {}
    for planned in dry_run(case):
        snaps = [replace(s, reserved=s.reserved + reserved.get(s.id, ())) for s in clusters]
        one = plan_placement(
            f"i{planned.replica}",
            spec(),
            snaps,
            {},
            pinned=case.get("pinned"),
            existing=dict(existing),
            policy=case.get("policy", "binpack"),
            rng=rng,
            now=0.0,
        )
        if isinstance(one, SendTo):
            assert (planned.outcome, planned.cluster_id) == (one.info.outcome, one.cluster_id)
            assert planned.decision == one.info.decision
            if one.reserve is not None:
                reserved[one.cluster_id] = (*reserved.get(one.cluster_id, ()), one.reserve)
                existing[one.cluster_id] = existing.get(one.cluster_id, 0) + 1
        else:
            assert planned.outcome == "pending"
            assert planned.explanation.endswith(one.text.removeprefix("pending: "))
