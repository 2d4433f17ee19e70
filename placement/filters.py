"""Feasibility filters: small named checks over a `CandidateTable`.

Each filter looks at every row at once and returns the checks it makes, as (reason,
mask of the rows that fail) pairs in order (most filters make one check; `labels` and
`accelerators` make one per required key, in sorted order; a filter the request does
not use makes none). Filters run in the order of `FILTERS`; a candidate's rejection
reason is the first check that fails (as in the Kubernetes scheduler framework).
Reason strings are part of the contract: operators read them, tests and dashboards
match on them, so keep them stable.

This is the only implementation of the checks: `place` runs them on every decision,
`first_failure` on a one-row table, `reserve` asks them whether a request fits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from placement.model import Candidate, Request, Unit
from placement.table import BoolArray, CandidateTable, Units

__all__ = [
    "FILTERS",
    "INSUFFICIENT_CPU",
    "INSUFFICIENT_DISK",
    "INSUFFICIENT_MEMORY",
    "NOT_DRAINING",
    "NOT_PINNED",
    "NOT_READY",
    "NO_SINGLE_NODE",
    "OVERLOADED",
    "RESOURCE_FILTERS",
    "THROTTLED",
    "TOO_HOT",
    "Check",
    "FilterFn",
    "accelerator_count_reason",
    "accelerator_missing_reason",
    "architecture_reason",
    "check_accelerator",
    "check_accelerator_counts",
    "check_architecture",
    "check_cpu",
    "check_disk",
    "check_draining",
    "check_labels",
    "check_memory",
    "check_overloaded",
    "check_pinned",
    "check_ready",
    "check_runtime",
    "check_temperature",
    "check_throttled",
    "check_units",
    "checks",
    "first_failure",
    "fitting_units",
    "label_reason",
    "no_single_unit",
    "runtime_reason",
    "unit_fits",
    "units_fit",
]

#: One check: the reason, and True for every row that fails it.
Check = tuple[str, BoolArray]
FilterFn = Callable[[Request, CandidateTable], Sequence[Check]]

NOT_PINNED = "not the pinned candidate"
NOT_READY = "not ready"
NOT_DRAINING = "cordoned or draining"
TOO_HOT = "too hot"
THROTTLED = "throttled"
OVERLOADED = "overloaded"
INSUFFICIENT_CPU = "insufficient cpu"
INSUFFICIENT_MEMORY = "insufficient memory"
INSUFFICIENT_DISK = "insufficient disk"
NO_SINGLE_NODE = "no single node fits"


def runtime_reason(runtime: str) -> str:
    """Reason for a candidate that cannot run `runtime`."""
    return f"runtime {runtime} unavailable"


def architecture_reason(archs: Iterable[str]) -> str:
    """Reason for a candidate with none of the allowed architectures."""
    return f"architecture {' or '.join(sorted(archs))} required"


def label_reason(key: str, value: str) -> str:
    """Reason for a candidate lacking the required label key=value."""
    return f"label {key}={value} missing"


def accelerator_missing_reason(kind: str) -> str:
    """Reason for a candidate without any accelerator of the required kind."""
    return f"accelerator {kind} missing"


def accelerator_count_reason(kind: str) -> str:
    """Reason for a candidate with too few free accelerators of `kind`."""
    return f"insufficient accelerator {kind}"


def _every(table: CandidateTable) -> BoolArray:
    return np.ones(len(table), dtype=np.bool_)


def check_pinned(request: Request, table: CandidateTable) -> Sequence[Check]:
    """A request pinned to one candidate id rejects every other candidate."""
    if request.pinned_id is None:
        return ()
    fail = _every(table)
    row = table.index.get(request.pinned_id)
    if row is not None:
        fail[row] = False
    return ((NOT_PINNED, fail),)


def check_ready(request: Request, table: CandidateTable) -> Sequence[Check]:
    """Candidates that are not ready (silent, offline, unreachable) take no work."""
    return ((NOT_READY, table.unready),)


def check_draining(request: Request, table: CandidateTable) -> Sequence[Check]:
    """Cordoned or draining candidates (an operator said so) take no new work."""
    return ((NOT_DRAINING, table.draining),)


def check_runtime(request: Request, table: CandidateTable) -> Sequence[Check]:
    """The candidate must offer the request's runtime (docker or native)."""
    offered = table.runtime.get(request.runtime)
    return ((runtime_reason(request.runtime), ~offered if offered is not None else _every(table)),)


def check_architecture(request: Request, table: CandidateTable) -> Sequence[Check]:
    """When the request restricts architectures, the candidate must have one of them."""
    if request.archs is None:
        return ()
    allowed = np.zeros(len(table), dtype=np.bool_)
    for arch in request.archs:
        column = table.arch.get(arch)
        if column is not None:
            allowed |= column
    return ((architecture_reason(request.archs), ~allowed),)


def check_labels(request: Request, table: CandidateTable) -> Sequence[Check]:
    """Every required label must be present with the same value (first missing key wins)."""
    n = len(table)
    return tuple(
        (label_reason(key, request.labels[key]), ~table.labels.has(key, request.labels[key], n))
        for key in sorted(request.labels)
    )


def check_accelerator(request: Request, table: CandidateTable) -> Sequence[Check]:
    """A required accelerator kind must exist on the candidate (free count may be 0)."""
    kind = request.accelerator
    if kind is None:
        return ()
    present = table.accel.get(kind)
    return (
        (accelerator_missing_reason(kind), present < 0 if present is not None else _every(table)),
    )


def check_temperature(request: Request, table: CandidateTable) -> Sequence[Check]:
    """Reject a candidate hotter than the request allows; unknown temperature passes."""
    limit = request.max_temperature_c
    if limit is None:
        return ()
    return ((TOO_HOT, table.temperature > limit),)  # NaN (unknown) compares False


def check_throttled(request: Request, table: CandidateTable) -> Sequence[Check]:
    """A throttled device (thermal or power) is already slowed down: add nothing."""
    return ((THROTTLED, table.throttled),)


def check_overloaded(request: Request, table: CandidateTable) -> Sequence[Check]:
    """A device that cannot keep up with the work it has (the adapter's verdict: its
    node engine is shedding work, or its measured CPU is over the configured limit)
    takes nothing more, whatever the request asks."""
    return ((OVERLOADED, table.overloaded),)


def check_cpu(request: Request, table: CandidateTable) -> Sequence[Check]:
    """Free CPU (cores, aggregate for a cluster) must cover the request.

    Free CPU is capacity minus reservations: measured use does not make a request
    infeasible (it acts through scoring and the `overloaded` filter). A tolerance of
    `CPU_EPSILON` absorbs float drift from repeated reservations.
    """
    return ((INSUFFICIENT_CPU, table.free_cpu_eps < request.cpu),)


def check_memory(request: Request, table: CandidateTable) -> Sequence[Check]:
    """Free memory (MiB, aggregate for a cluster) must cover the request."""
    return ((INSUFFICIENT_MEMORY, table.free_memory < request.memory_mib),)


def check_disk(request: Request, table: CandidateTable) -> Sequence[Check]:
    """Free disk (MiB, aggregate for a cluster) must cover the request."""
    return ((INSUFFICIENT_DISK, table.free_disk < request.disk_mib),)


def check_accelerator_counts(request: Request, table: CandidateTable) -> Sequence[Check]:
    """Free accelerators must cover each requested count (first short kind wins)."""
    out = []
    for kind in sorted(request.accelerators):
        count = request.accelerators[kind]
        if count > 0:
            free = table.accel.get(kind)
            out.append(
                (
                    accelerator_count_reason(kind),
                    free < count if free is not None else _every(table),
                )
            )
    return out


def units_fit(request: Request, units: Units) -> BoolArray:
    """Per unit: True if that one node takes the whole request (resources, runtime,
    architecture and accelerators on the same node)."""
    m = len(units)
    ok: BoolArray = (
        (units.cpu_eps >= request.cpu)
        & (units.memory >= request.memory_mib)
        & (units.disk >= request.disk_mib)
    )
    runtime = units.runtime.get(request.runtime)
    ok &= runtime if runtime is not None else np.zeros(m, dtype=np.bool_)
    if request.archs is not None:
        allowed = np.zeros(m, dtype=np.bool_)
        for arch in request.archs:
            column = units.arch.get(arch)
            if column is not None:
                allowed |= column
        ok &= allowed
    if request.accelerator is not None:
        present = units.accel.get(request.accelerator)
        ok &= present >= 0 if present is not None else np.zeros(m, dtype=np.bool_)
    for kind, count in request.accelerators.items():
        if count > 0:
            free = units.accel.get(kind)
            ok &= free >= count if free is not None else np.zeros(m, dtype=np.bool_)
    return ok


def no_single_unit(table: CandidateTable, fit: BoolArray) -> BoolArray:
    """Rows with units none of which fits (`fit`: `units_fit` over the table's units)."""
    fitting = np.bincount(table.units.owner[fit], minlength=len(table)) > 0
    result: BoolArray = table.has_units & ~fitting
    return result


def check_units(request: Request, table: CandidateTable) -> Sequence[Check]:
    """For a cluster with a per-node summary, at least one node must take it all.

    Aggregate checks ran before this one; this catches capacity that is there in
    total but spread over nodes, or spread across nodes of the wrong kind. A node
    candidate (no units) always passes.
    """
    if not table.has_units.any():
        return ()
    return ((NO_SINGLE_NODE, no_single_unit(table, units_fit(request, table.units))),)


#: The pipeline, in order. The name is the filter's stable identifier (docs, metrics).
FILTERS: tuple[tuple[str, FilterFn], ...] = (
    ("pinned", check_pinned),
    ("ready", check_ready),
    ("draining", check_draining),
    ("runtime", check_runtime),
    ("architecture", check_architecture),
    ("labels", check_labels),
    ("accelerator", check_accelerator),
    ("temperature", check_temperature),
    ("throttled", check_throttled),
    ("overloaded", check_overloaded),
    ("cpu", check_cpu),
    ("memory", check_memory),
    ("disk", check_disk),
    ("accelerators", check_accelerator_counts),
    ("units", check_units),
)

#: The filters about free resources: what `reserve` requires to pass.
RESOURCE_FILTERS = frozenset({"cpu", "memory", "disk", "accelerators", "units"})


def checks(
    request: Request, table: CandidateTable, only: frozenset[str] | None = None
) -> list[Check]:
    """Every check of the pipeline (or of the filters named in `only`), in order."""
    out: list[Check] = []
    for name, check in FILTERS:
        if only is None or name in only:
            out.extend(check(request, table))
    return out


def first_failure(
    request: Request, candidate: Candidate, only: frozenset[str] | None = None
) -> str | None:
    """Run the pipeline on one candidate: None if feasible, else the first reason."""
    for reason, fails in checks(request, CandidateTable([candidate]), only):
        if fails[0]:
            return reason
    return None


def fitting_units(
    request: Request, table: CandidateTable, row: int = 0, fit: BoolArray | None = None
) -> list[int]:
    """Positions, among the units of row `row`, of those that take the whole request
    (`fit`: `units_fit` over the table's units, when the caller has it already)."""
    candidate = table.candidate(row)
    if not candidate.units:
        return []
    if fit is None:
        fit = units_fit(request, table.units)
    start = table.units.start[row]
    return [int(j) for j in np.flatnonzero(fit[start : start + len(candidate.units)])]


def unit_fits(request: Request, unit: Unit) -> bool:
    """True if this one node of a cluster summary can take the whole request."""
    return bool(fitting_units(request, CandidateTable([Candidate(id="unit", units=(unit,))])))
