"""Plain data the placement pipeline works on: a request and the candidates it may land on.

These types are deliberately free of any other project package: the root and cluster
orchestrators convert their own models (cluster summaries, node status) into them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["CPU_EPSILON", "Candidate", "Request", "Unit"]

#: Tolerance on CPU comparisons, in cores. Reservations subtract floats repeatedly
#: (4.0 - 0.1 - 0.1 ...), and without a tolerance a job that fits exactly would be
#: refused because of rounding. One billionth of a core can never matter in practice.
CPU_EPSILON = 1e-9


def _check_non_negative(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not value >= 0:  # also rejects NaN
            raise ValueError(f"{owner}.{name} must be >= 0, got {value!r}")


def _check_not_nan(owner: str, **values: float | None) -> None:
    # NaN compares false with everything, so it would pass every filter and poison
    # every score; adapters must pass None for "unknown" instead.
    for name, value in values.items():
        if value is not None and math.isnan(value):
            raise ValueError(f"{owner}.{name} must not be NaN (use None for unknown)")


@dataclass(frozen=True, slots=True)
class Request:
    """What one replica needs and where it may run.

    Resources (`cpu`, `memory_mib`, `disk_mib`, `accelerators`) are consumed by a
    placement; the other fields are constraints that only select candidates.
    `accelerator` is a constraint ("the device must have a gpu"), while
    `accelerators` reserves a count per kind.
    """

    cpu: float = 0.0
    memory_mib: int = 0
    disk_mib: int = 0
    accelerators: Mapping[str, int] = field(default_factory=dict)
    runtime: str = "docker"
    labels: Mapping[str, str] = field(default_factory=dict)
    archs: frozenset[str] | None = None
    accelerator: str | None = None
    max_temperature_c: float | None = None
    pinned_id: str | None = None
    policy: str | None = None

    def __post_init__(self) -> None:
        _check_non_negative(
            "Request", cpu=self.cpu, memory_mib=self.memory_mib, disk_mib=self.disk_mib
        )
        for kind, count in self.accelerators.items():
            if count < 0:
                raise ValueError(f"Request.accelerators[{kind!r}] must be >= 0, got {count}")
        if self.archs is not None and not self.archs:
            raise ValueError("Request.archs must be None (any) or a non-empty set")
        _check_not_nan("Request", max_temperature_c=self.max_temperature_c)


@dataclass(frozen=True, slots=True)
class Unit:
    """Free capacity of one node inside a cluster candidate (a row of its summary).

    The root sees clusters only through such summaries; checking the request against
    each unit is what stops it from sending a 4 GB job to a cluster whose 8 free GB
    are spread over 8 nodes.
    """

    free_cpu: float
    free_memory_mib: int
    free_disk_mib: int
    arch: str
    runtimes: frozenset[str]
    free_accelerators: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_not_nan("Unit", free_cpu=self.free_cpu)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A node (units is None) or a cluster (units is its per-node summary).

    Free values are what feasibility is judged on: capacity minus what is reserved
    (and, for memory and disk, minus what the device reports in use; see the adapters).
    Capacity values are the totals used by the allocation scorers. `cpu_used` is the
    CPU the device measures in use (cores, work the scheduler did not place included;
    None = unknown): it never makes a request infeasible, but the allocation scorers
    count it (see `scoring_free_cpu`). `overloaded` says the device cannot keep up
    with the work it has (the adapter decides: e.g. it is shedding work); the
    `overloaded` filter rejects it. An accelerator kind that
    the candidate has but that is fully used should still appear in
    `free_accelerators` with a count of 0: presence answers the `accelerator`
    constraint, the count answers the `accelerators` reservation.
    """

    id: str
    name: str = ""
    free_cpu: float = 0.0
    free_memory_mib: int = 0
    free_disk_mib: int = 0
    capacity_cpu: float = 0.0
    capacity_memory_mib: int = 0
    capacity_disk_mib: int = 0
    free_accelerators: Mapping[str, int] = field(default_factory=dict)
    runtimes: frozenset[str] = frozenset()
    archs: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    temperature_c: float | None = None
    throttled: bool = False
    draining: bool = False
    ready: bool = True
    units: tuple[Unit, ...] | None = None
    cpu_used: float | None = None
    overloaded: bool = False

    def __post_init__(self) -> None:
        _check_not_nan(
            "Candidate",
            free_cpu=self.free_cpu,
            capacity_cpu=self.capacity_cpu,
            temperature_c=self.temperature_c,
            cpu_used=self.cpu_used,
        )

    @property
    def scoring_free_cpu(self) -> float:
        """Free CPU as the allocation scorers see it: ``free_cpu``, lowered to what the
        device measures as idle (``capacity_cpu - cpu_used``) when that is less.

        Feasibility counts reservations only (CPU is compressible: a busy device runs a
        new task slower, it does not refuse it), but among feasible candidates the
        one that is really less loaded should rank higher under spread.
        """
        used = self.cpu_used
        if used is None:
            return self.free_cpu
        return min(self.free_cpu, self.capacity_cpu - used)

    @property
    def display_name(self) -> str:
        """The name if one was given, else the id: what explanations print."""
        return self.name or self.id
