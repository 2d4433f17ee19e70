"""The root's pure placement plan: snapshot + instance -> typed plan (no I/O, no state)."""

from __future__ import annotations

import random
from typing import Any

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
