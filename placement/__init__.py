"""Pure placement: candidates in, a `Decision` out. No I/O, no other project imports.

Shared by the root scheduler (candidates are clusters, with per-node summaries) and
the cluster scheduler (candidates are nodes). Every decision runs on a
`CandidateTable` (a list is turned into one): one implementation of each filter and
scorer, over columns. See docs/placement.md.
"""

from placement.decision import Decision
from placement.filters import FILTERS, first_failure, unit_fits
from placement.model import CPU_EPSILON, Candidate, Request, Unit
from placement.place import infer_noun, place, place_many
from placement.policy import BINPACK, POLICIES, SPREAD, THERMAL, Policy, get_policy
from placement.reserve import reserve, reserve_all, reserve_in
from placement.scorers import SCORERS
from placement.table import CandidateTable

__all__ = [
    "BINPACK",
    "CPU_EPSILON",
    "FILTERS",
    "POLICIES",
    "SCORERS",
    "SPREAD",
    "THERMAL",
    "Candidate",
    "CandidateTable",
    "Decision",
    "Policy",
    "Request",
    "Unit",
    "first_failure",
    "get_policy",
    "infer_noun",
    "place",
    "place_many",
    "reserve",
    "reserve_all",
    "reserve_in",
    "unit_fits",
]
