"""Table-driven tests for placement: each filter, scorer, policy, explanation, to_dict.

There is one implementation of the filters and scorers (over a `CandidateTable`); a
plain list is turned into a table. `decide` also places through a table kept and
updated across calls, which must give the same decision as a fresh one.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest

from placement import (
    BINPACK,
    FILTERS,
    POLICIES,
    SPREAD,
    Candidate,
    CandidateTable,
    Decision,
    Policy,
    Request,
    Unit,
    first_failure,
    get_policy,
    place,
    place_many,
    reserve,
)
from placement.scorers import job_spread, least_allocated, most_allocated, thermal_headroom

DOCKER = frozenset({"docker"})
BOTH = frozenset({"docker", "native"})


def node(cid: str = "n1", **overrides: Any) -> Candidate:
    """A healthy, half-loaded arm64 node with docker and native runtimes."""
    fields: dict[str, Any] = {
        "id": cid,
        "name": "",
        "free_cpu": 2.0,
        "free_memory_mib": 2048,
        "free_disk_mib": 10_000,
        "capacity_cpu": 4.0,
        "capacity_memory_mib": 4096,
        "capacity_disk_mib": 20_000,
        "runtimes": BOTH,
        "archs": frozenset({"arm64"}),
        "labels": {"zone": "factory"},
        "temperature_c": 50.0,
    }
    fields.update(overrides)
    return Candidate(**fields)


def unit(
    cpu: float = 1.0,
    mem: int = 1024,
    disk: int = 10_000,
    arch: str = "arm64",
    runtimes: frozenset[str] = BOTH,
    accel: dict[str, int] | None = None,
) -> Unit:
    return Unit(
        free_cpu=cpu,
        free_memory_mib=mem,
        free_disk_mib=disk,
        arch=arch,
        runtimes=runtimes,
        free_accelerators=accel or {},
    )


def cluster(cid: str, units: tuple[Unit, ...], **overrides: Any) -> Candidate:
    """A cluster candidate whose aggregate values are the sums over its units."""
    accel: dict[str, int] = {}
    for u in units:
        for kind, count in u.free_accelerators.items():
            accel[kind] = accel.get(kind, 0) + count
    fields: dict[str, Any] = {
        "id": cid,
        "free_cpu": sum(u.free_cpu for u in units),
        "free_memory_mib": sum(u.free_memory_mib for u in units),
        "free_disk_mib": sum(u.free_disk_mib for u in units),
        "capacity_cpu": 4.0 * max(len(units), 1),
        "capacity_memory_mib": 4096 * max(len(units), 1),
        "capacity_disk_mib": 20_000 * max(len(units), 1),
        "free_accelerators": accel,
        "runtimes": frozenset().union(*(u.runtimes for u in units)),
        "archs": frozenset(u.arch for u in units),
        "units": units,
    }
    fields.update(overrides)
    return Candidate(**fields)


def both_paths(
    request: Request, candidates: list[Candidate], policy: str = "spread", seed: int = 0, **kw: Any
) -> Decision:
    """Place from a list, and through a table whose rows were all rewritten in place
    (as a scheduler keeping one does); the two must be equal. Returns the decision."""
    from_list = place(request, candidates, policy, random.Random(seed), **kw)
    kept = CandidateTable([dataclasses.replace(c, ready=not c.ready) for c in candidates])
    for candidate in candidates:
        kept.update(candidate)
    assert place(request, kept, policy, random.Random(seed), **kw) == from_list
    return from_list


# --------------------------------------------------------------------------- filters

FILTER_CASES: list[tuple[str, Request, Candidate, str | None]] = [
    ("feasible", Request(cpu=1, memory_mib=512), node(), None),
    ("pinned-to-other", Request(pinned_id="n9"), node(), "not the pinned candidate"),
    ("pinned-to-this", Request(pinned_id="n1"), node(), None),
    ("not-ready", Request(), node(ready=False), "not ready"),
    ("draining", Request(), node(draining=True), "cordoned or draining"),
    (
        "runtime-docker-missing",
        Request(runtime="docker"),
        node(runtimes=frozenset({"native"})),
        "runtime docker unavailable",
    ),
    (
        "runtime-native-missing",
        Request(runtime="native"),
        node(runtimes=DOCKER),
        "runtime native unavailable",
    ),
    (
        "arch-one-required",
        Request(archs=frozenset({"amd64"})),
        node(),
        "architecture amd64 required",
    ),
    (
        "arch-several-allowed",
        Request(archs=frozenset({"armv7", "amd64"})),
        node(),
        "architecture amd64 or armv7 required",
    ),
    ("arch-allowed", Request(archs=frozenset({"arm64", "amd64"})), node(), None),
    ("label-missing", Request(labels={"site": "a"}), node(), "label site=a missing"),
    ("label-wrong-value", Request(labels={"zone": "yard"}), node(), "label zone=yard missing"),
    (
        "label-first-missing-key-sorted",
        Request(labels={"zone": "yard", "aisle": "3"}),
        node(),
        "label aisle=3 missing",
    ),
    ("label-present", Request(labels={"zone": "factory"}), node(), None),
    ("accelerator-missing", Request(accelerator="gpu"), node(), "accelerator gpu missing"),
    (
        "accelerator-present-all-used",
        Request(accelerator="gpu"),
        node(free_accelerators={"gpu": 0}),
        None,
    ),
    (
        "accelerator-present-overcommitted",
        Request(accelerator="gpu"),
        node(free_accelerators={"gpu": -1}),
        None,
    ),
    (
        "accelerator-count-overcommitted",
        Request(accelerators={"gpu": 1}),
        node(free_accelerators={"gpu": -1}),
        "insufficient accelerator gpu",
    ),
    ("too-hot", Request(max_temperature_c=70.0), node(temperature_c=71.0), "too hot"),
    ("at-temperature-limit", Request(max_temperature_c=70.0), node(temperature_c=70.0), None),
    ("temperature-unknown", Request(max_temperature_c=70.0), node(temperature_c=None), None),
    ("hot-without-limit", Request(), node(temperature_c=95.0), None),
    ("throttled", Request(), node(throttled=True), "throttled"),
    ("overloaded", Request(), node(overloaded=True), "overloaded"),
    ("overloaded-even-without-cpu-request", Request(cpu=0.0), node(overloaded=True), "overloaded"),
    ("insufficient-cpu", Request(cpu=2.5), node(), "insufficient cpu"),
    # measured use is not a reservation: a busy device still takes a request that fits
    ("busy-device-fits-by-reservations", Request(cpu=2.0), node(cpu_used=4.0), None),
    ("busy-device-over-reservations", Request(cpu=2.5), node(cpu_used=0.0), "insufficient cpu"),
    ("cpu-exact", Request(cpu=2.0), node(), None),
    ("cpu-float-drift", Request(cpu=0.1), node(free_cpu=0.3 - 0.1 - 0.1), None),
    ("insufficient-memory", Request(memory_mib=2049), node(), "insufficient memory"),
    ("memory-exact", Request(memory_mib=2048), node(), None),
    ("insufficient-disk", Request(disk_mib=10_001), node(), "insufficient disk"),
    (
        "accelerator-count-short",
        Request(accelerators={"gpu": 2}),
        node(free_accelerators={"gpu": 1}),
        "insufficient accelerator gpu",
    ),
    (
        "accelerator-count-kind-absent",
        Request(accelerators={"tpu": 1}),
        node(),
        "insufficient accelerator tpu",
    ),
    ("accelerator-count-zero-asked", Request(accelerators={"tpu": 0}), node(), None),
    (
        "accelerator-count-first-kind-sorted",
        Request(accelerators={"tpu": 1, "gpu": 1}),
        node(free_accelerators={"gpu": 0, "tpu": 0}),
        "insufficient accelerator gpu",
    ),
    # order: the first failing filter is the reason
    ("order-not-ready-before-memory", Request(memory_mib=99_999), node(ready=False), "not ready"),
    (
        "order-runtime-before-cpu",
        Request(cpu=99, runtime="docker"),
        node(runtimes=frozenset({"native"})),
        "runtime docker unavailable",
    ),
    (
        "order-pinned-first",
        Request(pinned_id="x"),
        node(ready=False, draining=True),
        "not the pinned candidate",
    ),
    (
        "order-throttled-before-overloaded",
        Request(),
        node(throttled=True, overloaded=True),
        "throttled",
    ),
    (
        "order-overloaded-before-cpu",
        Request(cpu=99.0),
        node(overloaded=True),
        "overloaded",
    ),
    (
        "order-too-hot-before-throttled",
        Request(max_temperature_c=60.0),
        node(temperature_c=80.0, throttled=True),
        "too hot",
    ),
    # clusters: aggregate first, then "some single node takes it all"
    (
        "units-capacity-spread-thin",
        Request(memory_mib=4096),
        cluster("c1", tuple(unit(mem=1024) for _ in range(8))),
        "no single node fits",
    ),
    (
        "units-cpu-and-memory-on-different-nodes",
        Request(cpu=3.0, memory_mib=3000),
        cluster("c1", (unit(cpu=4.0, mem=512), unit(cpu=0.5, mem=4096))),
        "no single node fits",
    ),
    (
        "units-arch-and-runtime-on-different-nodes",
        Request(runtime="docker", archs=frozenset({"arm64"})),
        cluster(
            "c1",
            (
                unit(arch="arm64", runtimes=frozenset({"native"})),
                unit(arch="amd64", runtimes=DOCKER),
            ),
        ),
        "no single node fits",
    ),
    (
        "units-gpu-elsewhere",
        Request(memory_mib=2048, accelerators={"gpu": 1}),
        cluster("c1", (unit(mem=4096), unit(mem=512, accel={"gpu": 1}))),
        "no single node fits",
    ),
    (
        "units-one-fits",
        Request(cpu=3.0, memory_mib=3000),
        cluster("c1", (unit(cpu=4.0, mem=512), unit(cpu=3.0, mem=3000))),
        None,
    ),
    ("units-empty-cluster", Request(), cluster("c1", ()), "runtime docker unavailable"),
    (
        "units-empty-but-claims-runtime",
        Request(),
        cluster("c1", (), runtimes=BOTH, free_cpu=1.0, free_memory_mib=1, free_disk_mib=1),
        "no single node fits",
    ),
    (
        "units-aggregate-checked-first",
        Request(memory_mib=99_999),
        cluster("c1", (unit(),)),
        "insufficient memory",
    ),
]


@pytest.mark.parametrize(
    ("request_", "candidate", "reason"),
    [case[1:] for case in FILTER_CASES],
    ids=[case[0] for case in FILTER_CASES],
)
def test_filter(request_: Request, candidate: Candidate, reason: str | None) -> None:
    assert first_failure(request_, candidate) == reason
    decision = both_paths(request_, [candidate])
    if reason is None:
        assert decision.chosen == candidate
        assert decision.rejections == {}
    else:
        assert decision.chosen is None
        assert decision.rejections == {reason: 1}
        assert decision.rejected == {reason: [candidate.id]}


def test_filter_names_are_unique_and_ordered() -> None:
    names = [name for name, _ in FILTERS]
    assert len(names) == len(set(names))
    assert names[0] == "pinned" and names[-1] == "units"


# --------------------------------------------------------------------------- scorers

SCORER_CASES: list[tuple[str, Any, Request, Candidate, int, float]] = [
    (
        "least-empty-node",
        least_allocated,
        Request(),
        node(free_cpu=4.0, free_memory_mib=4096),
        0,
        100.0,
    ),
    ("least-half-loaded", least_allocated, Request(), node(), 0, 50.0),
    (
        "least-counts-the-request",
        least_allocated,
        Request(cpu=1.0, memory_mib=1024),
        node(),
        0,
        25.0,
    ),
    ("least-full-node", least_allocated, Request(), node(free_cpu=0.0, free_memory_mib=0), 0, 0.0),
    (
        "least-no-capacity-known",
        least_allocated,
        Request(),
        node(capacity_cpu=0.0, capacity_memory_mib=0),
        0,
        0.0,
    ),
    (
        "least-clamped-above",
        least_allocated,
        Request(),
        node(free_cpu=8.0, free_memory_mib=8192),
        0,
        100.0,
    ),
    # measured use counts in scoring (not in feasibility): capacity 4, 2 reserved
    ("least-measured-below-reservations", least_allocated, Request(), node(cpu_used=1.0), 0, 50.0),
    ("least-measured-above-reservations", least_allocated, Request(), node(cpu_used=3.0), 0, 37.5),
    ("least-measured-saturated", least_allocated, Request(), node(cpu_used=4.0), 0, 25.0),
    ("least-measured-unknown", least_allocated, Request(), node(cpu_used=None), 0, 50.0),
    ("most-measured-busy", most_allocated, Request(), node(cpu_used=3.0), 0, 62.5),
    ("most-half-loaded", most_allocated, Request(cpu=1.0, memory_mib=1024), node(), 0, 75.0),
    (
        "most-empty-node",
        most_allocated,
        Request(),
        node(free_cpu=4.0, free_memory_mib=4096),
        0,
        0.0,
    ),
    ("thermal-cool", thermal_headroom, Request(), node(temperature_c=40.0), 0, 100.0),
    ("thermal-cold", thermal_headroom, Request(), node(temperature_c=-5.0), 0, 100.0),
    ("thermal-middle", thermal_headroom, Request(), node(temperature_c=62.5), 0, 50.0),
    ("thermal-hot", thermal_headroom, Request(), node(temperature_c=85.0), 0, 0.0),
    ("thermal-very-hot", thermal_headroom, Request(), node(temperature_c=99.0), 0, 0.0),
    ("thermal-unknown-neutral", thermal_headroom, Request(), node(temperature_c=None), 0, 50.0),
    ("spread-no-replicas", job_spread, Request(), node(), 0, 100.0),
    ("spread-one-replica", job_spread, Request(), node(), 1, 50.0),
    ("spread-three-replicas", job_spread, Request(), node(), 3, 25.0),
]


@pytest.mark.parametrize(
    ("scorer", "request_", "candidate", "replicas", "expected"),
    [case[1:] for case in SCORER_CASES],
    ids=[case[0] for case in SCORER_CASES],
)
def test_scorer(
    scorer: Any, request_: Request, candidate: Candidate, replicas: int, expected: float
) -> None:
    # a one-scorer policy makes the total equal the scorer's value
    name = scorer.__name__
    policy = Policy(f"only-{name}", {name: 1.0})
    existing = {candidate.id: replicas}
    decision = place(request_, [candidate], policy, random.Random(0), existing=existing)
    (value,) = decision.parts[name]
    assert value == pytest.approx(expected)
    assert 0.0 <= value <= 100.0
    assert decision.scores[candidate.id] == value
    # the scorer scores every feasible row at once: the same value among other rows
    others = [dataclasses.replace(candidate, id=f"other{i}", temperature_c=30.0) for i in range(3)]
    crowd = place(request_, [*others, candidate], policy, random.Random(0), existing=existing)
    assert crowd.breakdown_of(candidate.id)[name] == value


# --------------------------------------------------------------------------- policies


def test_builtin_policies_by_name() -> None:
    assert get_policy("spread") is SPREAD
    assert get_policy("binpack") is BINPACK
    assert set(POLICIES) >= {"spread", "binpack"}


def test_unknown_policy_names_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match="unknown placement policy 'fastest'; valid: binpack, spread, thermal"
    ):
        get_policy("fastest")
    with pytest.raises(ValueError, match="valid: binpack"):
        place(Request(), [node()], "fastest", random.Random(0))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"nonsense": 1.0}, "unknown scorer"),
        ({"least_allocated": -1.0}, "must be >= 0"),
        ({"least_allocated": 0.0}, "at least one weight"),
        ({}, "at least one weight"),
    ],
    ids=["unknown-scorer", "negative-weight", "all-zero", "empty"],
)
def test_invalid_policy(weights: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Policy("bad", weights)


def test_request_policy_overrides_caller_policy() -> None:
    empty = node("empty", free_cpu=4.0, free_memory_mib=4096)
    busy = node("busy", free_cpu=1.0, free_memory_mib=1024)
    spread = both_paths(Request(cpu=0.5, memory_mib=256), [empty, busy], "spread")
    binpack = both_paths(
        Request(cpu=0.5, memory_mib=256, policy="binpack"), [empty, busy], "spread"
    )
    assert (spread.chosen, binpack.chosen) == (empty, busy)
    assert (spread.policy, binpack.policy) == ("spread", "binpack")


def test_measured_load_steers_spread_away_from_and_binpack_onto_a_busy_node() -> None:
    """Equal reservations: spread picks the node whose measured CPU is lower."""
    idle = node("idle", cpu_used=0.5)
    busy = node("busy", cpu_used=3.5)
    for order in ([idle, busy], [busy, idle]):
        assert both_paths(Request(cpu=1.0), order, "spread").chosen == idle
        assert both_paths(Request(cpu=1.0), order, "binpack").chosen == busy


def test_spread_prefers_cooler_among_equal_load() -> None:
    cool, hot = node("cool", temperature_c=45.0), node("hot", temperature_c=75.0)
    decision = both_paths(Request(cpu=0.5), [hot, cool], "spread")
    assert decision.chosen == cool
    assert (
        decision.breakdown["cool"]["thermal_headroom"]
        > decision.breakdown["hot"]["thermal_headroom"]
    )


def test_spread_spreads_replicas_binpack_stacks_them() -> None:
    nodes = [node(f"n{i}") for i in range(3)]
    request = Request(cpu=0.25, memory_mib=128)
    spread = place_many(request, nodes, 3, "spread", random.Random(1))
    binpack = place_many(request, nodes, 3, "binpack", random.Random(1))
    assert sorted(d.chosen.id for d in spread if d.chosen) == ["n0", "n1", "n2"]
    assert len({d.chosen.id for d in binpack if d.chosen}) == 1


def test_existing_replicas_push_spread_elsewhere() -> None:
    nodes = [node("a"), node("b")]
    decision = both_paths(Request(), nodes, "spread", existing={"a": 2})
    assert decision.chosen is not None and decision.chosen.id == "b"
    assert decision.breakdown_of("a")["job_spread"] == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="must be >= 0"):
        place(Request(), nodes, "spread", random.Random(0), existing={"a": -1})


# --------------------------------------------------------------------------- decisions


def test_explain_when_nothing_fits() -> None:
    candidates = [node(f"m{i}", free_memory_mib=100) for i in range(3)]
    candidates.append(node("d1", runtimes=frozenset({"native"})))
    decision = both_paths(Request(memory_mib=512), candidates)
    assert decision.chosen is None and decision.score is None
    assert decision.explain() == (
        "no candidate fits: 3 nodes: insufficient memory, 1 node: runtime docker unavailable"
    )


def test_explain_with_a_choice() -> None:
    candidates = [node(f"m{i}", free_memory_mib=100) for i in range(3)]
    candidates += [node("n7", name="edge-7", free_cpu=4.0, free_memory_mib=4096), node("n8")]
    decision = both_paths(Request(memory_mib=512), candidates)
    assert decision.chosen is not None and decision.chosen.id == "n7"
    assert decision.explain() == (
        f"chose edge-7 (score {decision.score:.1f}) among 2 feasible; 3 rejected: "
        "insufficient memory"
    )
    candidates.append(node("t1", throttled=True))
    text = both_paths(Request(memory_mib=512), candidates).explain()
    assert text.endswith("; 4 rejected: 3 insufficient memory, 1 throttled")


def test_explain_clusters_ties_and_empty() -> None:
    thin = [cluster(f"c{i}", (unit(mem=1024), unit(mem=1024))) for i in range(2)]
    assert both_paths(Request(memory_mib=2048), thin).explain() == (
        "no candidate fits: 2 clusters: no single node fits"
    )
    twins = [node("a"), node("b")]
    decision = both_paths(Request(), twins)
    assert decision.tied == 2 and "2-way tie" in decision.explain()
    empty = place(Request(), [], "spread", random.Random(0))
    assert empty.explain() == "no candidate fits: no nodes to choose from"
    assert empty.considered == 0 and empty.rejections == {}


def test_decision_scores_and_breakdown() -> None:
    nodes = [node("a", free_cpu=4.0, free_memory_mib=4096), node("b"), node("x", ready=False)]
    decision = both_paths(Request(cpu=1.0), nodes, "spread")
    assert set(decision.scores) == {"a", "b"}
    assert decision.feasible == 2 and decision.rejected_count == 1
    for cid, total in decision.scores.items():
        parts = decision.breakdown[cid]
        assert set(parts) == {"least_allocated", "job_spread", "thermal_headroom"}
        weighted = sum(SPREAD.weights[n] * v for n, v in parts.items())
        assert total == pytest.approx(weighted / SPREAD.weight_sum)
    with pytest.raises(KeyError):
        decision.breakdown_of("x")


def test_to_dict_round_trips_through_json() -> None:
    nodes = [node(f"n{i}", free_cpu=float(i)) for i in range(30)]
    decision = both_paths(Request(cpu=5.0), nodes, "binpack")
    full = decision.to_dict(limit=None)
    assert json.loads(json.dumps(full)) == full
    assert full["chosen"]["id"] == decision.chosen.id  # type: ignore[union-attr]
    assert full["feasible"] == 25 and full["considered"] == 30
    assert full["rejections"] == {"insufficient cpu": 5}
    assert len(full["scores"]) == 25 and full["truncated"] is False
    assert full["scores"][0]["score"] == decision.score
    assert full["explanation"] == decision.explain()
    short = decision.to_dict(limit=3)
    assert len(short["scores"]) == 3 and len(short["rejected"]["insufficient cpu"]) == 3
    assert short["truncated"] is True and short["rejections"] == {"insufficient cpu": 5}
    none = both_paths(Request(cpu=99.0), nodes).to_dict()
    assert none["chosen"] is None and json.loads(json.dumps(none)) == none


# --------------------------------------------------------------------------- replay


def test_same_seed_same_choice_and_order_does_not_matter() -> None:
    twins = [node(f"n{i}") for i in range(10)]
    picks = {
        place(Request(), twins, "spread", random.Random(s)).chosen.id  # type: ignore[union-attr]
        for s in range(40)
    }
    assert len(picks) > 1, "ties must be broken by the rng, not by position"
    for seed in range(10):
        forward = place(Request(), twins, "spread", random.Random(seed))
        backward = place(Request(), twins[::-1], "spread", random.Random(seed))
        assert forward.chosen == backward.chosen
        assert forward == place(Request(), twins, "spread", random.Random(seed))


def test_rng_untouched_when_nothing_fits() -> None:
    rng = random.Random(3)
    state = rng.getstate()
    place(Request(cpu=100.0), [node()], "spread", rng)
    assert rng.getstate() == state


def test_duplicate_ids_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        place(Request(), [node("a"), node("a")], "spread", random.Random(0))
    with pytest.raises(ValueError, match="unique"):
        CandidateTable([node("a"), node("a")])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cpu": -1.0},
        {"memory_mib": -1},
        {"disk_mib": -1},
        {"accelerators": {"gpu": -1}},
        {"archs": frozenset()},
        {"cpu": float("nan")},
        {"max_temperature_c": float("nan")},
    ],
    ids=["cpu", "memory", "disk", "accelerators", "empty-archs", "nan-cpu", "nan-temperature"],
)
def test_request_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Request(**kwargs)


def test_nan_is_refused_where_it_would_poison_scores() -> None:
    nan = float("nan")
    for overrides in (
        {"free_cpu": nan},
        {"capacity_cpu": nan},
        {"temperature_c": nan},
        {"cpu_used": nan},
    ):
        with pytest.raises(ValueError, match="NaN"):
            node(**overrides)
    with pytest.raises(ValueError, match="NaN"):
        unit(cpu=nan)
    with pytest.raises(ValueError, match="finite"):
        Policy("inf", {"least_allocated": float("inf")})


# --------------------------------------------------------------------------- reservations


def test_reserve_node() -> None:
    before = node(free_accelerators={"gpu": 2})
    after = reserve(before, Request(cpu=0.5, memory_mib=512, disk_mib=100, accelerators={"gpu": 1}))
    assert (after.free_cpu, after.free_memory_mib, after.free_disk_mib) == (1.5, 1536, 9900)
    assert after.free_accelerators == {"gpu": 1}
    assert before.free_memory_mib == 2048  # candidates are immutable
    with pytest.raises(ValueError, match="does not fit"):
        reserve(before, Request(memory_mib=4096))


def test_reserve_cluster_uses_best_fit_unit() -> None:
    units = (unit(mem=4096), unit(mem=1200), unit(mem=1024, runtimes=frozenset({"native"})))
    before = cluster("c1", units)
    after = reserve(before, Request(memory_mib=1000))
    assert after.units is not None
    assert [u.free_memory_mib for u in after.units] == [4096, 200, 1024]
    assert after.free_memory_mib == before.free_memory_mib - 1000
    with pytest.raises(ValueError, match="no single node fits"):
        reserve(before, Request(memory_mib=4097))


def test_place_many_never_overcommits_units() -> None:
    clusters = [cluster("c1", (unit(cpu=2.0, mem=2048), unit(cpu=2.0, mem=1024)))]
    decisions = place_many(
        Request(cpu=1.0, memory_mib=1024), clusters, 5, "spread", random.Random(0)
    )
    assert [d.chosen is not None for d in decisions] == [True, True, True, False, False]
    assert decisions[3].explain() == "no candidate fits: 1 cluster: insufficient memory"
    table_decisions = place_many(
        Request(cpu=1.0, memory_mib=1024), CandidateTable(clusters), 5, "spread", random.Random(0)
    )
    assert decisions == table_decisions


def test_place_many_table_matches_list() -> None:
    nodes = [node(f"n{i}", free_cpu=1.0 + i % 3, temperature_c=40.0 + i) for i in range(12)]
    request = Request(cpu=0.75, memory_mib=300)
    for policy in ("spread", "binpack", "thermal"):
        from_list = place_many(request, nodes, 20, policy, random.Random(5))
        from_table = place_many(request, CandidateTable(nodes), 20, policy, random.Random(5))
        assert from_list == from_table
    assert place_many(request, nodes, 0, "spread", random.Random(0)) == []
    with pytest.raises(ValueError):
        place_many(request, nodes, -1, "spread", random.Random(0))


def test_table_replace_equals_rebuild() -> None:
    nodes = [node(f"n{i}") for i in range(5)] + [cluster("c", (unit(), unit(cpu=3.0)))]
    table = CandidateTable(nodes)
    changed = dataclasses.replace(
        nodes[2],
        labels={"zone": "yard", "new": "label"},
        runtimes=frozenset({"wasm"}),
        ready=False,
        free_accelerators={"npu": 1},
    )
    grown = dataclasses.replace(nodes[5], units=(unit(), unit(), unit()))
    shrunk_units = dataclasses.replace(nodes[5], units=(unit(cpu=0.1), unit(cpu=0.2)))
    for replacement in (changed, grown, shrunk_units):
        rebuilt = [replacement if c.id == replacement.id else c for c in nodes]
        for request in (
            Request(),
            Request(runtime="wasm", labels={"new": "label"}),
            Request(cpu=1.5),
            Request(accelerators={"npu": 1}),
        ):
            assert place(request, table.replace(replacement), "spread", random.Random(1)) == place(
                request, rebuilt, "spread", random.Random(1)
            )
    reserved = table.replace(reserve(nodes[5], Request(cpu=2.0)))
    assert reserved.candidates[5] == reserve(nodes[5], Request(cpu=2.0))
    assert table.candidates[5] == nodes[5]
