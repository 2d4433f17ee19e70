"""Full, valid answers of the root's API for edgectl's tests, from short test dicts.

A test names only what it is about (``{"state": "FAILED", "exit_code": 3}``); these
helpers fill every other required field with a plain value and validate the result
as the root's response model (schemas/root_api.py; nodes as schemas/cluster_api.py
``NodeDetail``), so what edgectl reads is what a real root could send. ``*_doc``
variants give the JSON the root would send (``model_dump(mode="json")``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.cluster_api import NodeDetail
from schemas.root_api import (
    ClusterView,
    EventRecord,
    InstanceView,
    JobSummary,
    JobView,
    NodeActionResult,
    RolloutView,
)

__all__ = [
    "cluster",
    "event",
    "instance",
    "job",
    "job_doc",
    "node",
    "node_action",
    "node_doc",
    "summary",
]


def _placement(doc: Mapping[str, Any] | None, at: float) -> dict[str, Any] | None:
    if doc is None:
        return None
    return {"at": at, "explanation": "", "outcome": "scheduled", **doc}


def _instance(doc: Mapping[str, Any], job_id: str) -> dict[str, Any]:
    iid = str(doc.get("id", f"{job_id}-{doc.get('replica', 0)}-0"))
    created = doc.get("created_at", 1.0)
    out: dict[str, Any] = {
        "id": iid,
        "job_id": job_id,
        "replica": 0,
        "state": "PENDING",
        "created_at": created,
        "updated_at": created,
        **doc,
    }
    out["placement"] = _placement(doc.get("placement"), out["updated_at"])
    return out


def instance(doc: Mapping[str, Any], job_id: str = "j0001") -> InstanceView:
    """An InstanceView from the fields a test gives."""
    return InstanceView.model_validate(_instance(doc, job_id))


def _rollout(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    base = {
        "state": "progressing",
        "from_version": 1,
        "to_version": 2,
        "started_at": 1.0,
        "progress_at": 1.0,
        "replicas": 0,
        "updated": 0,
        "healthy": 0,
        "unavailable": 0,
        "old_instances": 0,
    }
    out = {**base, **doc}
    out.setdefault("target_version", out["to_version"])
    return out


def _job(doc: Mapping[str, Any]) -> dict[str, Any]:
    jid = str(doc.get("id", "j0001"))
    name = str(doc.get("name", "web"))
    given_spec = dict(doc.get("spec") or {})
    runtime = given_spec.get("runtime", doc.get("runtime", "native"))
    spec: dict[str, Any] = {"name": name, "runtime": runtime}
    if runtime == "docker":
        spec["image"] = "busybox"
    else:
        spec["command"] = ["sleep", "60"]
    spec.update(given_spec)
    created = doc.get("created_at", 1.0)
    out: dict[str, Any] = {
        "id": jid,
        "name": name,
        "state": "PENDING",
        "desired_replicas": 1,
        "actual_replicas": 0,
        "priority": spec.get("priority", 100),
        "runtime": runtime,
        "created_at": created,
        "updated_at": created,
        **doc,
        "spec": spec,
    }
    out["instances"] = [_instance(i, jid) for i in doc.get("instances") or []]
    out["placement"] = _placement(doc.get("placement"), out["updated_at"])
    out["rollout"] = _rollout(doc.get("rollout"))
    return out


def job(doc: Mapping[str, Any] | None = None, **over: Any) -> JobView:
    """A JobView from the fields a test gives (`doc`, then `over`)."""
    return JobView.model_validate(_job({**(doc or {}), **over}))


def job_doc(doc: Mapping[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    """`job` as the JSON the root sends."""
    return job(doc, **over).model_dump(mode="json")


def summary(doc: Mapping[str, Any] | None = None, **over: Any) -> JobSummary:
    """A JobSummary (a row of `GET /jobs`) from the fields a test gives."""
    full = _job({**(doc or {}), **over})
    return JobSummary.model_validate({k: full[k] for k in JobSummary.model_fields if k in full})


def _report(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    return {"ts": 1.0, "seq": 1, **doc}


def cluster(doc: Mapping[str, Any] | None = None, **over: Any) -> ClusterView:
    """A ClusterView from the fields a test gives."""
    given = {**(doc or {}), **over}
    name = str(given.get("name", "c1"))
    out: dict[str, Any] = {
        "id": f"cid-{name}",
        "name": name,
        "url": f"http://{name}.test:8100",
        "liveness": "READY",
        "liveness_since": 1.0,
        "registered_at": 1.0,
        **given,
    }
    out["report"] = _report(given.get("report"))
    return ClusterView.model_validate(out)


def _node(doc: Mapping[str, Any]) -> dict[str, Any]:
    info_given = dict(doc.get("info") or {})
    name = str(info_given.get("name", "n1"))
    info = {
        "name": name,
        "hostname": name,
        "arch": "amd64",
        "cpu_cores": 4,
        "memory_mib": 4096,
        "disk_mib": 10240,
        **info_given,
    }
    out: dict[str, Any] = {"id": f"nid-{name}", "liveness": "READY", **doc, "info": info}
    status = doc.get("status")
    if status is not None:
        tasks = [
            {"instance_id": f"t{i}", "state": "RUNNING", "runtime": "native", **t}
            for i, t in enumerate(status.get("tasks") or [])
        ]
        memory = {"total_mib": 4096, "available_mib": 2048, "used_percent": 50.0}
        out["status"] = {
            "ts": 1.0,
            "seq": 1,
            "cpu_percent": 0.0,
            "disk": {"total_mib": 10240, "free_mib": 5120, "used_percent": 50.0},
            **status,
            "memory": {**memory, **(status.get("memory") or {})},
            "tasks": tasks,
        }
    return out


def node(doc: Mapping[str, Any] | None = None, **over: Any) -> NodeDetail:
    """A NodeDetail (a node of a cluster's API) from the fields a test gives."""
    return NodeDetail.model_validate(_node({**(doc or {}), **over}))


def node_doc(doc: Mapping[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    """`node` as the JSON a cluster (and the root, passing it on) sends."""
    return node(doc, **over).model_dump(mode="json")


def node_action(doc: Mapping[str, Any]) -> NodeActionResult:
    """A NodeActionResult whose `node` is a full node document."""
    return NodeActionResult.model_validate(
        {
            "cluster_id": "cid-c1",
            "cluster_name": "c1",
            "action": "drain",
            **doc,
            "node": node_doc(doc.get("node") or {}),
        }
    )


def event(doc: Mapping[str, Any] | None = None, **over: Any) -> EventRecord:
    """An EventRecord from the fields a test gives."""
    given = {**(doc or {}), **over}
    seq = int(given.get("seq", 1))
    return EventRecord.model_validate(
        {"id": f"e{seq}", "ts": 1.0, "kind": "job.submitted", "subject": "j0001", **given}
    )


def rollout(doc: Mapping[str, Any]) -> RolloutView:
    """A RolloutView from the fields a test gives."""
    return RolloutView.model_validate(_rollout(doc))
