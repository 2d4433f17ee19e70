"""Entry points: place one replica, place several, and reserve capacity.

`place` accepts a plain list of candidates or a `CandidateTable`; a list is turned
into a table first, so both run the same filters and scorers (the only ones there
are). A scheduler that decides often over many candidates keeps a table and updates
the rows that change instead of building one per decision.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from placement.decision import Decision, sorted_rejections
from placement.filters import checks
from placement.model import Candidate, Request
from placement.policy import Policy, resolve_policy
from placement.reserve import reserve, reserve_in
from placement.scorers import SCORERS
from placement.table import CandidateTable, IntArray

__all__ = ["infer_noun", "place", "place_many", "reserve"]

Candidates = Sequence[Candidate] | CandidateTable


def infer_noun(candidates: Sequence[Candidate]) -> str:
    """ "cluster" if any candidate carries a per-node summary, else "node" (for explain())."""
    return "cluster" if any(c.units is not None for c in candidates) else "node"


def _check_existing(existing: Mapping[str, int] | None) -> None:
    if existing:
        for cid, count in existing.items():
            if count < 0:
                raise ValueError(f"existing[{cid!r}] must be >= 0, got {count}")


def _table(candidates: Candidates) -> CandidateTable:
    return candidates if isinstance(candidates, CandidateTable) else CandidateTable(candidates)


def place(
    request: Request,
    candidates: Candidates,
    policy: Policy | str,
    rng: random.Random,
    *,
    existing: Mapping[str, int] | None = None,
    noun: str | None = None,
    exclude: Collection[str] = (),
) -> Decision:
    """Choose one candidate for one replica, keeping the full explanation.

    Every candidate goes through the filters (first failure is its reason); the
    feasible ones are scored with `policy` (or `request.policy` if set); the best
    total wins, and a tie is broken by `rng` among the tied ids in sorted order, so the
    candidates' order does not matter and the same seed replays the same decision. rng
    is drawn from exactly once when anything is feasible, never otherwise.
    `existing` maps candidate id -> replicas of this job already there (job_spread).
    `noun` ("node"/"cluster") only affects explain(); it is inferred when omitted.
    `exclude` names candidates to leave out as if they were not there (a scheduler
    retrying elsewhere): they are not considered, counted nor listed.
    """
    resolved = resolve_policy(policy, request.policy)
    _check_existing(existing)
    return _decide(request, _table(candidates), resolved, rng, existing, noun, exclude)


def _decide(
    request: Request,
    table: CandidateTable,
    policy: Policy,
    rng: random.Random,
    existing: Mapping[str, int] | None,
    noun: str | None,
    exclude: Collection[str],
) -> Decision:
    """The pipeline over a table: every filter's masks, first failure per row, scores."""
    n = len(table)
    found = checks(request, table)
    k = len(found)
    # first[row] = position of the first failing check, k where none fails
    first: IntArray = np.full(n, k, dtype=np.int64)
    for code in range(k - 1, -1, -1):
        first[found[code][1]] = code
    considered = n
    if exclude:
        rows = [table.index[cid] for cid in exclude if cid in table.index]
        if rows:
            first[rows] = k + 1  # counted nowhere
            considered -= len(rows)
    counts = np.bincount(first, minlength=k + 2)
    reject_counts: dict[str, int] = {}
    reject_ids: dict[str, list[str]] = {}
    for code in np.flatnonzero(counts[:k]).tolist():
        reason = found[code][0]
        rejected_ids: list[str] = table.id_array[first == code].tolist()
        reject_counts[reason] = reject_counts.get(reason, 0) + len(rejected_ids)
        reject_ids.setdefault(reason, []).extend(rejected_ids)
    rejections, rejected = sorted_rejections(reject_counts, reject_ids)

    rows_ok = np.flatnonzero(first == k)
    replicas: IntArray = np.zeros(len(rows_ok), dtype=np.int64)
    if existing and len(rows_ok):
        per_row = np.zeros(n, dtype=np.int64)
        index = table.index
        for cid, count in existing.items():
            row = index.get(cid)
            if row is not None:
                per_row[row] = count
        replicas = per_row[rows_ok]
    total = np.zeros(len(rows_ok), dtype=np.float64)
    parts: dict[str, list[float]] = {}
    for name, weight in policy.active:
        values = SCORERS[name](request, table, rows_ok, replicas)
        parts[name] = values.tolist()
        total = total + weight * values
    totals = total / policy.weight_sum
    feasible_ids: list[str] = table.id_array[rows_ok].tolist()
    scores = dict(zip(feasible_ids, totals.tolist(), strict=True))

    chosen: Candidate | None = None
    best: float | None = None
    tied = 0
    if len(rows_ok):
        best = float(totals.max())
        # the tied ids in sorted order, and the rng's pick among them (by id rank)
        ranks = table.id_rank[rows_ok[totals == best]]
        tied = len(ranks)
        pick = rng.randrange(tied)
        rank = ranks[0] if tied == 1 else np.partition(ranks, pick)[pick]
        chosen = table.candidate(int(table.by_rank[rank]))
    return Decision(
        chosen=chosen,
        score=best,
        policy=policy.name,
        noun=noun or table.noun,
        considered=considered,
        scores=scores,
        parts=parts,
        rejections=rejections,
        rejected=rejected,
        tied=tied,
    )


def place_many(
    request: Request,
    candidates: Candidates,
    count: int,
    policy: Policy | str,
    rng: random.Random,
    *,
    existing: Mapping[str, int] | None = None,
    noun: str | None = None,
) -> list[Decision]:
    """Place `count` replicas one after the other, reserving each on its candidate.

    Capacity chosen for one replica is gone for the next (see `reserve`), so a burst
    never over-commits; replicas placed here count towards `existing` for job_spread.
    Once a replica fits nowhere, the remaining ones get that same decision (capacity
    only shrinks, so they would fit nowhere either). Returns one decision per replica.
    A table passed in is left as it is.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    resolved = resolve_policy(policy, request.policy)
    _check_existing(existing)
    replicas: dict[str, int] = dict(existing or {})
    table = candidates.copy() if isinstance(candidates, CandidateTable) else _table(candidates)
    decisions: list[Decision] = []
    while len(decisions) < count:
        decision = _decide(request, table, resolved, rng, replicas, noun, ())
        decisions.append(decision)
        chosen = decision.chosen
        if chosen is None:
            decisions.extend([decision] * (count - len(decisions)))
            break
        reserve_in(table, {chosen.id: (request,)})
        replicas[chosen.id] = replicas.get(chosen.id, 0) + 1
    return decisions
