"""Replica diffing and job state: desired replicas vs instances. Pure.

A job wants replicas 0..desired-1. Each replica number has at most one *active*
(non-terminal) instance. `diff_replicas` says what the reconciler must do:

* scale down: every active instance whose replica number is >= desired is terminated
  (so the highest replica numbers go first and the survivors keep their numbers);
* a desired replica without an active instance gets a new PENDING instance, unless
  its latest instance ended in a way the restart policy says to leave alone:

  ========================  ===========================================================
  latest instance ended     new instance?
  ========================  ===========================================================
  none yet                  yes
  LOST                      yes, always (the cluster vanished, not the task's fault)
  TERMINATED                yes (terminated by the root: scale down then up, or moved)
  FAILED                    if restart_policy is on-failure or always, and fewer than
                            max_restarts replacements were made for this replica
  SUCCEEDED                 if restart_policy is always (same max_restarts bound)
  ========================  ===========================================================

  A node already restarts a task in place per the same policy; the root's
  replacement covers what the node cannot (its instance ended for good).
* a SHED instance (stopped by its node under pressure) whose job says
  ``on_shed: reschedule`` is terminated and replaced on another placement.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas.job import InstanceState, RestartPolicy, ShedAction
from schemas.root_api import JobState as JobState

__all__ = [
    "ACTIVE_STATES",
    "InstanceFacts",
    "JobState",
    "ReplicaPlan",
    "diff_replicas",
    "job_state",
]

ACTIVE_STATES = frozenset(s for s in InstanceState if not s.terminal)


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    """What replica diffing (and rollout planning, root_orchestrator/rollout.py) needs to
    know about one instance.

    `job_version` is the job version it runs; `running_since` when it last became
    RUNNING (None unless RUNNING now); `node_restarts` how often its node restarted it
    in place; `pending_reason` why its latest placement left it PENDING ("" if none).
    """

    id: str
    replica: int
    state: InstanceState
    restarts: int = 0
    created_at: float = 0.0
    terminating: bool = False
    job_version: int = 1
    running_since: float | None = None
    node_restarts: int = 0
    reason: str = ""
    pending_reason: str = ""


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    """What to do: replicas to create (replica number, restarts) and instances to end."""

    create: tuple[tuple[int, int], ...] = ()
    terminate: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the job needs nothing."""
        return not self.create and not self.terminate


def _latest(instances: Iterable[InstanceFacts]) -> dict[int, InstanceFacts]:
    """Per replica, its newest instance (an active one wins over terminal ones)."""
    latest: dict[int, InstanceFacts] = {}
    for inst in instances:
        cur = latest.get(inst.replica)
        key = (not inst.state.terminal, inst.created_at, inst.restarts)
        if cur is None or key > (not cur.state.terminal, cur.created_at, cur.restarts):
            latest[inst.replica] = inst
    return latest


def _replacement(last: InstanceFacts, policy: RestartPolicy, max_restarts: int) -> tuple[bool, int]:
    """Whether a terminal instance's replica gets a new instance, and its restart count."""
    state = last.state
    if state is InstanceState.LOST:
        return True, last.restarts + 1
    if state is InstanceState.TERMINATED:
        return True, last.restarts
    if state is InstanceState.FAILED:
        allowed = policy in (RestartPolicy.ON_FAILURE, RestartPolicy.ALWAYS)
        return allowed and last.restarts < max_restarts, last.restarts + 1
    if state is InstanceState.SUCCEEDED:
        allowed = policy is RestartPolicy.ALWAYS
        return allowed and last.restarts < max_restarts, last.restarts + 1
    return False, last.restarts


def diff_replicas(
    desired: int,
    instances: Sequence[InstanceFacts],
    restart_policy: RestartPolicy = RestartPolicy.NEVER,
    max_restarts: int = 5,
    on_shed: ShedAction = ShedAction.PAUSE,
) -> ReplicaPlan:
    """Compare desired replicas with instances; return what to create and terminate."""
    terminate: list[str] = []
    active_replicas: set[int] = set()
    for inst in sorted(instances, key=lambda i: (-i.replica, i.id)):
        if inst.state.terminal or inst.terminating:
            continue
        if inst.replica >= desired or (
            inst.state is InstanceState.SHED and on_shed is ShedAction.RESCHEDULE
        ):
            terminate.append(inst.id)
        else:
            active_replicas.add(inst.replica)
    by_replica: dict[int, list[InstanceFacts]] = {}
    for inst in instances:
        by_replica.setdefault(inst.replica, []).append(inst)
    create: list[tuple[int, int]] = []
    for replica in range(desired):
        if replica in active_replicas:
            continue
        history = by_replica.get(replica, [])
        if any(not i.state.terminal for i in history):
            # an instance is being terminated (scale down, reschedule after shedding):
            # its replacement comes once it is gone, so a replica never runs twice.
            continue
        if not history:
            create.append((replica, 0))
            continue
        last = _latest(history)[replica]
        wanted, restarts = _replacement(last, restart_policy, max_restarts)
        if wanted:
            create.append((replica, restarts))
    return ReplicaPlan(create=tuple(create), terminate=tuple(terminate))


def _replica_status(
    history: Sequence[InstanceFacts], restart_policy: RestartPolicy, max_restarts: int
) -> InstanceState | None:
    """The state that stands for one replica: its active instance, or its final outcome."""
    if not history:
        return None
    latest = _latest(history)[history[0].replica]
    if not latest.state.terminal:
        return latest.state
    wanted, _ = _replacement(latest, restart_policy, max_restarts)
    return None if wanted else latest.state


def job_state(
    desired: int,
    deleted: bool,
    instances: Sequence[InstanceFacts],
    restart_policy: RestartPolicy = RestartPolicy.NEVER,
    max_restarts: int = 5,
) -> JobState:
    """Summarise a job from its instances.

    TERMINATING/TERMINATED once deleted; STOPPED when scaled to 0 and empty; otherwise
    from each desired replica's status: all RUNNING (or finished successfully) ->
    RUNNING, all SUCCEEDED -> SUCCEEDED, some failed for good -> FAILED (nothing
    running) or DEGRADED, some running -> DEGRADED, none running yet -> PENDING.
    """
    active = [i for i in instances if not i.state.terminal]
    if deleted:
        return JobState.TERMINATING if active else JobState.TERMINATED
    if desired == 0:
        return JobState.TERMINATING if active else JobState.STOPPED
    by_replica: dict[int, list[InstanceFacts]] = {}
    for inst in instances:
        by_replica.setdefault(inst.replica, []).append(inst)
    statuses = [
        _replica_status(by_replica.get(r, []), restart_policy, max_restarts) for r in range(desired)
    ]
    running = sum(1 for s in statuses if s is InstanceState.RUNNING)
    succeeded = sum(1 for s in statuses if s is InstanceState.SUCCEEDED)
    failed = sum(1 for s in statuses if s in (InstanceState.FAILED, InstanceState.TERMINATED))
    if succeeded == desired:
        return JobState.SUCCEEDED
    if running + succeeded == desired:
        return JobState.RUNNING
    if failed and not running:
        return JobState.FAILED if failed + succeeded == desired else JobState.DEGRADED
    if running or failed:
        return JobState.DEGRADED
    return JobState.PENDING
