"""Entry points: place one replica, place several, and reserve capacity.

`place` accepts a plain list of candidates (a readable per-candidate pipeline, fine for
tens or a few hundred candidates) or a `CandidateTable` (vectorised, for large sets and
repeated decisions). Both give equal decisions for the same inputs and seed.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from placement.decision import Decision, sorted_rejections
from placement.filters import first_failure
from placement.model import Candidate, Request
from placement.policy import Policy, resolve_policy
from placement.reserve import reserve
from placement.scorers import SCORERS
from placement.table import CandidateTable

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


def place(
    request: Request,
    candidates: Candidates,
    policy: Policy | str,
    rng: random.Random,
    *,
    existing: Mapping[str, int] | None = None,
    noun: str | None = None,
) -> Decision:
    """Choose one candidate for one replica, keeping the full explanation.

    Every candidate goes through the filters (first failure is its reason); the
    feasible ones are scored with `policy` (or `request.policy` if set); the best
    total wins, and a tie is broken by `rng` among the tied ids in sorted order, so the
    candidates' order does not matter and the same seed replays the same decision. rng
    is drawn from exactly once when anything is feasible, never otherwise.
    `existing` maps candidate id -> replicas of this job already there (job_spread).
    `noun` ("node"/"cluster") only affects explain(); it is inferred when omitted.
    """
    resolved = resolve_policy(policy, request.policy)
    _check_existing(existing)
    if isinstance(candidates, CandidateTable):
        return candidates.place(request, resolved, rng, existing, noun)
    return _place_list(request, candidates, resolved, rng, existing, noun)


def _place_list(
    request: Request,
    candidates: Sequence[Candidate],
    policy: Policy,
    rng: random.Random,
    existing: Mapping[str, int] | None,
    noun: str | None,
) -> Decision:
    """The reference pipeline: one candidate at a time, one named filter at a time."""
    if len({c.id for c in candidates}) != len(candidates):
        raise ValueError("candidate ids must be unique")
    reject_counts: dict[str, int] = {}
    reject_ids: dict[str, list[str]] = {}
    feasible: list[Candidate] = []
    for candidate in candidates:
        reason = first_failure(request, candidate)
        if reason is None:
            feasible.append(candidate)
        else:
            reject_counts[reason] = reject_counts.get(reason, 0) + 1
            reject_ids.setdefault(reason, []).append(candidate.id)
    rejections, rejected = sorted_rejections(reject_counts, reject_ids)

    scorers = [(name, SCORERS[name], weight) for name, weight in policy.active]
    parts: dict[str, list[float]] = {name: [] for name, _fn, _w in scorers}
    scores: dict[str, float] = {}
    for candidate in feasible:
        replicas = existing.get(candidate.id, 0) if existing else 0
        total = 0.0
        for name, scorer, weight in scorers:
            value = scorer(request, candidate, replicas)
            parts[name].append(value)
            total = total + weight * value
        scores[candidate.id] = total / policy.weight_sum

    chosen: Candidate | None = None
    best: float | None = None
    tied = 0
    if feasible:
        best = max(scores.values())
        tied_ids = sorted(cid for cid, total in scores.items() if total == best)
        tied = len(tied_ids)
        pick = tied_ids[rng.randrange(tied)]
        chosen = next(c for c in feasible if c.id == pick)
    return Decision(
        chosen=chosen,
        score=best,
        policy=policy.name,
        noun=noun or infer_noun(candidates),
        considered=len(candidates),
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
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    resolved = resolve_policy(policy, request.policy)
    _check_existing(existing)
    replicas: dict[str, int] = dict(existing or {})
    table: CandidateTable | None = None
    current: list[Candidate] = []
    index: dict[str, int] = {}
    if isinstance(candidates, CandidateTable):
        table = candidates
        noun = noun or candidates.noun
    else:
        current = list(candidates)
        index = {c.id: i for i, c in enumerate(current)}
        noun = noun or infer_noun(current)
    decisions: list[Decision] = []
    while len(decisions) < count:
        decision = place(
            request,
            table if table is not None else current,
            resolved,
            rng,
            existing=replicas,
            noun=noun,
        )
        decisions.append(decision)
        chosen = decision.chosen
        if chosen is None:
            decisions.extend([decision] * (count - len(decisions)))
            break
        reserved = reserve(chosen, request)
        if table is not None:
            table = table.replace(reserved)
        else:
            current[index[chosen.id]] = reserved
        replicas[chosen.id] = replicas.get(chosen.id, 0) + 1
    return decisions
