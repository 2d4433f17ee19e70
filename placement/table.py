"""Columnar form of a candidate list: the same pipeline, vectorised with numpy.

A naive per-candidate loop costs a few microseconds per candidate, which caps a
1,000-node cluster at a few hundred decisions per second. A `CandidateTable` is built
once from the candidates (for instance on each status report) and reused across
decisions: every filter becomes one mask over all rows, the first failing filter per
row falls out of the masks, and the scorers run over the feasible rows only.

The checks and the score arithmetic mirror `placement.filters` and
`placement.scorers` exactly (same reasons, same floating-point operations in the
same order), so `place(request, table, ...)` and `place(request, candidates, ...)`
return equal decisions. The tests hold both paths to that.

A table is immutable: `replace` and `reserve` return a new table.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from placement import filters as f
from placement.decision import Decision, sorted_rejections
from placement.model import CPU_EPSILON, Candidate, Request, Unit
from placement.policy import Policy
from placement.reserve import reserve
from placement.scorers import (
    THERMAL_COOL_C,
    THERMAL_HOT_C,
    THERMAL_UNKNOWN_SCORE,
)

__all__ = ["CandidateTable"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_THERMAL_SPAN = THERMAL_HOT_C - THERMAL_COOL_C


def _bool_columns(n: int, rows: Sequence[Iterable[str]]) -> dict[str, BoolArray]:
    """One boolean column per distinct value: row i is True where rows[i] holds it."""
    columns: dict[str, BoolArray] = {}
    for i, values in enumerate(rows):
        for value in values:
            column = columns.get(value)
            if column is None:
                column = columns[value] = np.zeros(n, dtype=np.bool_)
            column[i] = True
    return columns


def _count_columns(n: int, rows: Sequence[Mapping[str, int]]) -> dict[str, IntArray]:
    """One int column per accelerator kind: free count, or -1 where the kind is absent."""
    columns: dict[str, IntArray] = {}
    for i, counts in enumerate(rows):
        for kind, count in counts.items():
            column = columns.get(kind)
            if column is None:
                column = columns[kind] = np.full(n, -1, dtype=np.int64)
            column[i] = max(count, 0)  # negative (over-committed) = present, none free
    return columns


def _set_flags(columns: dict[str, BoolArray], n: int, row: int, values: Iterable[str]) -> None:
    """Set row `row` of boolean columns to exactly `values` (adding columns as needed)."""
    for existing in columns.values():
        existing[row] = False
    for value in values:
        column = columns.get(value)
        if column is None:
            column = columns[value] = np.zeros(n, dtype=np.bool_)
        column[row] = True


def _set_counts(columns: dict[str, IntArray], n: int, row: int, counts: Mapping[str, int]) -> None:
    """Set row `row` of count columns to exactly `counts` (-1 for absent kinds)."""
    for existing in columns.values():
        existing[row] = -1
    for kind, count in counts.items():
        column = columns.get(kind)
        if column is None:
            column = columns[kind] = np.full(n, -1, dtype=np.int64)
        column[row] = max(count, 0)


class _Units:
    """Flat columns over every unit of every cluster candidate (owner = candidate row)."""

    __slots__ = ("accel", "arch", "cpu_eps", "disk", "memory", "owner", "runtime", "start")

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        units: list[Unit] = []
        owners: list[int] = []
        starts: list[int] = []
        for i, candidate in enumerate(candidates):
            starts.append(len(units))
            if candidate.units:
                units.extend(candidate.units)
                owners.extend([i] * len(candidate.units))
        m = len(units)
        self.start: list[int] = starts
        self.owner: IntArray = np.array(owners, dtype=np.int64)
        self.cpu_eps: FloatArray = (
            np.array([u.free_cpu for u in units], dtype=np.float64) + CPU_EPSILON
        )
        self.memory: IntArray = np.array([u.free_memory_mib for u in units], dtype=np.int64)
        self.disk: IntArray = np.array([u.free_disk_mib for u in units], dtype=np.int64)
        self.arch = _bool_columns(m, [(u.arch,) for u in units])
        self.runtime = _bool_columns(m, [u.runtimes for u in units])
        self.accel = _count_columns(m, [u.free_accelerators for u in units])

    def copy(self) -> _Units:
        """A deep copy of the columns (the owner/start layout is shared: it never changes)."""
        other = object.__new__(_Units)
        other.start = self.start
        other.owner = self.owner
        other.cpu_eps = self.cpu_eps.copy()
        other.memory = self.memory.copy()
        other.disk = self.disk.copy()
        other.arch = {k: v.copy() for k, v in self.arch.items()}
        other.runtime = {k: v.copy() for k, v in self.runtime.items()}
        other.accel = {k: v.copy() for k, v in self.accel.items()}
        return other

    def set_units(self, row: int, units: Sequence[Unit]) -> None:
        """Overwrite the units of candidate `row` in place (same number of units)."""
        m = len(self.owner)
        for offset, unit in enumerate(units):
            j = self.start[row] + offset
            self.cpu_eps[j] = unit.free_cpu + CPU_EPSILON
            self.memory[j] = unit.free_memory_mib
            self.disk[j] = unit.free_disk_mib
            _set_flags(self.arch, m, j, (unit.arch,))
            _set_flags(self.runtime, m, j, unit.runtimes)
            _set_counts(self.accel, m, j, unit.free_accelerators)

    def fitting_owners(self, request: Request, n: int) -> BoolArray:
        """Per candidate row: True if at least one of its units takes the whole request."""
        m = len(self.owner)
        ok: BoolArray = (
            (self.cpu_eps >= request.cpu)
            & (self.memory >= request.memory_mib)
            & (self.disk >= request.disk_mib)
        )
        runtime = self.runtime.get(request.runtime)
        ok &= runtime if runtime is not None else np.zeros(m, dtype=np.bool_)
        if request.archs is not None:
            allowed = np.zeros(m, dtype=np.bool_)
            for arch in request.archs:
                column = self.arch.get(arch)
                if column is not None:
                    allowed |= column
            ok &= allowed
        if request.accelerator is not None:
            present = self.accel.get(request.accelerator)
            ok &= present >= 0 if present is not None else np.zeros(m, dtype=np.bool_)
        for kind, count in request.accelerators.items():
            if count > 0:
                free = self.accel.get(kind)
                ok &= free >= count if free is not None else np.zeros(m, dtype=np.bool_)
        fitting: BoolArray = np.bincount(self.owner[ok], minlength=n) > 0
        return fitting


class CandidateTable:
    """Candidates as numpy columns, built once and reused for many decisions."""

    __slots__ = (
        "_units",
        "accel",
        "arch",
        "candidates",
        "capacity_cpu",
        "capacity_memory",
        "draining",
        "free_cpu",
        "free_cpu_eps",
        "free_disk",
        "free_memory",
        "has_units",
        "id_array",
        "ids",
        "index",
        "label",
        "noun",
        "overloaded",
        "runtime",
        "score_free_cpu",
        "temperature",
        "throttled",
        "unready",
    )

    def __init__(self, candidates: Iterable[Candidate]) -> None:
        """Build the columns; ValueError on duplicate candidate ids."""
        cands = tuple(candidates)
        n = len(cands)
        self.candidates: tuple[Candidate, ...] = cands
        self.ids: list[str] = [c.id for c in cands]
        self.index: dict[str, int] = {cid: i for i, cid in enumerate(self.ids)}
        self.id_array: npt.NDArray[np.object_] = np.array(self.ids, dtype=np.object_)
        if len(self.index) != n:
            raise ValueError("candidate ids must be unique")
        self.noun: str = "cluster" if any(c.units is not None for c in cands) else "node"
        self.free_cpu: FloatArray = np.array([c.free_cpu for c in cands], dtype=np.float64)
        self.free_cpu_eps: FloatArray = self.free_cpu + CPU_EPSILON
        self.score_free_cpu: FloatArray = np.array(
            [c.scoring_free_cpu for c in cands], dtype=np.float64
        )
        self.free_memory: IntArray = np.array([c.free_memory_mib for c in cands], dtype=np.int64)
        self.free_disk: IntArray = np.array([c.free_disk_mib for c in cands], dtype=np.int64)
        self.capacity_cpu: FloatArray = np.array([c.capacity_cpu for c in cands], dtype=np.float64)
        self.capacity_memory: IntArray = np.array(
            [c.capacity_memory_mib for c in cands], dtype=np.int64
        )
        self.temperature: FloatArray = np.array(
            [np.nan if c.temperature_c is None else c.temperature_c for c in cands],
            dtype=np.float64,
        )
        self.unready: BoolArray = np.array([not c.ready for c in cands], dtype=np.bool_)
        self.draining: BoolArray = np.array([c.draining for c in cands], dtype=np.bool_)
        self.throttled: BoolArray = np.array([c.throttled for c in cands], dtype=np.bool_)
        self.overloaded: BoolArray = np.array([c.overloaded for c in cands], dtype=np.bool_)
        self.runtime = _bool_columns(n, [c.runtimes for c in cands])
        self.arch = _bool_columns(n, [c.archs for c in cands])
        self.label = _bool_columns(
            n, [[_label_key(k, v) for k, v in c.labels.items()] for c in cands]
        )
        self.accel = _count_columns(n, [c.free_accelerators for c in cands])
        self.has_units: BoolArray = np.array([c.units is not None for c in cands], dtype=np.bool_)
        self._units = _Units(cands)

    def __len__(self) -> int:
        return len(self.candidates)

    def replace(self, candidate: Candidate) -> CandidateTable:
        """A new table where the row with `candidate.id` is `candidate` (KeyError if absent).

        For a scheduler that keeps a table between decisions: apply a status report
        or a reservation by copying the columns and overwriting one row, instead of
        rebuilding from every candidate.
        """
        i = self.index[candidate.id]
        cands = list(self.candidates)
        old = cands[i]
        cands[i] = candidate
        old_units = -1 if old.units is None else len(old.units)
        new_units = -1 if candidate.units is None else len(candidate.units)
        if old_units != new_units:
            return CandidateTable(cands)  # unit layout changed: rebuild
        n = len(cands)
        other = object.__new__(CandidateTable)
        other.candidates = tuple(cands)
        other.ids = self.ids
        other.id_array = self.id_array
        other.index = self.index
        other.noun = self.noun
        other.free_cpu = self.free_cpu.copy()
        other.free_cpu_eps = self.free_cpu_eps.copy()
        other.score_free_cpu = self.score_free_cpu.copy()
        other.free_memory = self.free_memory.copy()
        other.free_disk = self.free_disk.copy()
        other.capacity_cpu = self.capacity_cpu.copy()
        other.capacity_memory = self.capacity_memory.copy()
        other.temperature = self.temperature.copy()
        other.unready = self.unready.copy()
        other.draining = self.draining.copy()
        other.throttled = self.throttled.copy()
        other.overloaded = self.overloaded.copy()
        other.has_units = self.has_units
        other.runtime = {k: v.copy() for k, v in self.runtime.items()}
        other.arch = {k: v.copy() for k, v in self.arch.items()}
        other.label = {k: v.copy() for k, v in self.label.items()}
        other.accel = {k: v.copy() for k, v in self.accel.items()}
        other.free_cpu[i] = candidate.free_cpu
        other.free_cpu_eps[i] = candidate.free_cpu + CPU_EPSILON
        other.score_free_cpu[i] = candidate.scoring_free_cpu
        other.free_memory[i] = candidate.free_memory_mib
        other.free_disk[i] = candidate.free_disk_mib
        other.capacity_cpu[i] = candidate.capacity_cpu
        other.capacity_memory[i] = candidate.capacity_memory_mib
        temp = candidate.temperature_c
        other.temperature[i] = np.nan if temp is None else temp
        other.unready[i] = not candidate.ready
        other.draining[i] = candidate.draining
        other.throttled[i] = candidate.throttled
        other.overloaded[i] = candidate.overloaded
        _set_flags(other.runtime, n, i, candidate.runtimes)
        _set_flags(other.arch, n, i, candidate.archs)
        _set_flags(other.label, n, i, [_label_key(k, v) for k, v in candidate.labels.items()])
        _set_counts(other.accel, n, i, candidate.free_accelerators)
        other._units = self._units
        if candidate.units:
            other._units = self._units.copy()
            other._units.set_units(i, candidate.units)
        return other

    def reserve(self, candidate_id: str, request: Request) -> CandidateTable:
        """A new table with `request` reserved on the candidate `candidate_id`."""
        return self.replace(reserve(self.candidates[self.index[candidate_id]], request))

    def _fail_masks(self, request: Request) -> list[tuple[str, BoolArray]]:
        """(reason, rows failing) for every check, in pipeline order (see filters.FILTERS)."""
        n = len(self.candidates)
        none = np.zeros(n, dtype=np.bool_)
        every = np.ones(n, dtype=np.bool_)
        checks: list[tuple[str, BoolArray]] = []
        if request.pinned_id is not None:
            fail = every.copy()
            pinned = self.index.get(request.pinned_id)
            if pinned is not None:
                fail[pinned] = False
            checks.append((f.NOT_PINNED, fail))
        checks.append((f.NOT_READY, self.unready))
        checks.append((f.NOT_DRAINING, self.draining))
        runtime = self.runtime.get(request.runtime)
        checks.append(
            (f.runtime_reason(request.runtime), ~runtime if runtime is not None else every)
        )
        if request.archs is not None:
            allowed = none.copy()
            for arch in request.archs:
                column = self.arch.get(arch)
                if column is not None:
                    allowed |= column
            checks.append((f.architecture_reason(request.archs), ~allowed))
        for key in sorted(request.labels):
            value = request.labels[key]
            column = self.label.get(_label_key(key, value))
            checks.append((f.label_reason(key, value), ~column if column is not None else every))
        if request.accelerator is not None:
            present = self.accel.get(request.accelerator)
            checks.append(
                (
                    f.accelerator_missing_reason(request.accelerator),
                    present < 0 if present is not None else every,
                )
            )
        if request.max_temperature_c is not None:
            checks.append((f.TOO_HOT, self.temperature > request.max_temperature_c))
        checks.append((f.THROTTLED, self.throttled))
        checks.append((f.OVERLOADED, self.overloaded))
        checks.append((f.INSUFFICIENT_CPU, self.free_cpu_eps < request.cpu))
        checks.append((f.INSUFFICIENT_MEMORY, self.free_memory < request.memory_mib))
        checks.append((f.INSUFFICIENT_DISK, self.free_disk < request.disk_mib))
        for kind in sorted(request.accelerators):
            count = request.accelerators[kind]
            if count > 0:
                free = self.accel.get(kind)
                checks.append(
                    (f.accelerator_count_reason(kind), free < count if free is not None else every)
                )
        if len(self._units.owner) or self.has_units.any():
            fitting = self._units.fitting_owners(request, n)
            checks.append((f.NO_SINGLE_NODE, self.has_units & ~fitting))
        return checks

    def _scores(
        self,
        request: Request,
        policy: Policy,
        rows: npt.NDArray[np.intp],
        replicas: IntArray,
    ) -> tuple[FloatArray, dict[str, list[float]]]:
        """Totals and per-scorer values for the feasible `rows` (scorers.py arithmetic)."""
        least: FloatArray | None = None
        total: FloatArray = np.zeros(len(rows), dtype=np.float64)
        parts: dict[str, list[float]] = {}
        for name, weight in policy.active:
            if name in ("least_allocated", "most_allocated"):
                if least is None:
                    least = self._least_allocated(request, rows)
                values = least if name == "least_allocated" else 100.0 - least
            elif name == "thermal_headroom":
                temp = self.temperature[rows]
                headroom = np.minimum(np.maximum((THERMAL_HOT_C - temp) / _THERMAL_SPAN, 0.0), 1.0)
                values = np.where(np.isnan(temp), THERMAL_UNKNOWN_SCORE, headroom * 100.0)
            elif name == "job_spread":
                values = 100.0 / (1 + replicas)
            else:  # pragma: no cover - Policy validates scorer names
                raise ValueError(f"no vectorised scorer {name!r}")
            parts[name] = values.tolist()
            total = total + weight * values
        return total / policy.weight_sum, parts

    def _least_allocated(self, request: Request, rows: npt.NDArray[np.intp]) -> FloatArray:
        cpu = _free_fraction_after(self.score_free_cpu[rows], request.cpu, self.capacity_cpu[rows])
        memory = _free_fraction_after(
            self.free_memory[rows], request.memory_mib, self.capacity_memory[rows]
        )
        result: FloatArray = (cpu + memory) * 50.0
        return result

    def place(
        self,
        request: Request,
        policy: Policy,
        rng: random.Random,
        existing: Mapping[str, int] | None = None,
        noun: str | None = None,
    ) -> Decision:
        """Vectorised `placement.place` over this table (use that function instead)."""
        n = len(self.candidates)
        checks = self._fail_masks(request)
        k = len(checks)
        first = np.full(n, k, dtype=np.intp)
        for code in range(k - 1, -1, -1):
            first[checks[code][1]] = code
        counts = np.bincount(first, minlength=k + 1)
        reject_counts: dict[str, int] = {}
        reject_ids: dict[str, list[str]] = {}
        for code in np.flatnonzero(counts[:k]).tolist():
            reason = checks[code][0]
            rejected_ids: list[str] = self.id_array[first == code].tolist()
            reject_counts[reason] = reject_counts.get(reason, 0) + len(rejected_ids)
            reject_ids.setdefault(reason, []).extend(rejected_ids)
        rejections, rejected = sorted_rejections(reject_counts, reject_ids)

        rows = np.flatnonzero(first == k)
        replicas: IntArray = np.zeros(n, dtype=np.int64)
        if existing:
            index = self.index
            for cid, count in existing.items():
                row = index.get(cid)
                if row is not None:
                    replicas[row] = count
        totals, parts = self._scores(request, policy, rows, replicas[rows])
        feasible_ids: list[str] = self.id_array[rows].tolist()
        scores = dict(zip(feasible_ids, totals.tolist(), strict=True))

        chosen: Candidate | None = None
        best: float | None = None
        tied = 0
        if len(rows):
            best = float(totals.max())
            tied_ids = sorted(feasible_ids[p] for p in np.flatnonzero(totals == best).tolist())
            tied = len(tied_ids)
            chosen = self.candidates[self.index[tied_ids[rng.randrange(tied)]]]
        return Decision(
            chosen=chosen,
            score=best,
            policy=policy.name,
            noun=noun or self.noun,
            considered=n,
            scores=scores,
            parts=parts,
            rejections=rejections,
            rejected=rejected,
            tied=tied,
        )


def _label_key(key: str, value: str) -> str:
    # NUL cannot appear in sane label keys; it keeps "a=b" + "c" distinct from "a" + "b=c".
    return f"{key}\0{value}"


def _free_fraction_after(
    free: FloatArray | IntArray, requested: float, capacity: FloatArray | IntArray
) -> FloatArray:
    """Vector form of scorers._free_fraction_after (0 where capacity <= 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.minimum(np.maximum((free - requested) / capacity, 0.0), 1.0)
    result: FloatArray = np.where(capacity > 0, fraction, 0.0)
    return result
