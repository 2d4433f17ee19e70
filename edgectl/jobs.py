"""Job files, the `--wait` verdicts and update bodies (pure helpers of `edgectl jobs`)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from edgectl.client import EdgectlError

__all__ = ["Verdict", "load_job_file", "rollout_verdict", "update_body", "wait_verdict"]

Verdict = Literal["done", "failed", "waiting"]

_ENDED = frozenset({"SUCCEEDED", "FAILED", "TERMINATED", "LOST"})


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


def _replica_failure(job: Mapping[str, Any]) -> str | None:
    """A desired replica that failed for good (no active instance, no retry left)."""
    spec = job.get("spec") or {}
    policy = spec.get("restart_policy", "never")
    max_restarts = int(spec.get("max_restarts", 5))
    desired = int(job.get("desired_replicas", 0))
    latest: dict[int, Mapping[str, Any]] = {}
    active: set[int] = set()
    for inst in job.get("instances") or []:
        replica = int(inst.get("replica", 0))
        if str(inst.get("state")) not in _ENDED or inst.get("terminating"):
            active.add(replica)
        best = latest.get(replica)
        if best is None or float(inst.get("created_at", 0)) >= float(best.get("created_at", 0)):
            latest[replica] = inst
    for replica, inst in sorted(latest.items()):
        if replica >= desired or replica in active or inst.get("state") != "FAILED":
            continue
        if policy == "never" or int(inst.get("restarts", 0)) >= max_restarts:
            reason = str(inst.get("reason") or "failed")
            if inst.get("exit_code") is not None and "exit" not in reason:
                reason += f" (exit code {inst['exit_code']})"
            return f"replica {replica} FAILED: {reason}"
    return None


def _progress(job: Mapping[str, Any]) -> str:
    counts = job.get("instance_counts") or {}
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no instances yet"
    if job.get("reason"):
        text += f"; {job['reason']}"
    return text


def wait_verdict(job: Mapping[str, Any], goal: str) -> tuple[Verdict, str]:
    """Whether a job reached `goal` (``running`` or ``terminated``), failed, or is on its way.

    ``running``: done when the job is RUNNING or SUCCEEDED (or STOPPED at 0 replicas);
    failed when it is FAILED or a desired replica failed for good (restart policy
    ``never``, or its restarts used up). ``terminated``: done when TERMINATED.
    The message says why, or what is still missing.
    """
    state = str(job.get("state", ""))
    if goal == "terminated":
        if state == "TERMINATED":
            return "done", "every instance has ended"
        return "waiting", _progress(job)
    desired = int(job.get("desired_replicas", 0))
    surplus = [
        i
        for i in job.get("instances") or []
        if (str(i.get("state")) not in _ENDED or i.get("terminating"))
        and (i.get("terminating") or int(i.get("replica", 0)) >= desired)
    ]
    if surplus and state in ("RUNNING", "SUCCEEDED", "STOPPED", "DEGRADED"):
        return "waiting", f"{len(surplus)} instance(s) being stopped"
    if state in ("RUNNING", "SUCCEEDED"):
        return "done", "every replica is running" if state == "RUNNING" else "finished"
    if state == "STOPPED" and desired == 0:
        return "done", "scaled to 0, nothing runs"
    if state in ("TERMINATING", "TERMINATED"):
        return "failed", f"is {state} (deleted)"
    failure = _replica_failure(job)
    if state == "FAILED":
        return "failed", f"FAILED: {failure or job.get('reason') or 'replicas failed'}"
    if failure:
        return "failed", failure
    return "waiting", _progress(job)


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
