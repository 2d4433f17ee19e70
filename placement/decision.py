"""The outcome of one placement, with everything needed to explain it later."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np

from placement.model import Candidate

__all__ = ["Decision", "sorted_rejections"]


def sorted_rejections(
    counts: dict[str, int], ids: dict[str, list[str]]
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Order reasons by count (highest first), then by reason text, for stable output."""
    order = sorted(counts, key=lambda reason: (-counts[reason], reason))
    return {r: counts[r] for r in order}, {r: ids[r] for r in order}


def _best(totals: list[float], ids: list[str], limit: int | None) -> list[int]:
    """Positions of the `limit` best totals (all with None), best first, ties by id:
    what sorting every (total, id) pair would give, without sorting them all (a fleet
    of identical idle nodes ties on nearly every candidate)."""
    n = len(totals)
    if limit is None or limit >= n:
        return sorted(range(n), key=lambda i: (-totals[i], ids[i]))
    if limit <= 0:
        return []
    values = np.array(totals, dtype=np.float64)
    threshold = np.partition(values, n - limit)[n - limit]  # the limit-th largest
    above: list[int] = np.flatnonzero(values > threshold).tolist()  # fewer than limit
    ranked = sorted(above, key=lambda i: (-totals[i], ids[i]))
    at: list[int] = np.flatnonzero(values == threshold).tolist()
    return ranked + heapq.nsmallest(limit - len(ranked), at, key=ids.__getitem__)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _fmt(score: float) -> str:
    return f"{score:.1f}"


@dataclass(frozen=True, slots=True)
class Decision:
    """Chosen candidate (or None), scores of every feasible one and rejection reasons.

    `scores` maps each feasible candidate id to its total (0-100), in candidate order;
    `parts` holds the per-scorer values aligned with that order (see `breakdown`).
    `rejections` counts rejected candidates per reason (most frequent first) and
    `rejected` lists their ids per reason, in candidate order. `tied` is how many
    candidates shared the best total (the tie was broken by the caller's rng).
    """

    chosen: Candidate | None
    score: float | None
    policy: str
    noun: str
    considered: int
    scores: dict[str, float]
    parts: dict[str, list[float]]
    rejections: dict[str, int]
    rejected: dict[str, list[str]]
    tied: int

    @property
    def feasible(self) -> int:
        """How many candidates passed every filter."""
        return len(self.scores)

    @property
    def rejected_count(self) -> int:
        """How many candidates some filter rejected."""
        return self.considered - len(self.scores)

    @property
    def breakdown(self) -> dict[str, dict[str, float]]:
        """Per feasible candidate id, the value of each scorer (computed on access)."""
        names = list(self.parts)
        columns = [self.parts[name] for name in names]
        return {
            cid: {name: col[i] for name, col in zip(names, columns, strict=True)}
            for i, cid in enumerate(self.scores)
        }

    def breakdown_of(self, candidate_id: str) -> dict[str, float]:
        """Per-scorer values for one feasible candidate (KeyError if it was rejected)."""
        ids = list(self.scores)
        if candidate_id not in self.scores:
            raise KeyError(candidate_id)
        index = ids.index(candidate_id)
        return {name: values[index] for name, values in self.parts.items()}

    def explain(self) -> str:
        """One line for operators: what was chosen and why the others were not.

        "no candidate fits: 3 nodes: insufficient memory, 1 node: runtime docker
        unavailable" or "chose n7 (score 83.5) among 12 feasible; 3 rejected:
        insufficient memory". Reasons are listed most frequent first.
        """
        if self.chosen is None:
            if self.considered == 0:
                return f"no candidate fits: no {self.noun}s to choose from"
            reasons = ", ".join(
                f"{_plural(count, self.noun)}: {reason}"
                for reason, count in self.rejections.items()
            )
            return f"no candidate fits: {reasons}"
        assert self.score is not None
        tie = f", {self.tied}-way tie" if self.tied > 1 else ""
        text = (
            f"chose {self.chosen.display_name} (score {_fmt(self.score)}{tie})"
            f" among {self.feasible} feasible"
        )
        rejected = self.rejected_count
        if rejected == 0:
            return text
        if len(self.rejections) == 1:
            (reason,) = self.rejections
            return f"{text}; {rejected} rejected: {reason}"
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.rejections.items())
        return f"{text}; {rejected} rejected: {reasons}"

    def to_dict(self, limit: int | None = 20) -> dict[str, Any]:
        """JSON-able summary for storing and serving (`GET /jobs/{id}`).

        Counts are always complete. `limit` bounds the listed scores (best first) and
        the listed ids per rejection reason; None lists everything.
        """
        ids = list(self.scores)
        totals = list(self.scores.values())
        scores = [
            {
                "id": ids[i],
                "score": totals[i],
                "breakdown": {n: v[i] for n, v in self.parts.items()},
            }
            for i in _best(totals, ids, limit)
        ]
        rejected = {
            reason: (ids if limit is None else ids[:limit]) for reason, ids in self.rejected.items()
        }
        chosen = None
        if self.chosen is not None:
            chosen = {"id": self.chosen.id, "name": self.chosen.name, "score": self.score}
        return {
            "chosen": chosen,
            "policy": self.policy,
            "noun": self.noun,
            "considered": self.considered,
            "feasible": self.feasible,
            "tied": self.tied,
            "rejections": dict(self.rejections),
            "rejected": rejected,
            "scores": scores,
            "truncated": limit is not None
            and (len(self.scores) > limit or any(len(v) > limit for v in self.rejected.values())),
            "explanation": self.explain(),
        }
