"""Reservations: take a placed replica's resources out of a candidate's free capacity."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from placement.filters import NO_SINGLE_NODE, RESOURCE_FILTERS, checks, fitting_units
from placement.model import Candidate, Request
from placement.table import CandidateTable

__all__ = ["reserve", "reserve_all"]


def _take(free: Mapping[str, int], wanted: Mapping[str, int]) -> dict[str, int]:
    left = dict(free)
    for kind, count in wanted.items():
        if count > 0:
            left[kind] = left[kind] - count
    return left


def _taken(candidate: Candidate, request: Request, table: CandidateTable) -> Candidate:
    """`candidate` (the one row of `table`) with the request taken (it fits: checked)."""
    units = candidate.units
    if units is not None:
        fitting = [
            (
                units[i].free_memory_mib - request.memory_mib,
                units[i].free_cpu - request.cpu,
                units[i].free_disk_mib - request.disk_mib,
                i,
            )
            for i in fitting_units(request, table)
        ]
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


def _reason(table: CandidateTable, request: Request) -> str | None:
    """The first resource filter the table's single row fails, else None."""
    for reason, fails in checks(request, table, RESOURCE_FILTERS):
        if fails[0]:
            return reason
    return None


def reserve(candidate: Candidate, request: Request) -> Candidate:
    """Return `candidate` with the request's resources taken from its free capacity.

    The request must pass the resource filters (cpu, memory, disk, accelerators and,
    with units, some single unit takes it all); ValueError otherwise. For a cluster
    with units, the replica lands on the best-fitting unit (the one that fits the
    whole request with the least memory, then CPU, then disk left; lowest index on a
    tie), which is reduced too. Used by `place_many`, and by a scheduler that keeps
    reservations between status reports.
    """
    table = CandidateTable([candidate])
    reason = _reason(table, request)
    if reason == NO_SINGLE_NODE:
        raise ValueError(f"{candidate.id}: {NO_SINGLE_NODE}")
    if reason is not None:
        raise ValueError(f"{candidate.id}: request does not fit the free resources ({reason})")
    return _taken(candidate, request, table)


def reserve_all(candidate: Candidate, requests: Iterable[Request]) -> Candidate:
    """Reserve each request in turn, skipping those that no longer fit.

    For a scheduler that took capacity after the report the candidate was built from:
    a request the candidate cannot take any more (the report already shows less than
    was reserved) takes nothing.
    """
    table: CandidateTable | None = None
    for request in requests:
        if table is None:
            table = CandidateTable([candidate])
        if _reason(table, request) is None:
            candidate = _taken(candidate, request, table)
            table.update(candidate)
    return candidate
