"""Rolling updates: which instances to start and stop to move a job to a new version. Pure.

A spec change that alters what runs creates a new *job version*; the job's *target*
becomes that version and a *rollout* replaces the instances of older versions, a few
at a time, under the job's `UpdateStrategy`. Everything here is a function of instance
facts (`replicas.InstanceFacts`), the persisted `Rollout` and a clock value passed in,
like `replicas.diff_replicas`: the service applies the result, the dry run
(`simulate`) replays it on invented facts.

Rules (`plan_rollout`), with D desired replicas, B the replicas RUNNING when the
rollout began, floor = min(D, B) - max_unavailable and cap = D + max_surge:

* an instance is *available* when it is RUNNING and not being stopped, and, if it runs
  the target version, has been RUNNING without a break for `min_healthy_s` (healthy);
* an old-version instance that is not RUNNING is stopped at once (it costs nothing);
* an old RUNNING instance whose replica has a healthy target instance is stopped if
  the available instances stay >= floor;
* a replica that has an old instance and no target one gets a target instance beside
  it (surge) while the instances that run or will run (every desired replica counts
  once even before its instance exists) stay <= cap;
* with `max_unavailable`, old RUNNING instances of replicas without a target instance
  are stopped (highest replica first) while the available instances stay >= floor;
  `diff_replicas` creates their replacement once they are gone;
* a desired replica without any active instance whose latest instance ran another
  version is created again at the target version (a new version gets every replica,
  whatever the restart policy said about the old one);
* forward only: a target instance that ended FAILED, or more than
  `MAX_ROLLOUT_RESTARTS` node restarts and losses of target instances, fail the
  rollout; so does no progress (no more healthy target replicas) for
  `progress_deadline_s`, forward or back;
* complete when no instance of another version is active and every desired replica
  has a healthy target instance.

States: ``progressing`` -> ``complete``; ``progressing`` -> (failure, auto_rollback)
``rolling_back`` -> ``rolled_back``; failure without auto_rollback, or a rollback
that misses its deadline -> ``failed`` (nothing more is started or stopped);
delete -> ``cancelled``. A new spec change during a rollout starts a new one from the
last complete version (newest wins).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from root_orchestrator.replicas import InstanceFacts, ReplicaPlan, diff_replicas
from schemas.job import InstanceState, RestartPolicy, ShedAction, UpdateStrategy
from schemas.root_api import RolloutState as RolloutState

__all__ = [
    "MAX_ROLLOUT_RESTARTS",
    "Batch",
    "Merged",
    "Rollout",
    "RolloutCounts",
    "RolloutState",
    "RolloutStep",
    "is_healthy",
    "merge_plans",
    "plan_rollout",
    "rollout_counts",
    "simulate",
]

#: Node restarts plus losses of target-version instances that fail a rollout.
MAX_ROLLOUT_RESTARTS = 3


@dataclass(frozen=True, slots=True)
class Rollout:
    """The persisted status of a job's latest rollout (part of the job record).

    `from_version` is the last complete version (where a rollback goes), `to_version`
    the version rolled out; `baseline` the replicas RUNNING when the rollout began;
    `healthy` the most healthy target replicas seen so far and `progress_at` when that
    number last grew (the progress deadline runs from there).
    """

    state: RolloutState
    from_version: int
    to_version: int
    started_at: float
    progress_at: float
    baseline: int
    healthy: int = 0
    reason: str = ""
    finished_at: float | None = None

    @property
    def active(self) -> bool:
        """True while the rollout still replaces instances."""
        return self.state.active

    @property
    def target_version(self) -> int:
        """The version instances are being moved to (the old one while rolling back)."""
        return self.from_version if self.state is RolloutState.ROLLING_BACK else self.to_version

    @property
    def stable_version(self) -> int:
        """The last version known good: a rollback (or the next rollout) starts from it."""
        return self.to_version if self.state is RolloutState.COMPLETE else self.from_version

    def to_doc(self) -> dict[str, Any]:
        """A JSON-ready mapping for the job document."""
        return {
            "state": self.state.value,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "started_at": self.started_at,
            "progress_at": self.progress_at,
            "baseline": self.baseline,
            "healthy": self.healthy,
            "reason": self.reason,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Rollout:
        """Rebuild from `to_doc` output."""
        return cls(
            state=RolloutState(doc["state"]),
            from_version=int(doc["from_version"]),
            to_version=int(doc["to_version"]),
            started_at=float(doc["started_at"]),
            progress_at=float(doc["progress_at"]),
            baseline=int(doc.get("baseline", 0)),
            healthy=int(doc.get("healthy", 0)),
            reason=str(doc.get("reason", "")),
            finished_at=doc.get("finished_at"),
        )


@dataclass(frozen=True, slots=True)
class RolloutCounts:
    """How far a rollout is, for the job view and the events.

    `updated`: desired replicas whose active instances all run the target version;
    `healthy`: desired replicas with a healthy target instance; `available`: instances
    of desired replicas RUNNING (target ones only once healthy) and not being stopped;
    `unavailable`:
    desired replicas short of available instances; `old`: active instances of other
    versions; `total`: active instances.
    """

    replicas: int
    updated: int
    healthy: int
    available: int
    unavailable: int
    old: int
    total: int


@dataclass(frozen=True, slots=True)
class RolloutStep:
    """What one look at a rollout decided.

    `verdict`: ``continue`` (apply `create` and `terminate`), ``complete`` or
    ``failed`` (with `reason`). `create` holds (replica, why) for new target
    instances, `terminate` (instance id, why) for old ones. `waiting` says what the
    rollout waits for.
    """

    verdict: Literal["continue", "complete", "failed"]
    counts: RolloutCounts
    reason: str = ""
    create: tuple[tuple[int, str], ...] = ()
    terminate: tuple[tuple[str, str], ...] = ()
    waiting: str = ""


def is_healthy(inst: InstanceFacts, now: float, min_healthy_s: float) -> bool:
    """RUNNING, not being stopped, and RUNNING without a break for `min_healthy_s`."""
    return (
        inst.state is InstanceState.RUNNING
        and not inst.terminating
        and inst.running_since is not None
        and now - inst.running_since >= min_healthy_s
    )


def _available(inst: InstanceFacts, target: int, now: float, min_healthy_s: float) -> bool:
    if inst.state is not InstanceState.RUNNING or inst.terminating:
        return False
    return inst.job_version != target or is_healthy(inst, now, min_healthy_s)


def _live(instances: Sequence[InstanceFacts]) -> list[InstanceFacts]:
    return [i for i in instances if not i.state.terminal]


def _by_replica(instances: Sequence[InstanceFacts]) -> dict[int, list[InstanceFacts]]:
    out: dict[int, list[InstanceFacts]] = {}
    for inst in instances:
        out.setdefault(inst.replica, []).append(inst)
    return out


def rollout_counts(
    desired: int,
    instances: Sequence[InstanceFacts],
    target: int,
    now: float,
    min_healthy_s: float,
) -> RolloutCounts:
    """Count a job's instances against its target version (see `RolloutCounts`)."""
    live = _live(instances)
    by_replica = _by_replica(live)
    updated = healthy = 0
    for replica in range(desired):
        group = by_replica.get(replica, [])
        has_old = any(i.job_version != target for i in group)
        has_new = any(i.job_version == target and not i.terminating for i in group)
        updated += has_new and not has_old
        healthy += any(i.job_version == target and is_healthy(i, now, min_healthy_s) for i in group)
    # replicas >= desired are being scaled down: they do not keep the job available
    available = sum(
        1 for i in live if i.replica < desired and _available(i, target, now, min_healthy_s)
    )
    return RolloutCounts(
        replicas=desired,
        updated=updated,
        healthy=healthy,
        available=available,
        unavailable=max(0, desired - available),
        old=sum(1 for i in live if i.job_version != target),
        total=len(live),
    )


def _failure(instances: Sequence[InstanceFacts], target: int) -> str:
    """Why the target version fails ("" if it does not, as far as can be told)."""
    new = sorted((i for i in instances if i.job_version == target), key=lambda i: i.created_at)
    for inst in new:
        if inst.state is InstanceState.FAILED:
            why = inst.reason or "failed"
            return f"instance {inst.id} (replica {inst.replica}) of version {target} FAILED: {why}"
    restarts = sum(i.node_restarts for i in new) + sum(
        1 for i in new if i.state is InstanceState.LOST
    )
    if restarts >= MAX_ROLLOUT_RESTARTS:
        return (
            f"version {target} keeps restarting: {restarts} restarts or losses of its instances "
            f"(limit {MAX_ROLLOUT_RESTARTS})"
        )
    return ""


def _waiting(
    desired: int, live: Sequence[InstanceFacts], target: int, now: float, min_healthy_s: float
) -> str:
    """What keeps the rollout from completing, shortly."""
    parts: list[str] = []
    by_replica = _by_replica(live)
    for replica in range(desired):
        new = [
            i for i in by_replica.get(replica, []) if i.job_version == target and not i.terminating
        ]
        if any(is_healthy(i, now, min_healthy_s) for i in new):
            continue
        if not new:
            parts.append(f"replica {replica}: no version {target} instance yet")
            continue
        inst = max(new, key=lambda i: i.created_at)
        if inst.state is InstanceState.RUNNING and inst.running_since is not None:
            parts.append(
                f"replica {replica}: RUNNING for {max(0.0, now - inst.running_since):.1f}s "
                f"of {min_healthy_s:g}s"
            )
        elif inst.pending_reason:
            parts.append(f"replica {replica}: {inst.pending_reason}")
        else:
            parts.append(f"replica {replica}: {inst.state.value}")
    old = sum(1 for i in live if i.job_version != target)
    shown = "; ".join(parts[:3]) + (f" (+{len(parts) - 3} more)" if len(parts) > 3 else "")
    if old:
        shown = f"{shown}; " if shown else ""
        shown += f"{old} instance(s) of other versions still active"
    return shown


def plan_rollout(
    rollout: Rollout,
    desired: int,
    instances: Sequence[InstanceFacts],
    strategy: UpdateStrategy,
    now: float,
) -> RolloutStep:
    """Decide the next starts and stops of an active rollout (rules: module docstring)."""
    target = rollout.target_version
    min_healthy = strategy.min_healthy_s
    counts = rollout_counts(desired, instances, target, now, min_healthy)
    live = _live(instances)
    if not rollout.active:
        return RolloutStep("continue", counts)
    forward = rollout.state is RolloutState.PROGRESSING
    if forward:
        failure = _failure(instances, target)
        if failure:
            return RolloutStep("failed", counts, reason=failure)
    waiting = _waiting(desired, live, target, now, min_healthy)
    if counts.old == 0 and counts.healthy == desired:
        return RolloutStep("complete", counts)
    stalled = now - rollout.progress_at
    if stalled > strategy.progress_deadline_s and counts.healthy <= rollout.healthy:
        what = "rollout" if forward else "rollback"
        return RolloutStep(
            "failed",
            counts,
            reason=f"{what} to version {target} made no progress for {stalled:.0f}s "
            f"(progress_deadline_s {strategy.progress_deadline_s:g}): {waiting}",
            waiting=waiting,
        )

    floor = max(0, min(desired, rollout.baseline) - strategy.max_unavailable)
    cap = desired + strategy.max_surge
    by_replica = _by_replica(live)
    missing = sum(1 for r in range(desired) if r not in by_replica)
    total = len(live) + missing  # every desired replica will have an instance
    available = counts.available
    stopping: set[str] = set()
    terminate: list[tuple[str, str]] = []
    create: list[tuple[int, str]] = []

    def old_running(replica: int) -> list[InstanceFacts]:
        return [
            i
            for i in by_replica.get(replica, [])
            if i.job_version != target
            and not i.terminating
            and i.id not in stopping
            and i.state is InstanceState.RUNNING
        ]

    def has_new(replica: int) -> bool:
        return any(
            i.job_version == target and not i.terminating for i in by_replica.get(replica, [])
        )

    # 1. old instances that do not run cost nothing to replace
    for inst in sorted(live, key=lambda i: (i.replica, i.id)):
        if inst.replica >= desired or inst.terminating or inst.job_version == target:
            continue
        if inst.state is not InstanceState.RUNNING:
            stopping.add(inst.id)
            terminate.append((inst.id, f"replaced by version {target} (it was {inst.state.value})"))
    # 2. an old instance whose replica has a healthy target instance
    for replica in range(desired):
        group = by_replica.get(replica, [])
        healthy = next(
            (i for i in group if i.job_version == target and is_healthy(i, now, min_healthy)),
            None,
        )
        if healthy is None:
            continue
        for old in old_running(replica):
            if available - 1 < floor:
                break
            stopping.add(old.id)
            available -= 1
            terminate.append(
                (old.id, f"replaced by healthy instance {healthy.id} of version {target}")
            )
    # 3. surge: a target instance beside an old one
    surged: set[int] = set()
    for replica in range(desired):
        if total >= cap:
            break
        if has_new(replica) or not old_running(replica):
            continue
        surged.add(replica)
        total += 1
        create.append((replica, f"version {target} started beside the old instance (max_surge)"))
    # 4. unavailability budget: stop old instances first, their replacement follows
    for replica in reversed(range(desired)):
        if replica in surged or has_new(replica):
            continue
        for old in old_running(replica):
            if available - 1 < floor:
                break
            stopping.add(old.id)
            available -= 1
            terminate.append(
                (
                    old.id,
                    f"stopped to make room for version {target} "
                    f"(max_unavailable {strategy.max_unavailable})",
                )
            )
    # 5. replicas whose last instance (another version) ended: back at the target
    ended = _by_replica([i for i in instances if i.state.terminal])
    for replica in range(desired):
        if replica in by_replica or replica in surged:
            continue
        history = ended.get(replica, [])
        if not history:
            continue
        latest = max(history, key=lambda i: (i.created_at, i.restarts))
        if latest.job_version != target:
            create.append(
                (replica, f"replica {replica} recreated at version {target} (the rollout)")
            )
    return RolloutStep(
        "continue",
        counts,
        create=tuple(create),
        terminate=tuple(terminate),
        waiting=waiting,
    )


@dataclass(frozen=True, slots=True)
class Merged:
    """Replica diffing and a rollout step together, each replica and instance once.

    `create`: (replica, restarts, why or None for the diff's own reason);
    `terminate`: (instance id, why or None).
    """

    create: tuple[tuple[int, int, str | None], ...] = ()
    terminate: tuple[tuple[str, str | None], ...] = ()


def merge_plans(
    diff: ReplicaPlan,
    step: RolloutStep | None,
    instances: Sequence[InstanceFacts],
    target: int,
) -> Merged:
    """Combine `diff_replicas` with a rollout step.

    A replica whose latest instance ran another version starts its restart count
    afresh at the target version (a new version has its own restart budget).
    """
    latest: dict[int, InstanceFacts] = {}
    for inst in instances:
        cur = latest.get(inst.replica)
        if cur is None or (inst.created_at, inst.restarts) > (cur.created_at, cur.restarts):
            latest[inst.replica] = inst
    create: dict[int, tuple[int, int, str | None]] = {}
    for replica, restarts in diff.create:
        last = latest.get(replica)
        fresh = last is not None and last.job_version != target
        create[replica] = (replica, 0 if fresh else restarts, None)
    terminate: dict[str, tuple[str, str | None]] = {iid: (iid, None) for iid in diff.terminate}
    if step is not None:
        for replica, why in step.create:
            create.setdefault(replica, (replica, 0, why))
        for iid, why in step.terminate:
            terminate.setdefault(iid, (iid, why))
    return Merged(
        create=tuple(create[r] for r in sorted(create)),
        terminate=tuple(terminate.values()),
    )


@dataclass(frozen=True, slots=True)
class Batch:
    """One step of a simulated rollout: replicas started, instances stopped (with why),
    the fewest available instances and the most instances (those being stopped still
    count) during the step."""

    step: int
    start: tuple[int, ...]
    stop: tuple[tuple[str, str], ...]
    available_at_least: int
    instances_at_most: int


def simulate(
    rollout: Rollout,
    desired: int,
    instances: Sequence[InstanceFacts],
    strategy: UpdateStrategy,
    now: float,
    *,
    restart_policy: RestartPolicy = RestartPolicy.NEVER,
    max_restarts: int = 5,
    on_shed: ShedAction = ShedAction.PAUSE,
    max_steps: int = 4000,
) -> tuple[list[Batch], str]:
    """Replay a rollout assuming every new instance is placed at once and becomes
    healthy after `min_healthy_s`, and every stop completes before the next step.

    Returns the batches and how the replay ended (``complete`` or why it stopped).
    The same `plan_rollout`, `diff_replicas` and `merge_plans` the service applies.
    """
    facts = [i for i in instances]
    tick = max(strategy.min_healthy_s, 0.001)
    clock = now
    batches: list[Batch] = []
    serial = 0
    for _ in range(max_steps):
        step = plan_rollout(rollout, desired, facts, strategy, clock)
        if step.verdict == "complete":
            return batches, "complete"
        if step.verdict == "failed":
            return batches, step.reason
        target = rollout.target_version
        diff = diff_replicas(desired, facts, restart_policy, max_restarts, on_shed)
        merged = merge_plans(diff, step, facts, target)
        if merged.create or merged.terminate:
            stops = {iid for iid, _why in merged.terminate}
            running = sum(1 for i in facts if not i.state.terminal)
            after = [i for i in facts if i.id not in stops and not i.state.terminal]
            avail = sum(
                1
                for i in after
                if i.replica < desired and _available(i, target, clock, strategy.min_healthy_s)
            )
            batches.append(
                Batch(
                    step=len(batches) + 1,
                    start=tuple(r for r, _restarts, _why in merged.create),
                    stop=tuple(
                        (iid, why or "scaled down or replaced") for iid, why in merged.terminate
                    ),
                    available_at_least=avail,
                    instances_at_most=running + len(merged.create),
                )
            )
            nxt: list[InstanceFacts] = []
            for inst in facts:
                if inst.id in stops:
                    nxt.append(replace(inst, state=InstanceState.TERMINATED, running_since=None))
                else:
                    nxt.append(inst)
            for replica, restarts, _why in merged.create:
                serial += 1
                nxt.append(
                    InstanceFacts(
                        id=f"(new r{replica}.{serial})",
                        replica=replica,
                        state=InstanceState.RUNNING,
                        restarts=restarts,
                        created_at=clock + serial * 1e-6,
                        job_version=target,
                        running_since=clock,
                    )
                )
            facts = nxt
        elif not any(
            i.job_version == target and not i.state.terminal and not i.terminating for i in facts
        ):
            return batches, f"stuck: {step.waiting or 'nothing to start or stop'}"
        clock += tick
        counts = rollout_counts(desired, facts, target, clock, strategy.min_healthy_s)
        if counts.healthy > rollout.healthy:
            rollout = replace(rollout, healthy=counts.healthy, progress_at=clock)
        elif clock - rollout.progress_at > strategy.progress_deadline_s:
            rollout = replace(rollout, progress_at=clock)  # the replay never stalls on time
    return batches, "stopped replaying after too many steps"
