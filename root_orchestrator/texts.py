"""Pure text and document helpers of the root (explanations, event documents, references)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from placement import Decision
from schemas.cluster import ClusterReport
from schemas.common import ID_PATTERN, MAX_TEXT, NAME_PATTERN
from schemas.root_api import ClusterRejection


def short(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to `limit` characters (with an ellipsis), as stored reasons are."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_reasons(reasons: Mapping[str, int], noun: str = "node") -> str:
    """Rejection counts by reason as text: ``2 nodes: no memory, 1 node: ...``."""
    parts = []
    for reason, count in reasons.items():
        parts.append(f"{count} {noun}{'' if count == 1 else 's'}: {reason}")
    return ", ".join(parts)


def soonest(a: float | None, b: float | None) -> float | None:
    """The smaller of two optional delays (None: none)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def where(**fields: str | None) -> dict[str, Any]:
    """An equality filter of the given fields that are not None."""
    return {k: v for k, v in fields.items() if v is not None}


def event_out(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored event document as the API shows it (EventRecord fields)."""
    return {
        "id": doc["_id"],
        "seq": doc["seq"],
        "ts": doc["ts"],
        "kind": doc["kind"],
        "subject": doc["subject"],
        "job_id": doc.get("job_id"),
        "instance_id": doc.get("instance_id"),
        "node_id": doc.get("node_id"),
        "cluster_id": doc.get("cluster_id"),
        "state": doc.get("state"),
        "reason": doc.get("reason", ""),
        "data": doc.get("data") or {},
    }


def with_rejections(text: str, rejections: Mapping[str, ClusterRejection]) -> str:
    """An explanation followed by what each refusing cluster said."""
    if not rejections:
        return text
    refused = "; ".join(
        f"cluster {r.cluster_name} refused: {r.explanation}" for r in rejections.values()
    )
    return f"{text}; {refused}"


def pending_text(
    decision: Decision, rejections: Mapping[str, ClusterRejection], any_cluster: bool
) -> str:
    """Why an instance stays PENDING, from the decision and the clusters' refusals."""
    if not any_cluster:
        return "pending: no cluster is registered"
    parts = []
    if decision.considered:
        parts.append(decision.explain())
    refused = [f"cluster {r.cluster_name} refused: {r.explanation}" for r in rejections.values()]
    if not parts and refused:
        parts.append("no candidate fits: every cluster refused")
    return "pending: " + "; ".join(parts + refused)


def capacity_grew(old: ClusterReport, new: ClusterReport) -> bool:
    """True if the new report may fit something the old one did not."""
    if new.free.cpu > old.free.cpu or new.free.memory_mib > old.free.memory_mib:
        return True
    if new.free.disk_mib > old.free.disk_mib:
        return True
    if new.largest_free_cpu > old.largest_free_cpu:
        return True
    if new.largest_free_memory_mib > old.largest_free_memory_mib:
        return True
    if set(new.runtimes) - set(old.runtimes) or set(new.archs) - set(old.archs):
        return True
    return any(
        new.free.accelerators.get(k, 0) > old.free.accelerators.get(k, 0)
        for k in new.free.accelerators
    )


ID_RE = re.compile(ID_PATTERN)
NAME_RE = re.compile(NAME_PATTERN)


def shown(ref: str, limit: int = 80) -> str:
    """A reference quoted for an error message, shortened when it is long."""
    if len(ref) <= limit:
        return repr(ref)
    return f"{ref[:limit]!r}... ({len(ref)} characters)"
