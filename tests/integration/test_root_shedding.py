"""Shedding as the root sees it: a cluster (played by a real HTTP server) reports an
instance SHED by its node with the shedder's reason, then RUNNING again, with the
inference worker's figures in the changes; `GET /api/v1/jobs/{id}` shows the state, the
reason and the figures, and the events keep the history."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from root_orchestrator.app import create_app
from schemas.cluster import InstanceChange
from schemas.job import InstanceState
from tests.harness.wait import wait_for
from tests.integration.test_root_scheduling import all_assigned, events, settings_for, submit
from tests.integration.test_root_scheduling import job as get_job
from tests.integration.test_root_support import AUTH, FakeClock, FakeCluster, job_body

FIGURES = {
    "frames_executed": 14,
    "frames_dropped": 1,
    "latency_p50_ms": 21.0,
    "latency_p95_ms": 48.5,
    "latency_p99_ms": 60.0,
    "budget_violations": 0,
    "budget_ms": 100.0,
    "ts": 1.0,
}


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    fake = FakeCluster("a").start()
    yield fake
    fake.stop()


@pytest.fixture
def root(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tmp_path), clock=FakeClock())) as client:
        yield client


def instance_of(root: TestClient, job_id: str) -> dict[str, Any]:
    (inst,) = get_job(root, job_id)["instances"]
    return dict(inst)


def test_shed_and_resume_reach_the_root_with_reason_and_inference_figures(
    root: TestClient, cluster: FakeCluster
) -> None:
    cluster.register(root)
    cluster.report(root)
    body = job_body("detector", priority=10, latency_budget_ms=100, on_shed="pause")
    created = submit(root, body)
    wait_for(lambda: all_assigned(1, "a")(get_job(root, created["id"])), 10, "instance assigned")
    iid = instance_of(root, created["id"])["id"]

    def change(state: InstanceState, reason: str, figures: dict[str, Any] | None) -> None:
        data: dict[str, Any] = {"node_name": "a-n1", "restarts": 0}
        if figures is not None:
            data["inference"] = figures
        update = InstanceChange(
            instance_id=iid,
            job_id=created["id"],
            state=state,
            node_id="a-n1",
            reason=reason,
            ts=time.time(),
            data=data,
        )
        cluster.report(root, changes=[update], full=False)

    change(InstanceState.RUNNING, "task running on a-n1", FIGURES)
    inst = instance_of(root, created["id"])
    assert inst["state"] == "RUNNING" and inst["inference"]["latency_p95_ms"] == 48.5
    assert inst["inference"]["budget_ms"] == 100.0

    shed_reason = "shed (pause): cpu 97.0% >= 90% for 5s"
    change(InstanceState.SHED, shed_reason, FIGURES)
    inst = instance_of(root, created["id"])
    assert inst["state"] == "SHED" and inst["reason"] == shed_reason
    view = get_job(root, created["id"])
    assert view["actual_replicas"] == 0  # a paused replica does not count as running

    change(InstanceState.RUNNING, "resumed: pressure clear for 10s (cpu 40.0 <= 70)", None)
    inst = instance_of(root, created["id"])
    assert inst["state"] == "RUNNING" and inst["reason"].startswith("resumed:")
    assert inst["inference"] is None  # the latest change carried none

    history = [
        (e["state"], e["reason"]) for e in events(root, instance_id=iid, kind="instance.state")
    ]
    assert ("SHED", shed_reason) in history and history[-1][0] == "RUNNING"
    # a paused (on_shed: pause) instance is left alone: no replacement, no termination
    assert cluster.deletes == [] and len(cluster.placed) == 1
    listed = root.get(f"/api/v1/jobs/{created['id']}", headers=AUTH).json()
    assert len(listed["instances"]) == 1
