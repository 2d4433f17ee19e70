"""Job files, the `--wait` verdicts and update bodies (pure helpers of `edgectl jobs`)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from edgectl.client import EdgectlError
from schemas.job import JobSpec
from schemas.root_api import InstanceView, JobView

__all__ = [
    "DEFAULT_SETTLE_S",
    "Verdict",
    "WaitMemo",
    "WaitStep",
    "failed_ids",
    "load_job_file",
    "rollout_verdict",
    "update_body",
    "wait_verdict",
]

Verdict = Literal["done", "failed", "waiting"]

_ENDED = frozenset({"SUCCEEDED", "FAILED", "TERMINATED", "LOST"})

#: Seconds every replica must stay RUNNING before `--wait` calls a job up.
DEFAULT_SETTLE_S = 5.0


def load_job_file(path: str) -> dict[str, Any]:
    """The job spec in a YAML or JSON file (``-``: standard input), as a mapping.

    The spec itself is validated by the root (its 422 names each field at fault).
    """
    name = "standard input" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except FileNotFoundError:
        raise EdgectlError(f"job file {name} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgectlError(f"cannot read job file {name}: {exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise EdgectlError(f"job file {name} is not valid YAML or JSON: {problem}{where}") from None
    if not isinstance(doc, dict):
        raise EdgectlError(
            f"job file {name} must hold one job spec (a mapping with name, runtime, ...), "
            f"not {type(doc).__name__}"
        )
    return doc


def _latest_by_replica(job: JobView) -> dict[int, InstanceView]:
    """Per replica number, its newest instance (an active one wins over ended ones)."""
    latest: dict[int, InstanceView] = {}
    for inst in job.instances:
        key = (_active(inst), inst.created_at, inst.restarts)
        best = latest.get(inst.replica)
        if best is None or key >= (_active(best), best.created_at, best.restarts):
            latest[inst.replica] = inst
    return latest


def _active(inst: InstanceView) -> bool:
    return inst.state not in _ENDED or inst.terminating


def _failure_text(inst: InstanceView) -> str:
    reason = inst.reason or "failed"
    if inst.exit_code is not None and "exit" not in reason:
        reason += f" (exit code {inst.exit_code})"
    return reason


def _replica_failure(job: JobView, known: frozenset[str]) -> str | None:
    """The newest FAILED instance of a desired replica, unless in `known` (failures
    that were there before the wait began), as ``replica N FAILED: reason``.

    Any FAILED instance counts, retries left or not: the job did not come up healthy,
    which is what `--wait` answers. When the restart policy starts it again, the
    message says so.
    """
    policy = job.spec.restart_policy
    max_restarts = job.spec.max_restarts
    desired = job.desired_replicas
    failed = [
        i
        for i in job.instances
        if i.state == "FAILED" and i.replica < desired and i.id not in known
    ]
    if not failed:
        return None
    inst = max(failed, key=lambda i: i.updated_at)
    text = f"replica {inst.replica} FAILED: {_failure_text(inst)}"
    restarts = inst.restarts
    if policy in ("on-failure", "always") and restarts < max_restarts:
        text += f" (restart policy {policy}: restart {restarts + 1} of {max_restarts} follows)"
    return text


def failed_ids(job: JobView) -> frozenset[str]:
    """Ids of the job's FAILED instances (the failures a later wait must not count)."""
    return frozenset(i.id for i in job.instances if i.state == "FAILED")


def _progress(job: JobView) -> str:
    counts = job.instance_counts
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no instances yet"
    if job.reason:
        text += f"; {job.reason}"
    return text


def _steady_key(job: JobView) -> tuple[tuple[int, str, str, int], ...] | None:
    """What must not change during the settle window, or None when not every desired
    replica is RUNNING (or finished with success for good) with nothing extra running."""
    desired = job.desired_replicas
    policy = job.spec.restart_policy
    for inst in job.instances:
        if _active(inst) and (inst.terminating or inst.replica >= desired):
            return None
    latest = _latest_by_replica(job)
    key: list[tuple[int, str, str, int]] = []
    for replica in range(desired):
        newest = latest.get(replica)
        if newest is None:
            return None
        state = str(newest.state)
        ok = state == "RUNNING" or (
            state == "SUCCEEDED" and not newest.terminating and policy != "always"
        )
        if not ok:
            return None
        key.append((replica, newest.id, state, newest.restarts))
    return tuple(key)


@dataclass(frozen=True, slots=True)
class WaitMemo:
    """What the verdict remembers between two polls of the same wait."""

    started: float
    known_failures: frozenset[str] = frozenset()
    steady_since: float | None = None
    steady_key: tuple[tuple[int, str, str, int], ...] | None = None


@dataclass(frozen=True, slots=True)
class WaitStep:
    """One verdict: done, failed or waiting; why; and the memo for the next poll."""

    verdict: Verdict
    message: str
    memo: WaitMemo


def wait_verdict(
    job: JobView,
    goal: str,
    *,
    now: float,
    memo: WaitMemo | None = None,
    settle: float = DEFAULT_SETTLE_S,
    timeout: float | None = None,
) -> WaitStep:
    """Whether a job reached `goal` (``running`` or ``terminated``), failed, or is on its way.

    Pure: `now` is the caller's clock (any monotonic seconds), `memo` what the previous
    call returned (None on the first poll; a wait on a job that already ran starts
    with ``WaitMemo(now, failed_ids(job))`` so that old failures do not count).

    ``running``: done once every desired replica has been RUNNING, the same instances
    without a restart, for `settle` seconds (a job that finished with success for
    good, or one scaled to 0 with nothing left, is done at once); failed as soon as
    the job is FAILED or deleted, or an instance of a desired replica FAILED (its
    reason and exit code in the message), or when `timeout` seconds passed since the
    first poll (with the pending reason). ``terminated``: done when TERMINATED.
    """
    memo = memo or WaitMemo(started=now)
    state = str(job.state)

    def step(verdict: Verdict, message: str, **changes: Any) -> WaitStep:
        return WaitStep(verdict, message, replace(memo, **changes) if changes else memo)

    def late(message: str) -> WaitStep | None:
        if timeout is not None and now - memo.started >= timeout:
            return step("failed", f"not {goal} after {timeout:g}s: {message}")
        return None

    if goal == "terminated":
        if state == "TERMINATED":
            return step("done", "every instance has ended")
        return late(_progress(job)) or step("waiting", _progress(job))
    desired = job.desired_replicas
    deleted = job.deleted_at is not None or (state in ("TERMINATING", "TERMINATED") and desired > 0)
    if deleted:
        return step("failed", f"is {state} (deleted)")
    failure = _replica_failure(job, memo.known_failures)
    if failure:
        return step("failed", failure)
    if state == "FAILED":
        return step("failed", f"FAILED: {job.reason or 'its replicas failed'}")
    active = [i for i in job.instances if _active(i)]
    if desired == 0 and not active and state in ("STOPPED", ""):
        return step("done", "scaled to 0, nothing runs")
    if state == "SUCCEEDED" and not active:
        return step("done", "every replica finished with success")
    key = _steady_key(job) if desired > 0 else None
    if key is None:
        surplus = [i for i in active if i.terminating or i.replica >= desired]
        message = (
            f"{len(surplus)} instance(s) being stopped" if surplus and desired else _progress(job)
        )
        return late(message) or step("waiting", message, steady_since=None, steady_key=None)
    since = memo.steady_since if memo.steady_key == key and memo.steady_since is not None else now
    steady = now - since
    if steady >= settle:
        return step(
            "done",
            f"every replica is running (steady for {steady:.1f}s)",
            steady_since=since,
            steady_key=key,
        )
    message = f"every replica is running; settling ({steady:.1f}s of {settle:g}s)"
    return late(message) or step("waiting", message, steady_since=since, steady_key=key)


def update_body(current: JobSpec, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a job file (`wanted`) whose values differ from the job's spec now
    (`current`, compared as the JSON the root sends).

    Fields the file leaves out are left as they are. A sub-object (``resources``,
    ``env``, ``constraints``, ``update``) that differs is sent whole: it replaces the
    field, and the root decides whether that changes anything (a partial sub-object
    that only spells out defaults changes nothing).
    """
    now = current.model_dump(mode="json")
    return {key: value for key, value in wanted.items() if now.get(key) != value}


def rollout_verdict(job: JobView, version: int) -> tuple[Verdict, str]:
    """Whether the rollout of job version `version` completed, failed, or goes on.

    Done when it is complete; failed when it rolled back, stopped (failed), was
    cancelled (job deleted) or was superseded by a newer version; the message says
    why, or how far it is.
    """
    rollout = job.rollout
    latest = job.latest_version or version
    to_version = (rollout.to_version if rollout is not None else 0) or version
    if latest > version or to_version > version:
        return "failed", f"version {version} was superseded by version {max(latest, to_version)}"
    if rollout is None:
        return "waiting", "0/0 updated, 0 healthy, 0 unavailable"
    state = str(rollout.state)
    reason = rollout.reason
    counts = (
        f"{rollout.updated}/{rollout.replicas} updated, "
        f"{rollout.healthy} healthy, {rollout.unavailable} unavailable"
    )
    if state == "complete":
        return "done", f"version {version} rolled out ({counts})"
    if state == "rolled_back":
        return "failed", reason or f"rolled back to version {rollout.from_version}"
    if state == "failed":
        return "failed", f"rollout of version {version} failed: {reason}"
    if state == "cancelled":
        return "failed", f"rollout of version {version} cancelled: {reason or 'job deleted'}"
    if state == "rolling_back":
        return "waiting", f"rolling back to version {rollout.from_version}: {reason}"
    waiting = rollout.waiting
    return "waiting", f"{counts}" + (f"; {waiting}" if waiting else "")
