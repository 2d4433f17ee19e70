"""Reservations: take a placed replica's resources out of a candidate's free capacity.

Whether a request still fits is asked of the filters (the resource ones: cpu,
memory, disk, accelerators and, for a cluster, some single unit); the best-fitting
unit is chosen among those the `units` filter's per-unit test accepts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from placement.filters import (
    NO_SINGLE_NODE,
    RESOURCE_FILTERS,
    checks,
    fitting_units,
    no_single_unit,
    units_fit,
)
from placement.model import Candidate, Request, Unit
from placement.table import BoolArray, CandidateTable

__all__ = ["reserve", "reserve_all", "reserve_in"]

_AGGREGATE_FILTERS = RESOURCE_FILTERS - {"units"}
_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in (Candidate, Unit)
}
#: a reservation round compares a request with this many distinct others at most
_MAX_GROUPS = 16

T = TypeVar("T", Candidate, Unit)


def _with(obj: T, **changes: Any) -> T:
    """`dataclasses.replace` without re-validating: the changed values are differences
    of validated finite numbers (and it runs once per reservation, often)."""
    new = object.__new__(type(obj))
    for name in _FIELDS[type(obj)]:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(obj, name))
    return new


def _take(free: Mapping[str, int], wanted: Mapping[str, int]) -> dict[str, int]:
    left = dict(free)
    for kind, count in wanted.items():
        if count > 0:
            left[kind] = left[kind] - count
    return left


def _taken(candidate: Candidate, request: Request, positions: Sequence[int]) -> Candidate:
    """`candidate` with the request taken; `positions` are its units that fit (checked)."""
    units = candidate.units
    if units is not None:
        best = min(
            (
                units[i].free_memory_mib - request.memory_mib,
                units[i].free_cpu - request.cpu,
                units[i].free_disk_mib - request.disk_mib,
                i,
            )
            for i in positions
        )[3]
        unit = units[best]
        taken = _with(
            unit,
            free_cpu=max(0.0, unit.free_cpu - request.cpu),
            free_memory_mib=unit.free_memory_mib - request.memory_mib,
            free_disk_mib=unit.free_disk_mib - request.disk_mib,
            free_accelerators=_take(unit.free_accelerators, request.accelerators),
        )
        units = (*units[:best], taken, *units[best + 1 :])
    return _with(
        candidate,
        free_cpu=max(0.0, candidate.free_cpu - request.cpu),
        free_memory_mib=candidate.free_memory_mib - request.memory_mib,
        free_disk_mib=candidate.free_disk_mib - request.disk_mib,
        free_accelerators=_take(candidate.free_accelerators, request.accelerators),
        units=units,
    )


def _failing(request: Request, table: CandidateTable, fit: BoolArray) -> BoolArray:
    """Rows that fail a resource filter for `request` (`fit`: its per-unit test)."""
    fails = no_single_unit(table, fit)
    for _reason, mask in checks(request, table, _AGGREGATE_FILTERS):
        fails = fails | mask
    return fails


def reserve_in(table: CandidateTable, reservations: Mapping[str, Sequence[Request]]) -> None:
    """Apply, in place, each candidate's reservations in order (candidate id -> requests);
    a request the candidate can no longer take (the resource filters say so) takes
    nothing. KeyError for an id the table does not have.

    For a scheduler that took capacity after the reports its candidates were built
    from (the root, between two cluster reports). The checks run once per round for all
    the candidates whose reservation of that round is the same request.
    """
    rounds = max((len(requests) for requests in reservations.values()), default=0)
    for r in range(rounds):
        groups: list[tuple[Request, list[int]]] = []
        for cid, requests in reservations.items():
            if r >= len(requests):
                continue
            request, row = requests[r], table.index[cid]
            for known, rows in groups[:_MAX_GROUPS]:
                if known is request or known == request:
                    rows.append(row)
                    break
            else:
                groups.append((request, [row]))
        for request, rows in groups:
            fit = units_fit(request, table.units)
            fails = _failing(request, table, fit)
            for row in rows:
                if not fails[row]:
                    candidate = table.candidate(row)
                    positions = fitting_units(request, table, row, fit)
                    table.update(_taken(candidate, request, positions))


def reserve(candidate: Candidate, request: Request) -> Candidate:
    """Return `candidate` with the request's resources taken from its free capacity.

    The request must pass the resource filters (cpu, memory, disk, accelerators and,
    with units, some single unit takes it all); ValueError otherwise. For a cluster
    with units, the replica lands on the best-fitting unit (the one that fits the
    whole request with the least memory, then CPU, then disk left; lowest index on a
    tie), which is reduced too.
    """
    table = CandidateTable([candidate])
    for reason, mask in checks(request, table, _AGGREGATE_FILTERS):
        if mask[0]:
            raise ValueError(f"{candidate.id}: request does not fit the free resources ({reason})")
    fit = units_fit(request, table.units)
    if no_single_unit(table, fit)[0]:
        raise ValueError(f"{candidate.id}: {NO_SINGLE_NODE}")
    return _taken(candidate, request, fitting_units(request, table, 0, fit))


def reserve_all(candidate: Candidate, requests: Iterable[Request]) -> Candidate:
    """Reserve each request in turn, skipping those that no longer fit (see `reserve_in`)."""
    wanted = list(requests)
    if not wanted:
        return candidate
    table = CandidateTable([candidate])
    reserve_in(table, {candidate.id: wanted})
    return table.candidate(0)
