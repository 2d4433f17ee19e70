"""Feasibility filters: small named checks, each returning None (pass) or a reason.

Filters run in the order of `FILTERS`; a candidate's rejection reason is the first
one that fails (as in the Kubernetes scheduler framework). Reason strings are part of
the contract: operators read them, tests and dashboards match on them, so keep them
stable. `placement.table` implements the same checks over columns; both must agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from placement.model import CPU_EPSILON, Candidate, Request, Unit

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
    "THROTTLED",
    "TOO_HOT",
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
    "first_failure",
    "label_reason",
    "runtime_reason",
    "unit_fits",
]

FilterFn = Callable[[Request, Candidate], str | None]

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


def check_pinned(request: Request, candidate: Candidate) -> str | None:
    """A request pinned to one candidate id rejects every other candidate."""
    if request.pinned_id is not None and candidate.id != request.pinned_id:
        return NOT_PINNED
    return None


def check_ready(request: Request, candidate: Candidate) -> str | None:
    """Candidates that are not ready (silent, offline, unreachable) take no work."""
    return None if candidate.ready else NOT_READY


def check_draining(request: Request, candidate: Candidate) -> str | None:
    """Cordoned or draining candidates (an operator said so) take no new work."""
    return NOT_DRAINING if candidate.draining else None


def check_runtime(request: Request, candidate: Candidate) -> str | None:
    """The candidate must offer the request's runtime (docker or native)."""
    if request.runtime in candidate.runtimes:
        return None
    return runtime_reason(request.runtime)


def check_architecture(request: Request, candidate: Candidate) -> str | None:
    """When the request restricts architectures, the candidate must have one of them."""
    if request.archs is None or not request.archs.isdisjoint(candidate.archs):
        return None
    return architecture_reason(request.archs)


def check_labels(request: Request, candidate: Candidate) -> str | None:
    """Every required label must be present with the same value (first missing key wins)."""
    labels = candidate.labels
    for key in sorted(request.labels):
        value = request.labels[key]
        if labels.get(key) != value:
            return label_reason(key, value)
    return None


def check_accelerator(request: Request, candidate: Candidate) -> str | None:
    """A required accelerator kind must exist on the candidate (free count may be 0)."""
    kind = request.accelerator
    if kind is None or kind in candidate.free_accelerators:
        return None
    return accelerator_missing_reason(kind)


def check_temperature(request: Request, candidate: Candidate) -> str | None:
    """Reject a candidate hotter than the request allows; unknown temperature passes."""
    limit = request.max_temperature_c
    temp = candidate.temperature_c
    if limit is not None and temp is not None and temp > limit:
        return TOO_HOT
    return None


def check_throttled(request: Request, candidate: Candidate) -> str | None:
    """A throttled device (thermal or power) is already slowed down: add nothing."""
    return THROTTLED if candidate.throttled else None


def check_overloaded(request: Request, candidate: Candidate) -> str | None:
    """A device that cannot keep up with the work it has (the adapter's verdict: its
    node engine is shedding work, or its measured CPU is over the configured limit)
    takes nothing more, whatever the request asks."""
    return OVERLOADED if candidate.overloaded else None


def check_cpu(request: Request, candidate: Candidate) -> str | None:
    """Free CPU (cores, aggregate for a cluster) must cover the request.

    Free CPU is capacity minus reservations: measured use does not make a request
    infeasible (it acts through scoring and the `overloaded` filter).
    """
    if candidate.free_cpu + CPU_EPSILON < request.cpu:
        return INSUFFICIENT_CPU
    return None


def check_memory(request: Request, candidate: Candidate) -> str | None:
    """Free memory (MiB, aggregate for a cluster) must cover the request."""
    if candidate.free_memory_mib < request.memory_mib:
        return INSUFFICIENT_MEMORY
    return None


def check_disk(request: Request, candidate: Candidate) -> str | None:
    """Free disk (MiB, aggregate for a cluster) must cover the request."""
    if candidate.free_disk_mib < request.disk_mib:
        return INSUFFICIENT_DISK
    return None


def check_accelerator_counts(request: Request, candidate: Candidate) -> str | None:
    """Free accelerators must cover each requested count (first short kind wins)."""
    free = candidate.free_accelerators
    for kind in sorted(request.accelerators):
        count = request.accelerators[kind]
        if count > 0 and free.get(kind, -1) < count:
            return accelerator_count_reason(kind)
    return None


def unit_fits(request: Request, unit: Unit) -> bool:
    """True if this one node of a cluster summary can take the whole request."""
    if unit.free_cpu + CPU_EPSILON < request.cpu:
        return False
    if unit.free_memory_mib < request.memory_mib or unit.free_disk_mib < request.disk_mib:
        return False
    if request.runtime not in unit.runtimes:
        return False
    if request.archs is not None and unit.arch not in request.archs:
        return False
    free = unit.free_accelerators
    if request.accelerator is not None and request.accelerator not in free:
        return False
    return all(
        count <= 0 or free.get(kind, -1) >= count for kind, count in request.accelerators.items()
    )


def check_units(request: Request, candidate: Candidate) -> str | None:
    """For a cluster with a per-node summary, at least one node must take it all.

    Aggregate checks ran before this one; this catches capacity that is there in
    total but spread over nodes, or spread across nodes of the wrong kind.
    """
    units = candidate.units
    if units is None:
        return None
    for unit in units:
        if unit_fits(request, unit):
            return None
    return NO_SINGLE_NODE


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


def first_failure(request: Request, candidate: Candidate) -> str | None:
    """Run the pipeline on one candidate: None if feasible, else the first reason."""
    for _name, check in FILTERS:
        reason = check(request, candidate)
        if reason is not None:
            return reason
    return None
