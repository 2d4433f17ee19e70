"""Placement throughput: decisions per second with full explanations.

Run: .venv/bin/python -m bench.placement [--seconds S]

Every timed decision computes the rejection reason of every candidate, the count and
ids per reason, the total and per-scorer scores of every feasible candidate, and its
explain() line. Two shapes: 1,000 node candidates (cluster scheduler) and 100 cluster
candidates with 20 per-node units each (root scheduler), with a realistic mix of
architectures, runtimes, labels, accelerators, temperatures and unhealthy candidates,
and four request shapes under two policies.

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence

from placement import Candidate, CandidateTable, Request, Unit, place, place_many

ZONES = ("factory", "warehouse", "office", "yard")


def _arch(rng: random.Random) -> str:
    return rng.choices(("arm64", "amd64", "armv7"), weights=(6, 3, 1))[0]


def _runtimes(rng: random.Random) -> frozenset[str]:
    return frozenset({"docker", "native"}) if rng.random() < 0.8 else frozenset({"native"})


def make_nodes(n: int, seed: int = 1) -> list[Candidate]:
    """n node candidates with a realistic mix of shapes, load and health."""
    rng = random.Random(seed)
    nodes = []
    for i in range(n):
        cap_cpu = float(rng.choice((2, 4, 4, 8)))
        cap_mem = rng.choice((1024, 2048, 4096, 4096, 8192))
        cap_disk = rng.choice((16_000, 32_000, 64_000))
        gpu = {"gpu": rng.choice((0, 1))} if rng.random() < 0.1 else {}
        nodes.append(
            Candidate(
                id=f"n{i:04d}",
                name=f"dev-{i:04d}",
                free_cpu=round(cap_cpu * rng.random(), 2),
                free_memory_mib=int(cap_mem * rng.random()),
                free_disk_mib=int(cap_disk * rng.random()),
                capacity_cpu=cap_cpu,
                capacity_memory_mib=cap_mem,
                capacity_disk_mib=cap_disk,
                free_accelerators=gpu,
                runtimes=_runtimes(rng),
                archs=frozenset({_arch(rng)}),
                labels={"zone": rng.choice(ZONES), "tier": rng.choice(("edge", "gateway"))},
                temperature_c=round(rng.uniform(35.0, 88.0), 1) if rng.random() < 0.95 else None,
                throttled=rng.random() < 0.04,
                draining=rng.random() < 0.02,
                ready=rng.random() >= 0.03,
            )
        )
    return nodes


def make_clusters(n: int, units_each: int = 20, seed: int = 2) -> list[Candidate]:
    """n cluster candidates, each summarised as `units_each` per-node units."""
    rng = random.Random(seed)
    clusters = []
    for i in range(n):
        units = []
        cap_cpu = cap_mem = cap_disk = 0.0
        for _ in range(units_each):
            c_cpu, c_mem, c_disk = (
                float(rng.choice((2, 4, 8))),
                rng.choice((1024, 4096, 8192)),
                32_000,
            )
            cap_cpu, cap_mem, cap_disk = cap_cpu + c_cpu, cap_mem + c_mem, cap_disk + c_disk
            units.append(
                Unit(
                    free_cpu=round(c_cpu * rng.random(), 2),
                    free_memory_mib=int(c_mem * rng.random() ** 2),
                    free_disk_mib=int(c_disk * rng.random()),
                    arch=_arch(rng),
                    runtimes=_runtimes(rng),
                    free_accelerators={"gpu": rng.choice((0, 1))} if rng.random() < 0.1 else {},
                )
            )
        accel: dict[str, int] = {}
        for u in units:
            for kind, count in u.free_accelerators.items():
                accel[kind] = accel.get(kind, 0) + count
        clusters.append(
            Candidate(
                id=f"c{i:03d}",
                name=f"site-{i:03d}",
                free_cpu=sum(u.free_cpu for u in units),
                free_memory_mib=sum(u.free_memory_mib for u in units),
                free_disk_mib=sum(u.free_disk_mib for u in units),
                capacity_cpu=cap_cpu,
                capacity_memory_mib=int(cap_mem),
                capacity_disk_mib=int(cap_disk),
                free_accelerators=accel,
                runtimes=frozenset().union(*(u.runtimes for u in units)),
                archs=frozenset(u.arch for u in units),
                labels={"zone": rng.choice(ZONES), "country": rng.choice(("de", "fr", "it"))},
                temperature_c=round(rng.uniform(30.0, 80.0), 1),
                throttled=rng.random() < 0.03,
                draining=rng.random() < 0.02,
                ready=rng.random() >= 0.05,
                units=tuple(units),
            )
        )
    return clusters


REQUESTS = (
    Request(cpu=0.5, memory_mib=512, disk_mib=500, runtime="docker"),
    Request(
        cpu=1.0,
        memory_mib=1024,
        runtime="native",
        archs=frozenset({"arm64"}),
        max_temperature_c=75.0,
    ),
    Request(cpu=2.0, memory_mib=2048, disk_mib=2000, labels={"zone": "factory"}),
    Request(cpu=1.0, memory_mib=1024, accelerator="gpu", accelerators={"gpu": 1}),
)
POLICIES = ("spread", "binpack")
#: Worst case for scoring: a tiny request that nearly every healthy candidate takes.
LIGHT = Request(cpu=0.0, memory_mib=0, runtime="native")


def measure(fn: Callable[[int], object], seconds: float) -> tuple[float, int]:
    """Call fn(i) repeatedly for about `seconds`; return (calls per second, calls)."""
    fn(0)  # warm-up
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(20):
            fn(calls)
            calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start), calls


def decide(
    candidates: Sequence[Candidate] | CandidateTable,
    rng: random.Random,
    sink: list[int],
    requests: Sequence[Request] = REQUESTS,
) -> Callable[[int], object]:
    """A decision function cycling through the request shapes and policies."""

    def run(i: int) -> object:
        decision = place(requests[i % len(requests)], candidates, POLICIES[i % 2], rng)
        sink.append(len(decision.explain()))
        return decision

    return run


def mix(candidates: Sequence[Candidate]) -> str:
    """Share of candidates each request shape rejects, for the report."""
    table = CandidateTable(candidates)
    parts = []
    for number, request in enumerate(REQUESTS, 1):
        d = place(request, table, "spread", random.Random(0))
        parts.append(f"req{number}: {d.feasible}/{d.considered} feasible")
    return "; ".join(parts)


def main() -> None:
    """Run every measurement and print the figures, JSON last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()
    seconds: float = args.seconds
    sink: list[int] = []
    results: dict[str, float] = {}

    for label, key, candidates in (
        ("1,000 nodes", "1000_nodes", make_nodes(1000)),
        ("100 clusters x 20 units", "100_clusters", make_clusters(100, 20)),
    ):
        print(f"== {label}: {mix(candidates)}")

        def build(_i: int, c: list[Candidate] = candidates) -> object:
            return CandidateTable(c)

        build_rate, _ = measure(build, seconds / 3)
        table = CandidateTable(candidates)
        rate, calls = measure(decide(table, random.Random(7), sink), seconds)
        list_rate, _ = measure(decide(candidates, random.Random(7), sink), seconds / 2)

        def with_dict(i: int, t: CandidateTable = table) -> object:
            d = place(REQUESTS[i % len(REQUESTS)], t, POLICIES[i % 2], random.Random(i))
            return json.dumps(d.to_dict(limit=None))

        dict_rate, _ = measure(with_dict, seconds / 2)

        def burst(i: int, t: CandidateTable = table) -> object:
            return place_many(REQUESTS[0], t, 10, "spread", random.Random(i))

        burst_rate, _ = measure(burst, seconds / 2)

        light_rate, _ = measure(decide(table, random.Random(9), sink, (LIGHT,)), seconds / 2)
        light_feasible = place(LIGHT, table, "spread", random.Random(0)).feasible
        print(f"  table path  : {rate:9.0f} decisions/s  ({calls} decisions, explain() each)")
        print(f"  list path   : {list_rate:9.0f} decisions/s  (reference per-candidate loop)")
        print(
            f"  light req   : {light_rate:9.0f} decisions/s  (table path, {light_feasible}"
            f"/{len(table)} feasible: worst case for scoring)"
        )
        print(f"  + to_dict   : {dict_rate:9.0f} decisions/s  (table path, full to_dict + json)")
        print(f"  table build : {1000.0 / build_rate:9.2f} ms per CandidateTable")
        print(f"  place_many  : {burst_rate * 10:9.0f} replicas/s  (bursts of 10, reserving)")
        results[f"decisions_per_s_{key}"] = round(rate, 1)
        results[f"decisions_per_s_{key}_list"] = round(list_rate, 1)
        results[f"decisions_per_s_{key}_light"] = round(light_rate, 1)
        results[f"decisions_per_s_{key}_to_dict"] = round(dict_rate, 1)
        results[f"table_build_ms_{key}"] = round(1000.0 / build_rate, 3)
        results[f"replicas_per_s_{key}_place_many"] = round(burst_rate * 10, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
