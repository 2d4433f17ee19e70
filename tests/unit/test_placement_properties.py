"""Property tests (hypothesis) for the placement invariants.

There is one implementation of the filters and scorers, over a `CandidateTable`. The
properties check it against the rules (every rejection is the candidate's first
failing filter, the choice is feasible and within free capacity, replay by seed),
and check that a table kept and updated in place decides as a fresh one.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from placement import (
    CPU_EPSILON,
    POLICIES,
    Candidate,
    CandidateTable,
    Decision,
    Request,
    Unit,
    first_failure,
    place,
    place_many,
    reserve,
    unit_fits,
)

T = TypeVar("T")

ARCHS = ("amd64", "arm64", "armv7")
RUNTIMES = ("docker", "native")
KINDS = ("gpu", "tpu")
LABEL_KEYS = ("zone", "tier")
LABEL_VALUES = ("a", "b")

# A coarse grid makes exact ties (and exact fits) common; free floats catch the rest.
cpus = st.one_of(
    st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0]), st.floats(0.0, 8.0, allow_nan=False)
)
memories = st.one_of(st.sampled_from([0, 256, 512, 1024, 2048]), st.integers(0, 8192))
disks = st.integers(0, 20_000)
# -1 stands for an over-committed report: the kind is present, nothing is free.
accel_counts = st.dictionaries(st.sampled_from(KINDS), st.integers(-1, 3), max_size=2)
runtime_sets = st.tuples(
    st.sampled_from(range(4)), st.frozensets(st.sampled_from(RUNTIMES), max_size=2)
).map(lambda pair: pair[1] if pair[0] == 0 else frozenset(RUNTIMES))
labels = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=2)
temperatures = st.one_of(st.none(), st.floats(20.0, 100.0, allow_nan=False))
#: True one time in eight: unhealthy candidates are common enough to matter, not dominant.
rarely = st.sampled_from([False] * 7 + [True])


def sometimes(strategy: st.SearchStrategy[T], odds: int = 4) -> st.SearchStrategy[T | None]:
    """A value from `strategy` about one time in `odds`, else None (no constraint)."""
    return st.tuples(st.sampled_from(range(odds)), strategy).map(
        lambda pair: pair[1] if pair[0] == 0 else None
    )


units = st.builds(
    Unit,
    free_cpu=cpus,
    free_memory_mib=memories,
    free_disk_mib=disks,
    arch=st.sampled_from(ARCHS),
    runtimes=runtime_sets,
    free_accelerators=accel_counts,
)


@st.composite
def candidates(draw: st.DrawFn) -> list[Candidate]:
    """0-10 nodes and clusters with unique ids; cluster aggregates are sums of units."""
    out = []
    for i in range(draw(st.integers(0, 10))):
        common: dict[str, Any] = {
            "id": f"c{i}",
            "name": draw(st.sampled_from(["", f"dev-{i}"])),
            "labels": draw(labels),
            "temperature_c": draw(temperatures),
            "throttled": draw(rarely),
            "overloaded": draw(rarely),
            "draining": draw(rarely),
            "ready": not draw(rarely),
        }
        if draw(st.booleans()):
            free_cpu, free_mem = draw(cpus), draw(memories)
            # measured use: unknown, or anywhere from idle to beyond the reservations
            common["cpu_used"] = draw(st.one_of(st.none(), cpus))
            candidate = Candidate(
                free_cpu=free_cpu,
                free_memory_mib=free_mem,
                free_disk_mib=draw(disks),
                capacity_cpu=free_cpu + draw(cpus),
                capacity_memory_mib=free_mem + draw(memories),
                capacity_disk_mib=20_000,
                free_accelerators=draw(accel_counts),
                runtimes=draw(runtime_sets),
                archs=frozenset({draw(st.sampled_from(ARCHS))}),
                **common,
            )
        else:
            parts = tuple(
                draw(st.lists(units, min_size=draw(st.sampled_from([0, 1, 1, 2])), max_size=5))
            )
            accel: Counter[str] = Counter()
            for u in parts:
                accel.update(u.free_accelerators)
            candidate = Candidate(
                free_cpu=sum(u.free_cpu for u in parts),
                free_memory_mib=sum(u.free_memory_mib for u in parts),
                free_disk_mib=sum(u.free_disk_mib for u in parts),
                capacity_cpu=8.0 * len(parts),
                capacity_memory_mib=8192 * len(parts),
                capacity_disk_mib=20_000 * len(parts),
                free_accelerators=dict(accel),
                runtimes=frozenset().union(*(u.runtimes for u in parts)),
                archs=frozenset(u.arch for u in parts),
                units=parts,
                **common,
            )
        out.append(candidate)
    return out


requests = st.builds(
    Request,
    cpu=st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]), st.floats(0.0, 4.0)),
    memory_mib=st.one_of(st.sampled_from([0, 256, 512, 1024]), st.integers(0, 4096)),
    disk_mib=st.integers(0, 10_000),
    accelerators=st.one_of(
        st.just({}), st.dictionaries(st.sampled_from(KINDS), st.integers(0, 2), max_size=1)
    ),
    runtime=st.sampled_from(RUNTIMES),
    labels=st.one_of(
        st.just({}),
        st.just({}),
        st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=1),
    ),
    archs=sometimes(st.frozensets(st.sampled_from(ARCHS), min_size=1)),
    accelerator=sometimes(st.sampled_from(KINDS)),
    max_temperature_c=sometimes(st.floats(30.0, 90.0)),
    pinned_id=sometimes(st.sampled_from([f"c{i}" for i in range(4)]), odds=10),
    policy=sometimes(st.sampled_from(sorted(POLICIES))),
)
policies = st.sampled_from(sorted(POLICIES))
seeds = st.integers(0, 2**32 - 1)


def fits_resources(request: Request, c: Candidate | Unit) -> bool:
    free = c.free_accelerators
    return (
        c.free_cpu + CPU_EPSILON >= request.cpu
        and c.free_memory_mib >= request.memory_mib
        and c.free_disk_mib >= request.disk_mib
        and all(n == 0 or free.get(k, -1) >= n for k, n in request.accelerators.items())
    )


def both(request: Request, cands: list[Candidate], policy: str, seed: int) -> Decision:
    """Place from the list, and through a prebuilt table: the same pipeline, equal."""
    from_list = place(request, cands, policy, random.Random(seed))
    from_table = place(request, CandidateTable(cands), policy, random.Random(seed))
    assert from_list == from_table
    return from_list


@settings(max_examples=300)
@given(requests, candidates(), policies, seeds)
def test_choice_is_feasible_and_within_free_capacity(
    request: Request, cands: list[Candidate], policy: str, seed: int
) -> None:
    decision = both(request, cands, policy, seed)
    by_id = {c.id: c for c in cands}
    assert decision.feasible + sum(decision.rejections.values()) == len(cands)
    for reason, ids in decision.rejected.items():
        assert len(ids) == decision.rejections[reason]
        for cid in ids:
            assert first_failure(request, by_id[cid]) == reason
    for cid, total in decision.scores.items():
        assert first_failure(request, by_id[cid]) is None
        assert 0.0 <= total <= 100.0
    chosen = decision.chosen
    if chosen is None:
        assert decision.feasible == 0
        return
    assert first_failure(request, chosen) is None
    assert fits_resources(request, chosen)
    if chosen.units is not None:
        assert any(fits_resources(request, u) and unit_fits(request, u) for u in chosen.units)
    assert decision.score == max(decision.scores.values())


@given(requests, candidates(), policies, seeds, st.randoms(use_true_random=False))
def test_same_seed_same_decision_whatever_the_order(
    request: Request, cands: list[Candidate], policy: str, seed: int, shuffler: random.Random
) -> None:
    first = both(request, cands, policy, seed)
    assert first == both(request, cands, policy, seed)
    shuffled = list(cands)
    shuffler.shuffle(shuffled)
    other = both(request, shuffled, policy, seed)
    assert other.chosen == first.chosen
    assert other.scores == first.scores
    assert other.rejections == first.rejections
    assert {r: set(ids) for r, ids in other.rejected.items()} == {
        r: set(ids) for r, ids in first.rejected.items()
    }


@settings(max_examples=200)
@given(requests, candidates(), policies, seeds, st.integers(0, 8))
def test_place_many_never_overcommits(
    request: Request, cands: list[Candidate], policy: str, seed: int, count: int
) -> None:
    decisions = place_many(request, cands, count, policy, random.Random(seed))
    assert decisions == place_many(
        request, CandidateTable(cands), count, policy, random.Random(seed)
    )
    assert len(decisions) == count
    state = {c.id: c for c in cands}
    placed: Counter[str] = Counter()
    for decision in decisions:
        chosen = decision.chosen
        if chosen is None:
            continue
        # each decision saw the candidate with every earlier replica already reserved
        assert chosen == state[chosen.id]
        state[chosen.id] = reserve(chosen, request)
        placed[chosen.id] += 1
    for original in cands:
        n = placed[original.id]
        final = state[original.id]
        assert n * request.cpu <= original.free_cpu + n * CPU_EPSILON
        assert n * request.memory_mib <= original.free_memory_mib
        assert n * request.disk_mib <= original.free_disk_mib
        for kind, want in request.accelerators.items():
            assert n * want <= max(original.free_accelerators.get(kind, 0), 0)
        if final.units is not None and original.units is not None:
            for before, after in zip(original.units, final.units, strict=True):
                assert after.free_cpu >= 0.0
                assert after.free_memory_mib >= 0 and after.free_disk_mib >= 0
                assert all(
                    v >= min(before.free_accelerators[k], 0)
                    for k, v in after.free_accelerators.items()
                )
                assert before.free_memory_mib - after.free_memory_mib >= 0
            used = sum(u.free_memory_mib for u in original.units) - sum(
                u.free_memory_mib for u in final.units
            )
            assert used == n * request.memory_mib


@given(requests, candidates(), policies, seeds)
def test_request_nobody_can_take(
    request: Request, cands: list[Candidate], policy: str, seed: int
) -> None:
    impossible = dataclasses.replace(request, memory_mib=10**9)
    rng = random.Random(seed)
    state = rng.getstate()
    decision = place(impossible, cands, policy, rng)
    assert rng.getstate() == state
    assert decision == place(impossible, CandidateTable(cands), policy, random.Random(seed))
    assert decision.chosen is None and decision.scores == {}
    assert sum(decision.rejections.values()) == len(cands)
    assert sum(len(ids) for ids in decision.rejected.values()) == len(cands)
    assert decision.explain().startswith("no candidate fits: ")


@given(candidates(), candidates(), requests, seeds)
def test_table_replace_equals_rebuild(
    cands: list[Candidate], others: list[Candidate], request: Request, seed: int
) -> None:
    table = CandidateTable(cands)
    current = list(cands)
    for i, other in enumerate(others[: len(cands)]):
        replacement = dataclasses.replace(other, id=current[i].id)
        table = table.replace(replacement)
        current[i] = replacement
        assert place(request, table, "spread", random.Random(seed)) == place(
            request, current, "spread", random.Random(seed)
        )


@given(
    requests, candidates(), policies, seeds, st.integers(2, 6), st.randoms(use_true_random=False)
)
def test_ties_broken_by_seed_not_by_position(
    request: Request,
    cands: list[Candidate],
    policy: str,
    seed: int,
    copies: int,
    shuffler: random.Random,
) -> None:
    if not cands:
        return
    clones = [dataclasses.replace(cands[0], id=f"clone{i}") for i in range(copies)]
    pool = clones + cands[1:]
    first = both(request, pool, policy, seed)
    shuffler.shuffle(pool)
    again = both(request, pool, policy, seed)
    assert again.chosen == first.chosen and again.tied == first.tied
    if first.chosen is not None and first.chosen.id.startswith("clone"):
        assert first.tied >= copies


@given(requests, candidates(), st.one_of(st.none(), cpus))
def test_measured_cpu_use_never_changes_feasibility(
    request: Request, cands: list[Candidate], used: float | None
) -> None:
    """Feasibility counts reservations; measured use only moves scores."""
    for candidate in cands:
        loaded = dataclasses.replace(candidate, cpu_used=used)
        assert first_failure(request, loaded) == first_failure(request, candidate)


@given(requests, candidates(), policies, seeds)
def test_overloaded_candidates_are_never_chosen(
    request: Request, cands: list[Candidate], policy: str, seed: int
) -> None:
    decision = both(request, cands, policy, seed)
    assert decision.chosen is None or not decision.chosen.overloaded
    for candidate in cands:
        if candidate.overloaded and candidate.id in decision.scores:
            raise AssertionError(f"{candidate.id} is overloaded but was scored")
