"""Policies: named weights over scorers, looked up by name.

A candidate's total score is the weighted mean of its scorer values, so it stays in
0-100 whatever the weights. Scorers with weight 0 are not evaluated at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from placement.scorers import SCORERS

__all__ = ["BINPACK", "POLICIES", "SPREAD", "THERMAL", "Policy", "get_policy", "resolve_policy"]


@dataclass(frozen=True, slots=True)
class Policy:
    """A named set of scorer weights (weights >= 0, at least one > 0)."""

    name: str
    weights: Mapping[str, float]
    #: (scorer, weight) pairs with weight > 0, in the order given: the evaluation order.
    active: tuple[tuple[str, float], ...] = field(init=False, repr=False, compare=False)
    #: Sum of the active weights: the divisor that keeps totals in 0-100.
    weight_sum: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(SCORERS))
        if unknown:
            raise ValueError(
                f"policy {self.name!r}: unknown scorer(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(SCORERS))}"
            )
        for scorer, weight in self.weights.items():
            if not 0 <= weight < math.inf:  # also rejects NaN
                raise ValueError(
                    f"policy {self.name!r}: weight of {scorer} must be >= 0 and finite"
                )
        active = tuple((s, float(w)) for s, w in self.weights.items() if w > 0)
        if not active:
            raise ValueError(f"policy {self.name!r}: at least one weight must be > 0")
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        object.__setattr__(self, "active", active)
        total = 0.0
        for _scorer, weight in active:
            total += weight
        object.__setattr__(self, "weight_sum", total)


#: Spread load and replicas: least-allocated first, replicas of a job apart, cool first.
SPREAD = Policy("spread", {"least_allocated": 1.0, "job_spread": 1.0, "thermal_headroom": 0.5})
#: Fill devices before using new ones, so idle ones stay idle (and cool); still
#: prefers cooler devices a little among equally full ones.
BINPACK = Policy("binpack", {"most_allocated": 1.0, "thermal_headroom": 0.25})
#: Coolest device first, load as a second thought: for hot sites in summer.
THERMAL = Policy("thermal", {"thermal_headroom": 1.0, "least_allocated": 0.25, "job_spread": 0.25})

POLICIES: dict[str, Policy] = {p.name: p for p in (SPREAD, BINPACK, THERMAL)}


def get_policy(name: str) -> Policy:
    """Return the built-in policy `name`; ValueError lists the valid names if unknown."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown placement policy {name!r}; valid: {', '.join(sorted(POLICIES))}"
        ) from None


def resolve_policy(policy: Policy | str, override: str | None = None) -> Policy:
    """The policy to use: the request's override if it names one, else `policy`."""
    if override is not None:
        return get_policy(override)
    return get_policy(policy) if isinstance(policy, str) else policy
