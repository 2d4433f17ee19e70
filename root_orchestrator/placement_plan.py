"""The root's placement decision as a pure function: a snapshot in, a typed plan out.

`plan_placement` decides where one instance goes from the clusters' capacity as the
root last saw it (`scheduler.ClusterSnapshot`: report, liveness, reservations), the
clusters that refused it, and the cluster the job pins in `constraints.cluster`. It
does no I/O and reads no clock or random source of its own (`now` and `rng` are
passed in), so a test can replay any decision. `placing` applies the plan (record
SCHEDULED, reserve, persist) before the reconciler calls the cluster.
`plan_placements` (the dry run of an update) is `plan_placement` for several replicas
of a spec, one after the other, each choice reserved in a local copy of the snapshots
only: the dry run and the reconciler decide by the same code.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from placement import Decision, Request, place
from root_orchestrator.scheduler import ClusterSnapshot, build_candidates, request_for
from root_orchestrator.texts import pending_text, short, with_rejections
from schemas.cluster import ClusterLiveness
from schemas.decision import PlacementDecision
from schemas.job import JobSpec
from schemas.root_api import ClusterRejection, PlacementInfo, PlannedPlacement

__all__ = [
    "PinnedCluster",
    "PlacementPlan",
    "SendTo",
    "StayPending",
    "plan_placement",
    "plan_placements",
    "request_of",
    "typed_decision",
]


@dataclass(frozen=True, slots=True)
class PinnedCluster:
    """The cluster a job names in `constraints.cluster` (`ref`), as the root knows it:
    `cluster_id`, `cluster_name` and `liveness` are None when it is not registered."""

    ref: str
    cluster_id: str | None = None
    cluster_name: str | None = None
    liveness: ClusterLiveness | None = None


@dataclass(frozen=True, slots=True)
class SendTo:
    """Send the instance to this cluster; `reserve` is the request to reserve there
    until its next report (None for a pinned, unscheduled placement)."""

    cluster_id: str
    cluster_name: str
    info: PlacementInfo
    reserve: Request | None
    pinned: bool


@dataclass(frozen=True, slots=True)
class StayPending:
    """No cluster takes the instance now: it stays PENDING, for these reasons."""

    text: str
    decision: Decision | None


PlacementPlan = SendTo | StayPending


def request_of(spec: JobSpec) -> Request:
    """The placement request for one replica of `spec` (its policy included)."""
    policy = spec.placement_policy.value if spec.placement_policy else None
    return request_for(spec, spec.constraints, policy)


def typed_decision(decision: Decision | None) -> PlacementDecision | None:
    """A scheduler decision as stored and shown (best 10 scores, 10 ids per reason)."""
    if decision is None:
        return None
    return PlacementDecision.model_validate(decision.to_dict(limit=10))


def plan_placement(
    instance_id: str,
    spec: JobSpec,
    clusters: Sequence[ClusterSnapshot],
    rejections: Mapping[str, ClusterRejection],
    *,
    pinned: PinnedCluster | None,
    existing: Mapping[str, int],
    policy: str,
    rng: random.Random,
    now: float,
) -> PlacementPlan:
    """Where instance `instance_id` of `spec` goes: to the pinned cluster if the job
    names one (when it is READY and has not refused), else where the scheduler puts it
    among `clusters` less those in `rejections`; `existing` counts the job's other
    live replicas by cluster id (for spreading)."""
    if pinned is not None:
        return _plan_pinned(instance_id, pinned, rejections, now)
    request = request_of(spec)
    eligible = [s for s in clusters if s.id not in rejections]
    decision = place(
        request,
        build_candidates(request, eligible),
        policy,
        rng,
        existing=dict(existing),
        noun="cluster",
    )
    chosen = decision.chosen
    if chosen is None:
        return StayPending(pending_text(decision, rejections, bool(clusters)), decision)
    name = next(s.name for s in eligible if s.id == chosen.id)
    info = PlacementInfo(
        at=now,
        instance_id=instance_id,
        outcome="scheduled",
        cluster_id=chosen.id,
        cluster_name=name,
        explanation=with_rejections(decision.explain(), rejections),
        decision=typed_decision(decision),
        cluster_rejections=list(rejections.values()),
    )
    return SendTo(chosen.id, name, info, reserve=request, pinned=False)


def _plan_pinned(
    instance_id: str,
    pinned: PinnedCluster,
    rejections: Mapping[str, ClusterRejection],
    now: float,
) -> PlacementPlan:
    name = pinned.ref
    if pinned.cluster_id is None or pinned.cluster_name is None:
        return StayPending(f"cluster {name} (constraints.cluster) is not registered", None)
    if pinned.cluster_id in rejections:
        return StayPending(f"cluster {name} (constraints.cluster) refused it", None)
    if pinned.liveness is not ClusterLiveness.READY:
        what = pinned.liveness.value if pinned.liveness else "unknown"
        return StayPending(f"cluster {name} (constraints.cluster) is {what}", None)
    info = PlacementInfo(
        at=now,
        instance_id=instance_id,
        outcome="forwarded",
        cluster_id=pinned.cluster_id,
        cluster_name=pinned.cluster_name,
        explanation=f"forwarded to cluster {pinned.cluster_name} named by constraints.cluster "
        "(no root scheduling)",
    )
    return SendTo(pinned.cluster_id, pinned.cluster_name, info, reserve=None, pinned=True)


def plan_placements(
    spec: JobSpec,
    replicas: Sequence[int],
    clusters: Sequence[ClusterSnapshot],
    *,
    pinned: PinnedCluster | None,
    existing: Mapping[str, int],
    policy: str,
    rng: random.Random,
) -> list[PlannedPlacement]:
    """Where each replica of `spec` would go now (the dry run of an update):
    `plan_placement` for one replica after the other, each choice reserved (and counted
    for spreading) in a local copy of `clusters` before the next one is made."""
    out: list[PlannedPlacement] = []
    reserved: dict[str, tuple[Request, ...]] = {}
    counts = dict(existing)
    for replica in replicas:
        snaps = [replace(s, reserved=s.reserved + reserved.get(s.id, ())) for s in clusters]
        # `now` only stamps the stored PlacementInfo, which a dry run does not keep
        plan = plan_placement(
            f"replica-{replica}",
            spec,
            snaps,
            {},
            pinned=pinned,
            existing=counts,
            policy=policy,
            rng=rng,
            now=0.0,
        )
        if isinstance(plan, SendTo) and plan.reserve is not None:
            reserved[plan.cluster_id] = (*reserved.get(plan.cluster_id, ()), plan.reserve)
            counts[plan.cluster_id] = counts.get(plan.cluster_id, 0) + 1
        out.append(_planned(replica, plan))
    return out


def _planned(replica: int, plan: PlacementPlan) -> PlannedPlacement:
    """A plan as the dry run shows it."""
    if isinstance(plan, StayPending):
        text = plan.text if plan.text.startswith("pending: ") else f"pending: {plan.text}"
        return PlannedPlacement(
            replica=replica,
            outcome="pending",
            explanation=short(text),
            decision=typed_decision(plan.decision),
        )
    info = plan.info
    return PlannedPlacement(
        replica=replica,
        outcome=info.outcome,
        cluster_id=info.cluster_id,
        cluster_name=info.cluster_name,
        explanation=short(info.explanation),
        decision=info.decision,
    )
