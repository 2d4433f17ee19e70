"""A stored placement of the root: typed `PlacementInfo` (with its `PlacementDecision`)
in memory, JSON in the store; documents in the older form (the decision as a plain
object, `{}` for none) still load. Against SQLite and the MongoDB-wire servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from root_orchestrator.app import create_app
from root_orchestrator.records import INSTANCES, InstanceRecord
from schemas.decision import PlacementDecision
from schemas.root_api import PlacementInfo
from store import open_store
from tests.fixtures.mongo import MONGO_PARAMS, mongo_url_for
from tests.harness.wait import wait_for
from tests.integration.test_root_api import make_settings
from tests.integration.test_root_support import AUTH, FakeClock, job_body

STORE_PARAMS = [pytest.param("sqlite", id="sqlite"), *MONGO_PARAMS]

#: a decision as `placement.Decision.to_dict` wrote it before the record was typed,
#: with a key this version does not know and without `tied` and `truncated`
OLD_DECISION: dict[str, Any] = {
    "chosen": {"id": "c1", "name": "edge-a", "score": 71.5},
    "policy": "binpack",
    "noun": "cluster",
    "considered": 2,
    "feasible": 1,
    "rejections": {"insufficient cpu": 1},
    "rejected": {"insufficient cpu": ["c2"]},
    "scores": [{"id": "c1", "score": 71.5, "breakdown": {"binpack": 71.5}}],
    "explanation": "chose edge-a (score 71.5) among 1 feasible; 1 rejected: insufficient cpu",
    "from_an_older_version": True,
}


def old_placement(decision: Any = OLD_DECISION) -> dict[str, Any]:
    return {
        "at": 50.0,
        "instance_id": "j1-0-0",
        "outcome": "scheduled",
        "cluster_id": "c1",
        "cluster_name": "edge-a",
        "explanation": "chose edge-a",
        "decision": decision,
        "cluster_rejections": [],
    }


def old_instance(placement: Any) -> dict[str, Any]:
    return {
        "_id": "j1-0-0",
        "job_id": "j1",
        "replica": 0,
        "state": "SCHEDULED",
        "created_at": 40.0,
        "updated_at": 50.0,
        "cluster_id": "c1",
        "placement": placement,
    }


@pytest.fixture(params=STORE_PARAMS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'root.db'}"
    return mongo_url_for(request, str(request.param))


@pytest.mark.parametrize(
    ("stored", "decision"),
    [
        pytest.param(
            old_placement(), PlacementDecision.model_validate(OLD_DECISION), id="old decision"
        ),
        pytest.param(old_placement({}), None, id="old empty decision"),
        pytest.param(old_placement(None), None, id="no decision"),
    ],
)
def test_an_old_placement_document_loads_typed_and_is_stored_back_as_json(
    store_url: str, stored: dict[str, Any], decision: PlacementDecision | None
) -> None:
    with open_store(store_url) as store:
        store.put(INSTANCES, old_instance(stored))
        doc = store.get(INSTANCES, "j1-0-0")
        assert doc is not None
        record = InstanceRecord.from_doc(doc)
        assert isinstance(record.placement, PlacementInfo)
        assert record.placement.decision == decision
        assert (record.placement.outcome, record.placement.cluster_id) == ("scheduled", "c1")
        # written back in the typed form's JSON, it loads to the same record
        store.put(INSTANCES, record.to_doc())
        again = store.get(INSTANCES, "j1-0-0")
        assert again is not None
        assert InstanceRecord.from_doc(again).placement == record.placement
        if decision is not None:
            assert again["placement"]["decision"]["tied"] == 0
            assert "from_an_older_version" not in again["placement"]["decision"]


@pytest.mark.parametrize("empty", [None, {}], ids=["null", "empty object"])
def test_an_empty_placement_means_never_placed(store_url: str, empty: Any) -> None:
    with open_store(store_url) as store:
        store.put(INSTANCES, old_instance(empty))
        doc = store.get(INSTANCES, "j1-0-0")
        assert doc is not None
        assert InstanceRecord.from_doc(doc).placement is None
        assert InstanceRecord.from_doc(doc).to_doc()["placement"] is None


def test_the_root_starts_over_an_old_placement_and_shows_it(store_url: str) -> None:
    """A store written by an older root (instance placements in the old form) loads at
    start, and the job view shows the decisions typed."""
    settings = make_settings(store_url)
    clock = FakeClock()
    with TestClient(create_app(settings, clock=clock)) as c:
        job = c.post("/api/v1/jobs", json=job_body("old", replicas=1), headers=AUTH).json()
        wait_for(
            lambda: c.get(f"/api/v1/jobs/{job['id']}", headers=AUTH).json()["placement"],
            10,
            "the first placement attempt",
        )
    iid, ended = job["instances"][0]["id"], f"{job['id']}-0-9"
    with open_store(store_url) as store:
        doc = store.get(INSTANCES, iid)
        assert doc is not None and doc["placement"]["outcome"] == "pending"
        # an older root kept the decision as a plain object ({} while none was made)
        doc["placement"] = {**doc["placement"], "at": 10.0, "decision": {}}
        store.put(INSTANCES, doc)
        # and an instance that ran before, placed by the scheduler
        store.put(
            INSTANCES,
            {
                **old_instance({**old_placement(), "instance_id": ended, "at": 60.0}),
                "_id": ended,
                "job_id": job["id"],
                "state": "TERMINATED",
            },
        )
    with TestClient(create_app(settings, clock=clock)) as c:
        view = c.get(f"/api/v1/jobs/{job['id']}", headers=AUTH).json()
    by_id = {i["id"]: i for i in view["instances"]}
    assert by_id[iid]["placement"]["decision"] is None
    assert by_id[iid]["placement"]["explanation"] == "pending: no cluster is registered"
    shown = by_id[ended]["placement"]["decision"]
    assert shown["chosen"] == OLD_DECISION["chosen"]
    assert shown["rejected"] == {"insufficient cpu": ["c2"]}
    assert "from_an_older_version" not in shown
    assert view["placement"]["at"] == 60.0  # the job shows its latest placement
