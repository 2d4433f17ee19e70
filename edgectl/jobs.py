"""Job files, the `--wait` verdicts and update bodies (pure helpers of `edgectl jobs`)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from edgectl.client import EdgectlError

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


def _latest_by_replica(job: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    """Per replica number, its newest instance (an active one wins over ended ones)."""
    latest: dict[int, Mapping[str, Any]] = {}
    for inst in job.get("instances") or []:
        replica = int(inst.get("replica", 0))
        key = (_active(inst), float(inst.get("created_at", 0)), int(inst.get("restarts", 0)))
        best = latest.get(replica)
        if best is None or key >= (
            _active(best),
            float(best.get("created_at", 0)),
            int(best.get("restarts", 0)),
        ):
            latest[replica] = inst
    return latest


def _active(inst: Mapping[str, Any]) -> bool:
    return str(inst.get("state")) not in _ENDED or bool(inst.get("terminating"))


def _failure_text(inst: Mapping[str, Any]) -> str:
    reason = str(inst.get("reason") or "failed")
    if inst.get("exit_code") is not None and "exit" not in reason:
        reason += f" (exit code {inst['exit_code']})"
    return reason


def _replica_failure(job: Mapping[str, Any], known: frozenset[str]) -> str | None:
    """The newest FAILED instance of a desired replica, unless in `known` (failures
    that were there before the wait began), as ``replica N FAILED: reason``.

    Any FAILED instance counts, retries left or not: the job did not come up healthy,
    which is what `--wait` answers. When the restart policy starts it again, the
    message says so.
    """
    spec = job.get("spec") or {}
    policy = spec.get("restart_policy", "never")
    max_restarts = int(spec.get("max_restarts", 5))
    desired = int(job.get("desired_replicas", 0))
    failed = [
        i
        for i in job.get("instances") or []
        if i.get("state") == "FAILED"
        and int(i.get("replica", 0)) < desired
        and str(i.get("id", "")) not in known
    ]
    if not failed:
        return None
    inst = max(failed, key=lambda i: float(i.get("updated_at", i.get("created_at", 0)) or 0))
    text = f"replica {inst.get('replica', 0)} FAILED: {_failure_text(inst)}"
    restarts = int(inst.get("restarts", 0))
    if policy in ("on-failure", "always") and restarts < max_restarts:
        text += f" (restart policy {policy}: restart {restarts + 1} of {max_restarts} follows)"
    return text


def failed_ids(job: Mapping[str, Any]) -> frozenset[str]:
    """Ids of the job's FAILED instances (the failures a later wait must not count)."""
    return frozenset(
        str(i.get("id", "")) for i in job.get("instances") or [] if i.get("state") == "FAILED"
    )


def _progress(job: Mapping[str, Any]) -> str:
    counts = job.get("instance_counts") or {}
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no instances yet"
    if job.get("reason"):
        text += f"; {job['reason']}"
    return text


def _steady_key(job: Mapping[str, Any]) -> tuple[tuple[int, str, str, int], ...] | None:
    """What must not change during the settle window, or None when not every desired
    replica is RUNNING (or finished with success for good) with nothing extra running."""
    desired = int(job.get("desired_replicas", 0))
    spec = job.get("spec") or {}
    policy = spec.get("restart_policy", "never")
    for inst in job.get("instances") or []:
        if _active(inst) and (inst.get("terminating") or int(inst.get("replica", 0)) >= desired):
            return None
    latest = _latest_by_replica(job)
    key: list[tuple[int, str, str, int]] = []
    for replica in range(desired):
        inst = latest.get(replica)
        if inst is None:
            return None
        state = str(inst.get("state"))
        ok = state == "RUNNING" or (
            state == "SUCCEEDED" and not inst.get("terminating") and policy != "always"
        )
        if not ok:
            return None
        key.append((replica, str(inst.get("id", "")), state, int(inst.get("restarts", 0))))
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
    job: Mapping[str, Any],
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
    state = str(job.get("state", ""))

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
    desired = int(job.get("desired_replicas", 0))
    deleted = job.get("deleted_at") is not None or (
        state in ("TERMINATING", "TERMINATED") and desired > 0
    )
    if deleted:
        return step("failed", f"is {state} (deleted)")
    failure = _replica_failure(job, memo.known_failures)
    if failure:
        return step("failed", failure)
    if state == "FAILED":
        return step("failed", f"FAILED: {job.get('reason') or 'its replicas failed'}")
    active = [i for i in job.get("instances") or [] if _active(i)]
    if desired == 0 and not active and state in ("STOPPED", ""):
        return step("done", "scaled to 0, nothing runs")
    if state == "SUCCEEDED" and not active:
        return step("done", "every replica finished with success")
    key = _steady_key(job) if desired > 0 else None
    if key is None:
        surplus = [i for i in active if i.get("terminating") or int(i.get("replica", 0)) >= desired]
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


def update_body(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a job file (`wanted`) whose values differ from the job's spec now.

    Fields the file leaves out are left as they are. A sub-object (``resources``,
    ``env``, ``constraints``, ``update``) that differs is sent whole: it replaces the
    field, and the root decides whether that changes anything (a partial sub-object
    that only spells out defaults changes nothing).
    """
    return {key: value for key, value in wanted.items() if current.get(key) != value}


def rollout_verdict(job: Mapping[str, Any], version: int) -> tuple[Verdict, str]:
    """Whether the rollout of job version `version` completed, failed, or goes on.

    Done when it is complete; failed when it rolled back, stopped (failed), was
    cancelled (job deleted) or was superseded by a newer version; the message says
    why, or how far it is.
    """
    rollout = job.get("rollout") or {}
    latest = int(job.get("latest_version") or version)
    to_version = int(rollout.get("to_version") or version)
    if latest > version or to_version > version:
        return "failed", f"version {version} was superseded by version {max(latest, to_version)}"
    state = str(rollout.get("state") or "")
    reason = str(rollout.get("reason") or "")
    counts = (
        f"{rollout.get('updated', 0)}/{rollout.get('replicas', 0)} updated, "
        f"{rollout.get('healthy', 0)} healthy, {rollout.get('unavailable', 0)} unavailable"
    )
    if state == "complete":
        return "done", f"version {version} rolled out ({counts})"
    if state == "rolled_back":
        return "failed", reason or f"rolled back to version {rollout.get('from_version')}"
    if state == "failed":
        return "failed", f"rollout of version {version} failed: {reason}"
    if state == "cancelled":
        return "failed", f"rollout of version {version} cancelled: {reason or 'job deleted'}"
    if state == "rolling_back":
        return "waiting", f"rolling back to version {rollout.get('from_version')}: {reason}"
    waiting = str(rollout.get("waiting") or "")
    return "waiting", f"{counts}" + (f"; {waiting}" if waiting else "")
