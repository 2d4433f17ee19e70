"""Reservations: take a placed replica's resources out of a candidate's free capacity."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from placement.filters import NO_SINGLE_NODE, unit_fits
from placement.model import CPU_EPSILON, Candidate, Request, Unit

__all__ = ["reserve"]


def _take(free: Mapping[str, int], wanted: Mapping[str, int]) -> dict[str, int]:
    left = dict(free)
    for kind, count in wanted.items():
        if count > 0:
            left[kind] = left[kind] - count
    return left


def _fits_resources(candidate: Candidate | Unit, request: Request) -> bool:
    free = candidate.free_accelerators
    return (
        candidate.free_cpu + CPU_EPSILON >= request.cpu
        and candidate.free_memory_mib >= request.memory_mib
        and candidate.free_disk_mib >= request.disk_mib
        and all(n <= 0 or free.get(k, -1) >= n for k, n in request.accelerators.items())
    )


def reserve(candidate: Candidate, request: Request) -> Candidate:
    """Return `candidate` with the request's resources taken from its free capacity.

    For a cluster with units, the replica lands on the best-fitting unit (the one
    that fits the whole request with the least memory, then CPU, then disk left;
    lowest index on a tie), which is reduced too. Used by `place_many`, and by a
    scheduler that keeps reservations between status reports. ValueError if the
    resources (or, with units, every unit) cannot take the request.
    """
    if not _fits_resources(candidate, request):
        raise ValueError(f"{candidate.id}: request does not fit the free resources")
    units = candidate.units
    if units is not None:
        fitting = [
            (
                u.free_memory_mib - request.memory_mib,
                u.free_cpu - request.cpu,
                u.free_disk_mib - request.disk_mib,
                i,
            )
            for i, u in enumerate(units)
            if unit_fits(request, u)
        ]
        if not fitting:
            raise ValueError(f"{candidate.id}: {NO_SINGLE_NODE}")
        best = min(fitting)[3]
        unit = units[best]
        taken = dataclasses.replace(
            unit,
            free_cpu=max(0.0, unit.free_cpu - request.cpu),
            free_memory_mib=unit.free_memory_mib - request.memory_mib,
            free_disk_mib=unit.free_disk_mib - request.disk_mib,
            free_accelerators=_take(unit.free_accelerators, request.accelerators),
        )
        units = (*units[:best], taken, *units[best + 1 :])
    return dataclasses.replace(
        candidate,
        free_cpu=max(0.0, candidate.free_cpu - request.cpu),
        free_memory_mib=candidate.free_memory_mib - request.memory_mib,
        free_disk_mib=candidate.free_disk_mib - request.disk_mib,
        free_accelerators=_take(candidate.free_accelerators, request.accelerators),
        units=units,
    )
