"""Scorers: rank feasible candidates, each giving a value from 0 to 100.

A scorer sees the request, the `CandidateTable`, the feasible rows and, aligned with
them, how many replicas of the same job each of those candidates already holds (0
when the caller does not say); it returns one value per row. A policy combines them
with weights (see `placement.policy`). This is the only implementation of the
formulas: every decision, on a list or on a table, runs them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from placement.model import Request
from placement.table import CandidateTable, FloatArray, IntArray

__all__ = [
    "SCORERS",
    "THERMAL_COOL_C",
    "THERMAL_HOT_C",
    "THERMAL_UNKNOWN_SCORE",
    "Rows",
    "ScorerFn",
    "job_spread",
    "least_allocated",
    "most_allocated",
    "thermal_headroom",
]

#: Row numbers of the feasible candidates in a table.
Rows = npt.NDArray[np.intp]
ScorerFn = Callable[[Request, CandidateTable, Rows, IntArray], FloatArray]

#: At or below this temperature a device has full thermal headroom (score 100).
THERMAL_COOL_C = 40.0
#: At or above this temperature a device has none (score 0); Raspberry Pis start
#: throttling at 80-85 C.
THERMAL_HOT_C = 85.0
#: Score for a device that reports no temperature: neutral, neither preferred nor avoided.
THERMAL_UNKNOWN_SCORE = 50.0

_THERMAL_SPAN = THERMAL_HOT_C - THERMAL_COOL_C


def _free_fraction_after(
    free: FloatArray | IntArray, requested: float, capacity: FloatArray | IntArray
) -> FloatArray:
    """(free - requested) / capacity, clamped to 0-1; 0 where capacity is not > 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.minimum(np.maximum((free - requested) / capacity, 0.0), 1.0)
    result: FloatArray = np.where(capacity > 0, fraction, 0.0)
    return result


def least_allocated(
    request: Request, table: CandidateTable, rows: Rows, replicas: IntArray
) -> FloatArray:
    """Spread: favour candidates with most CPU and memory left after placement.

    Mean over CPU and memory of the free fraction of capacity once the request is
    placed (Kubernetes' LeastAllocated), scaled to 0-100. Free CPU here is
    `Candidate.scoring_free_cpu`: what is neither reserved nor measured in use, so a
    device busy with work the scheduler did not place ranks lower.
    """
    cpu = _free_fraction_after(table.score_free_cpu[rows], request.cpu, table.capacity_cpu[rows])
    memory = _free_fraction_after(
        table.free_memory[rows], request.memory_mib, table.capacity_memory[rows]
    )
    result: FloatArray = (cpu + memory) * 50.0
    return result


def most_allocated(
    request: Request, table: CandidateTable, rows: Rows, replicas: IntArray
) -> FloatArray:
    """Binpack: favour candidates that are fullest after placement (100 - least_allocated).

    Keeps other devices empty, so they can idle, cool down or take a large job.
    """
    result: FloatArray = 100.0 - least_allocated(request, table, rows, replicas)
    return result


def thermal_headroom(
    request: Request, table: CandidateTable, rows: Rows, replicas: IntArray
) -> FloatArray:
    """Favour cooler devices: 100 at THERMAL_COOL_C or below, 0 at THERMAL_HOT_C or above,
    THERMAL_UNKNOWN_SCORE (neutral) when the temperature is unknown.

    Edge devices in enclosures overheat and then throttle or shed work; placing on
    the coolest one keeps work where it can actually run at speed.
    """
    temp = table.temperature[rows]
    headroom = np.minimum(np.maximum((THERMAL_HOT_C - temp) / _THERMAL_SPAN, 0.0), 1.0)
    result: FloatArray = np.where(np.isnan(temp), THERMAL_UNKNOWN_SCORE, headroom * 100.0)
    return result


def job_spread(
    request: Request, table: CandidateTable, rows: Rows, replicas: IntArray
) -> FloatArray:
    """Anti-affinity by count: 100 / (1 + replicas of this job already on the candidate).

    Spreads replicas of one job so that losing a device loses as few as possible.
    """
    result: FloatArray = 100.0 / (1 + replicas)
    return result


#: Scorer registry: policies refer to scorers by these names.
SCORERS: dict[str, ScorerFn] = {
    "least_allocated": least_allocated,
    "most_allocated": most_allocated,
    "thermal_headroom": thermal_headroom,
    "job_spread": job_spread,
}
