"""Candidates as columns: the form every placement decision runs on.

A `CandidateTable` holds the candidates as numpy columns (free and capacity values,
one boolean column per runtime and architecture, one code column per label key, one
count column per accelerator kind, flat columns over every unit of every cluster).
The filters (`placement.filters`) turn each check into one mask over all rows and the
scorers (`placement.scorers`) score the feasible rows at once; there is no other,
per-candidate implementation of them. `place` builds a table from a plain list when
given one; a scheduler that decides often over many candidates keeps a table and
updates the rows that change (`update`, in place, for an owner that holds it alone;
`replace`, a new table, otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from placement.model import CPU_EPSILON, Candidate, Unit

__all__ = ["BoolArray", "CandidateTable", "FloatArray", "IntArray", "Units"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Code of "no such label on this row" in a label column (codes of values are >= 0).
NO_LABEL = -1


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


class _Labels:
    """Per label key, the code of each row's value (NO_LABEL where absent) and the
    vocabulary of codes: a key with a thousand distinct values is still one column."""

    __slots__ = ("codes", "vocab")

    def __init__(self, n: int, rows: Sequence[Mapping[str, str]]) -> None:
        self.codes: dict[str, IntArray] = {}
        self.vocab: dict[str, dict[str, int]] = {}
        for i, labels in enumerate(rows):
            self._put(n, i, labels)

    def _put(self, n: int, row: int, labels: Mapping[str, str]) -> None:
        for key, value in labels.items():
            column = self.codes.get(key)
            if column is None:
                column = self.codes[key] = np.full(n, NO_LABEL, dtype=np.int64)
                self.vocab[key] = {}
            vocab = self.vocab[key]
            code = vocab.get(value)
            if code is None:
                code = vocab[value] = len(vocab)
            column[row] = code

    def set_row(self, n: int, row: int, labels: Mapping[str, str]) -> None:
        """Set row `row` to exactly `labels`."""
        for key, column in self.codes.items():
            if key not in labels:
                column[row] = NO_LABEL
        self._put(n, row, labels)

    def copy(self) -> _Labels:
        """Copied columns and vocabularies."""
        other = object.__new__(_Labels)
        other.codes = {k: v.copy() for k, v in self.codes.items()}
        other.vocab = {k: dict(v) for k, v in self.vocab.items()}
        return other

    def has(self, key: str, value: str, n: int) -> BoolArray:
        """Rows whose label `key` is `value`."""
        column = self.codes.get(key)
        code = self.vocab[key].get(value) if column is not None else None
        if column is None or code is None:
            return np.zeros(n, dtype=np.bool_)
        matches: BoolArray = column == code
        return matches


class Units:
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

    def __len__(self) -> int:
        return len(self.owner)

    def copy(self) -> Units:
        """A deep copy of the columns (the owner/start layout is shared: it never changes)."""
        other = object.__new__(Units)
        other.start = self.start
        other.owner = self.owner
        other.cpu_eps = self.cpu_eps.copy()
        other.memory = self.memory.copy()
        other.disk = self.disk.copy()
        other.arch = {k: v.copy() for k, v in self.arch.items()}
        other.runtime = {k: v.copy() for k, v in self.runtime.items()}
        other.accel = {k: v.copy() for k, v in self.accel.items()}
        return other

    def set_units(self, row: int, units: Sequence[Unit], old: Sequence[Unit] | None = None) -> None:
        """Overwrite the units of candidate `row` in place (same number of units); with
        `old`, the row's previous units, only those that changed (a reservation takes
        from one unit)."""
        m = len(self.owner)
        for offset, unit in enumerate(units):
            if old is not None and (old[offset] is unit or old[offset] == unit):
                continue
            j = self.start[row] + offset
            self.cpu_eps[j] = unit.free_cpu + CPU_EPSILON
            self.memory[j] = unit.free_memory_mib
            self.disk[j] = unit.free_disk_mib
            _set_flags(self.arch, m, j, (unit.arch,))
            _set_flags(self.runtime, m, j, unit.runtimes)
            _set_counts(self.accel, m, j, unit.free_accelerators)


class CandidateTable:
    """Candidates as numpy columns, built once and reused for many decisions."""

    __slots__ = (
        "_candidates",
        "accel",
        "arch",
        "by_rank",
        "capacity_cpu",
        "capacity_memory",
        "draining",
        "free_cpu_eps",
        "free_disk",
        "free_memory",
        "has_units",
        "id_array",
        "id_rank",
        "ids",
        "index",
        "labels",
        "noun",
        "overloaded",
        "runtime",
        "score_free_cpu",
        "temperature",
        "throttled",
        "units",
        "unready",
    )

    def __init__(self, candidates: Iterable[Candidate]) -> None:
        """Build the columns; ValueError on duplicate candidate ids."""
        self._build(list(candidates))

    def _build(self, cands: list[Candidate]) -> None:
        n = len(cands)
        self._candidates: list[Candidate] = cands
        self.ids: list[str] = [c.id for c in cands]
        self.index: dict[str, int] = {cid: i for i, cid in enumerate(self.ids)}
        if len(self.index) != n:
            raise ValueError("candidate ids must be unique")
        self.id_array: npt.NDArray[np.object_] = np.array(self.ids, dtype=np.object_)
        #: row of each id in sorted id order, and the rank of each row's id in it: ties
        #: are broken among sorted ids, without sorting them per decision
        self.by_rank: IntArray = np.array(
            sorted(range(n), key=self.ids.__getitem__), dtype=np.int64
        )
        self.id_rank: IntArray = np.empty(n, dtype=np.int64)
        self.id_rank[self.by_rank] = np.arange(n, dtype=np.int64)
        self.noun: str = "cluster" if any(c.units is not None for c in cands) else "node"
        self.free_cpu_eps: FloatArray = (
            np.array([c.free_cpu for c in cands], dtype=np.float64) + CPU_EPSILON
        )
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
        self.labels = _Labels(n, [c.labels for c in cands])
        self.accel = _count_columns(n, [c.free_accelerators for c in cands])
        self.has_units: BoolArray = np.array([c.units is not None for c in cands], dtype=np.bool_)
        self.units = Units(cands)

    def __len__(self) -> int:
        return len(self._candidates)

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """The candidates, in row order."""
        return tuple(self._candidates)

    def candidate(self, row: int) -> Candidate:
        """The candidate of row `row`."""
        return self._candidates[row]

    def copy(self) -> CandidateTable:
        """An independent copy (columns copied; ids and index shared, they never change)."""
        other = object.__new__(CandidateTable)
        other._candidates = list(self._candidates)
        other.ids = self.ids
        other.index = self.index
        other.id_array = self.id_array
        other.by_rank = self.by_rank
        other.id_rank = self.id_rank
        other.noun = self.noun
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
        other.has_units = self.has_units.copy()
        other.runtime = {k: v.copy() for k, v in self.runtime.items()}
        other.arch = {k: v.copy() for k, v in self.arch.items()}
        other.labels = self.labels.copy()
        other.accel = {k: v.copy() for k, v in self.accel.items()}
        other.units = self.units.copy()
        return other

    def update(self, candidate: Candidate) -> None:
        """Rewrite, in place, the row with `candidate.id` (KeyError if there is none).

        For an owner that holds the table alone (a scheduler applying a status report
        or a reservation); the table then equals one built from the new candidates.
        Rebuilds the unit columns (O(all units)) if the row's number of units changed.
        """
        i = self.index[candidate.id]
        old = self._candidates[i]
        self._candidates[i] = candidate
        n = len(self._candidates)
        self.free_cpu_eps[i] = candidate.free_cpu + CPU_EPSILON
        self.score_free_cpu[i] = candidate.scoring_free_cpu
        self.free_memory[i] = candidate.free_memory_mib
        self.free_disk[i] = candidate.free_disk_mib
        self.capacity_cpu[i] = candidate.capacity_cpu
        self.capacity_memory[i] = candidate.capacity_memory_mib
        temp = candidate.temperature_c
        self.temperature[i] = np.nan if temp is None else temp
        self.unready[i] = not candidate.ready
        self.draining[i] = candidate.draining
        self.throttled[i] = candidate.throttled
        self.overloaded[i] = candidate.overloaded
        if old.runtimes != candidate.runtimes:
            _set_flags(self.runtime, n, i, candidate.runtimes)
        if old.archs != candidate.archs:
            _set_flags(self.arch, n, i, candidate.archs)
        if old.labels != candidate.labels:
            self.labels.set_row(n, i, candidate.labels)
        if old.free_accelerators != candidate.free_accelerators:
            _set_counts(self.accel, n, i, candidate.free_accelerators)
        old_units = -1 if old.units is None else len(old.units)
        new_units = -1 if candidate.units is None else len(candidate.units)
        self.has_units[i] = candidate.units is not None
        if old_units != new_units:
            self.units = Units(self._candidates)
            self.noun = "cluster" if self.has_units.any() else "node"
        elif candidate.units:
            self.units.set_units(i, candidate.units, old.units)

    def replace(self, candidate: Candidate) -> CandidateTable:
        """A new table where the row with `candidate.id` is `candidate` (KeyError if absent);
        this table is left as it is."""
        other = self.copy()
        other.update(candidate)
        return other
