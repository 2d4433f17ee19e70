"""Scorers: rank feasible candidates, each returning a value from 0 to 100.

A policy combines them with weights (see `placement.policy`). The formulas here are
the reference; `placement.table` evaluates the same arithmetic, in the same order, over
columns, so both paths produce bit-identical scores (tested).
"""

from __future__ import annotations

from collections.abc import Callable

from placement.model import Candidate, Request

__all__ = [
    "SCORERS",
    "THERMAL_COOL_C",
    "THERMAL_HOT_C",
    "THERMAL_UNKNOWN_SCORE",
    "ScorerFn",
    "job_spread",
    "least_allocated",
    "most_allocated",
    "thermal_headroom",
]

#: A scorer sees the request, the candidate and how many replicas of the same job the
#: candidate already holds (0 when the caller does not say).
ScorerFn = Callable[[Request, Candidate, int], float]

#: At or below this temperature a device has full thermal headroom (score 100).
THERMAL_COOL_C = 40.0
#: At or above this temperature a device has none (score 0); Raspberry Pis start
#: throttling at 80-85 C.
THERMAL_HOT_C = 85.0
#: Score for a device that reports no temperature: neutral, neither preferred nor avoided.
THERMAL_UNKNOWN_SCORE = 50.0


def _clamp01(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def _free_fraction_after(free: float, requested: float, capacity: float) -> float:
    if capacity <= 0:
        return 0.0
    return _clamp01((free - requested) / capacity)


def least_allocated(request: Request, candidate: Candidate, replicas: int) -> float:
    """Spread: favour candidates with most CPU and memory left after placement.

    Mean over CPU and memory of the free fraction of capacity once the request is
    placed (Kubernetes' LeastAllocated), scaled to 0-100. Free CPU here is
    `Candidate.scoring_free_cpu`: what is neither reserved nor measured in use, so a
    device busy with work the scheduler did not place ranks lower.
    """
    cpu = _free_fraction_after(candidate.scoring_free_cpu, request.cpu, candidate.capacity_cpu)
    mem = _free_fraction_after(
        candidate.free_memory_mib, request.memory_mib, candidate.capacity_memory_mib
    )
    return (cpu + mem) * 50.0


def most_allocated(request: Request, candidate: Candidate, replicas: int) -> float:
    """Binpack: favour candidates that are fullest after placement (100 - least_allocated).

    Keeps other devices empty, so they can idle, cool down or take a large job.
    """
    return 100.0 - least_allocated(request, candidate, replicas)


def thermal_headroom(request: Request, candidate: Candidate, replicas: int) -> float:
    """Favour cooler devices: 100 at THERMAL_COOL_C or below, 0 at THERMAL_HOT_C or above.

    Edge devices in enclosures overheat and then throttle or shed work; placing on
    the coolest one keeps work where it can actually run at speed.
    """
    temp = candidate.temperature_c
    if temp is None:  # Candidate rejects NaN, so None is the only "unknown"
        return THERMAL_UNKNOWN_SCORE
    return _clamp01((THERMAL_HOT_C - temp) / (THERMAL_HOT_C - THERMAL_COOL_C)) * 100.0


def job_spread(request: Request, candidate: Candidate, replicas: int) -> float:
    """Anti-affinity by count: 100 / (1 + replicas of this job already on the candidate).

    Spreads replicas of one job so that losing a device loses as few as possible.
    """
    return 100.0 / (1 + replicas)


#: Scorer registry: policies refer to scorers by these names.
SCORERS: dict[str, ScorerFn] = {
    "least_allocated": least_allocated,
    "most_allocated": most_allocated,
    "thermal_headroom": thermal_headroom,
    "job_spread": job_spread,
}
