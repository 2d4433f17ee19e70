"""A placement decision as stored on instances and served by both APIs.

`placement.Decision.to_dict(limit=...)` produces this shape; the root API shows it in
`PlacementInfo.decision` and `PlannedPlacement.decision`, the cluster API in an
instance's `placement`. Fields default so that decisions stored by older versions
(or with keys added later) still load; unknown keys are ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CandidateScore", "ChosenCandidate", "PlacementDecision", "empty_as_none"]


class ChosenCandidate(BaseModel):
    """The candidate (cluster or node) a placement chose, and its total score."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str = ""
    score: float | None = None


class CandidateScore(BaseModel):
    """One feasible candidate: total (0-100) and the value of each scorer."""

    model_config = ConfigDict(frozen=True)

    id: str
    score: float
    breakdown: dict[str, float] = Field(default_factory=dict)


class PlacementDecision(BaseModel):
    """Why a placement chose what it chose, or why nothing fits.

    Counts (`considered`, `feasible`, `rejections`) are complete; `scores` (best first)
    and the ids per rejection reason in `rejected` are bounded by the producer's limit,
    `truncated` says whether something was left out.
    """

    model_config = ConfigDict(frozen=True)

    chosen: ChosenCandidate | None = None
    policy: str = ""
    noun: str = ""
    considered: int = 0
    feasible: int = 0
    tied: int = 0
    rejections: dict[str, int] = Field(default_factory=dict)
    rejected: dict[str, list[str]] = Field(default_factory=dict)
    scores: list[CandidateScore] = Field(default_factory=list)
    truncated: bool = False
    explanation: str = ""


def empty_as_none(value: Any) -> Any:
    """An empty object means "never placed" (how older records stored it): None."""
    if isinstance(value, dict) and not value:
        return None
    return value
