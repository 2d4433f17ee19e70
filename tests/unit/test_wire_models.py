"""Typed wire models that replaced free-form dicts: old JSON still parses, the same JSON
goes back out, unknown keys are kept within bounds, and placement decisions load."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import ValidationError

from placement import SPREAD, Candidate, Request, place
from schemas.cluster import InstanceChange, InstanceChangeData
from schemas.cluster_api import InstanceView as ClusterInstanceView
from schemas.common import MAX_DATA_KEYS
from schemas.decision import PlacementDecision
from schemas.job import InstanceState, TaskState
from schemas.mqtt import TaskEvent, TaskEventData
from schemas.root_api import PlacementInfo, PlannedPlacement

SHED_EVENT = {
    "instance_id": "i1",
    "state": "PAUSED",
    "previous": "RUNNING",
    "reason": "cpu 97.5% >= 90%",
    "seq": 3,
    "data": {
        "shedder": "pause",
        "signals": ["cpu", "latency"],
        "values": {"cpu": 97.5, "memory": None},
        "thresholds": {"cpu": {"enter": 90.0, "exit": 70.0, "enter_for_s": 5.0, "exit_for_s": 5.0}},
        "cpu_share": {"cores": 4, "owned_percent": 90.0, "foreign_percent": 7.5},
        "priority": 10,
        "on_shed": "pause",
        "latency": {"instance_id": "i2", "priority": 50, "p95_ms": 120.0, "budget_ms": 100.0},
    },
}


def test_task_event_old_json_parses_typed_and_goes_out_unchanged() -> None:
    event = TaskEvent.model_validate_json(json.dumps(SHED_EVENT))
    assert event.data.signals == ["cpu", "latency"]
    assert event.data.thresholds is not None and event.data.thresholds["cpu"].enter == 90.0
    assert event.data.latency is not None and event.data.latency.p95_ms == 120.0
    assert event.data.cpu_share is not None and event.data.cpu_share.cores == 4
    out = json.loads(event.model_dump_json())
    assert {key: out[key] for key in SHED_EVENT} == SHED_EVENT
    assert event.data.as_dict() == SHED_EVENT["data"]


def test_task_event_without_data_sends_an_empty_object() -> None:
    event = TaskEvent(instance_id="i1", state=TaskState.RUNNING)
    assert json.loads(event.model_dump_json())["data"] == {}
    assert event.data.get("restarts") is None and event.data.get("restarts", 0) == 0


def test_unknown_keys_are_kept_and_read_with_get() -> None:
    raw = {"restarts": 2, "restart_in_s": 1.5, "temp": 90, "deep": {"a": [1, {"b": 2}]}}
    data = TaskEventData.model_validate(raw)
    assert data.restarts == 2 and data.get("temp") == 90
    assert data.as_dict() == raw
    assert TaskEventData.model_validate_json(data.model_dump_json()) == data


def test_explicit_nulls_travel_as_given() -> None:
    data = InstanceChangeData.model_validate({"node_name": None, "restarts": 0})
    assert data.as_dict() == {"node_name": None, "restarts": 0}


def test_data_keys_are_bounded() -> None:
    TaskEventData.model_validate({f"k{i}": i for i in range(MAX_DATA_KEYS)})
    with pytest.raises(ValidationError, match="at most"):
        TaskEventData.model_validate({f"k{i}": i for i in range(MAX_DATA_KEYS + 1)})
    with pytest.raises(ValidationError):
        TaskEventData.model_validate({"signals": ["x"] * 65})


def test_known_keys_are_typed() -> None:
    with pytest.raises(ValidationError) as info:
        TaskEventData.model_validate({"restarts": "many"})
    assert "restarts" in str(info.value)
    with pytest.raises(ValidationError):
        TaskEventData.model_validate({"cpu_share": float("nan")})


def test_instance_change_unknown_keys_must_be_storable() -> None:
    with pytest.raises(ValidationError, match="invalid key"):
        InstanceChangeData.model_validate({"a.b": 1})


def test_instance_change_old_json_round_trip() -> None:
    inference = {
        "frames_executed": 29,
        "frames_dropped": 1,
        "latency_p95_ms": 42.0,
        "budget_ms": 100.0,
        "ts": 5.0,
    }
    raw = {
        "instance_id": "i1",
        "job_id": "j1",
        "state": "RUNNING",
        "node_id": "n1",
        "reason": "",
        "ts": 2.0,
        "exit_code": None,
        "data": {"node_name": "edge-1", "restarts": 1, "inference": inference},
    }
    change = InstanceChange.model_validate_json(json.dumps(raw))
    assert change.state is InstanceState.RUNNING
    assert change.data.node_name == "edge-1" and change.data.restarts == 1
    assert change.data.inference is not None and change.data.inference.latency_p95_ms == 42.0
    # the old dict-style reads (root_orchestrator/service.py) see JSON objects
    got = change.data.get("inference")
    assert isinstance(got, dict) and got["latency_p95_ms"] == 42.0
    assert change.data.get("node_name") == "edge-1"
    out = json.loads(change.model_dump_json())
    assert out["data"]["node_name"] == "edge-1" and out["data"]["restarts"] == 1
    assert {k: v for k, v in out["data"]["inference"].items() if k in inference} == inference
    assert InstanceChange.model_validate(out) == change


def _decision(limit: int | None = 10) -> dict[str, object]:
    nodes = [
        Candidate(
            id=f"n{i}",
            name=f"node-{i}",
            free_cpu=float(i),
            free_memory_mib=1024,
            free_disk_mib=1024,
            capacity_cpu=4.0,
            capacity_memory_mib=1024,
            capacity_disk_mib=1024,
            runtimes=frozenset({"native"}),
            archs=frozenset({"amd64"}),
        )
        for i in range(4)
    ]
    request = Request(cpu=1.5, memory_mib=0, runtime="native")
    decision = place(request, nodes, SPREAD, random.Random(1))
    return decision.to_dict(limit=limit)


def test_placement_decision_loads_what_to_dict_writes() -> None:
    stored = _decision()
    typed = PlacementDecision.model_validate(stored)
    assert typed.chosen is not None and typed.chosen.id in {"n2", "n3"}
    assert typed.considered == 4 and typed.feasible == 2
    assert typed.model_dump(mode="json") == json.loads(json.dumps(stored))


def test_placement_decision_in_both_views() -> None:
    stored = _decision()
    info = PlacementInfo.model_validate(
        {"at": 1.0, "outcome": "scheduled", "explanation": "x", "decision": stored}
    )
    assert isinstance(info.decision, PlacementDecision)
    planned = PlannedPlacement(replica=0, outcome="pending", explanation="x", decision=stored)
    assert planned.decision is not None and planned.decision.considered == 4
    # the root's stored form reads into the typed view (from_attributes)
    from root_orchestrator.models import PlacementInfo as StoredPlacementInfo

    record = StoredPlacementInfo(at=1.0, outcome="scheduled", explanation="x", decision=stored)
    assert PlacementInfo.model_validate(record).decision == PlacementDecision.model_validate(stored)


def test_cluster_view_reads_an_empty_placement_as_never_placed() -> None:
    assert "placement" in ClusterInstanceView.model_fields
    field = ClusterInstanceView.model_fields["placement"]
    assert field.default is None
    # older decisions with extra keys still load; missing ones default
    old = PlacementDecision.model_validate({"explanation": "chose n1", "extra": 1})
    assert old.explanation == "chose n1" and old.scores == []
