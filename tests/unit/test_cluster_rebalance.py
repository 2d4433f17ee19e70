"""Which replica of a spread job moves where when a node returns: table-driven."""

from __future__ import annotations

import pytest

from cluster_orchestrator.rebalance import Placed, rebalance_moves


def placed(spec: str, job: str = "j1", running: bool = True) -> list[Placed]:
    """'a:2,b:0' -> two RUNNING replicas of `job` on node a (ids j1-a0, j1-a1)."""
    out = []
    for part in spec.split(","):
        node, count = part.split(":")
        out += [Placed(f"{job}-{node}{i}", job, node, running) for i in range(int(count))]
    return out


CASES = [
    # (name, instances, targets, expected [(instance, source, allowed)])
    ("all on one node, the other returned", placed("a:2"), {"a", "b"}, [("j1-a1", "a", {"b"})]),
    (
        "three on a, one on b: to b or c",
        placed("a:3,b:1"),
        {"a", "b", "c"},
        [("j1-a2", "a", {"b", "c"})],
    ),
    ("three on a, one on b, two targets", placed("a:3,b:1"), {"a", "b"}, [("j1-a2", "a", {"b"})]),
    ("even already", placed("a:1,b:1"), {"a", "b"}, []),
    ("difference of one never moves", placed("a:2,b:1"), {"a", "b"}, []),
    ("a single replica never moves", placed("a:1"), {"a", "b"}, []),
    (
        "the fullest node need not be a target",
        placed("x:3"),
        {"a", "b"},
        [("j1-x2", "x", {"a", "b"})],
    ),
    ("no targets at all", placed("a:2"), set(), []),
    (
        "a replica on its way blocks its job",
        placed("a:2") + placed("b:0") + [Placed("j1-s", "j1", "a", False)],
        {"a", "b"},
        [],
    ),
]


@pytest.mark.parametrize(
    ("instances", "targets", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_rebalance_moves(instances, targets, expected) -> None:
    moves = rebalance_moves(instances, targets)
    assert [(m.instance_id, m.source, set(m.allowed)) for m in moves] == expected


def test_one_move_per_job_and_jobs_are_independent() -> None:
    moves = rebalance_moves(
        placed("a:4") + placed("a:2", job="j2") + placed("a:1", job="j3"), {"a", "b"}
    )
    assert [(m.job_id, m.instance_id) for m in moves] == [("j1", "j1-a3"), ("j2", "j2-a1")]
    assert moves[0].counts == {"a": 4, "b": 0}


def test_pinned_replicas_stay_and_others_move() -> None:
    group = [Placed("p", "j1", "a", True, movable=False), *placed("a:2")]
    (move,) = rebalance_moves(group, {"a", "b"})
    assert move.instance_id == "j1-a1"
    assert rebalance_moves([Placed("p", "j1", "a", True, movable=False)] * 2, {"a", "b"}) == []


def test_ties_pick_the_smallest_node_id_deterministically() -> None:
    (move,) = rebalance_moves(placed("b:2,a:2"), {"a", "b", "c"})
    assert move.source == "a" and move.allowed == {"c"}
