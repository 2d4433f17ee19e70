"""One message per fact (issue 12), counted on a real broker.

A real cluster orchestrator on a real Mosquitto; a counter subscribed as the broker admin
to ``edge/v1/nodes/+/#`` sees every message of every node in both directions. With a
real node engine a deploy costs one DEPLOY and one ack (which carries the RUNNING), a
terminate one TERMINATE and one ack (carrying the TERMINATED). When that single message
is lost, the level (the next status) corrects the cluster within one status period; and
an engine of protocol revision 1 (separate task events, acks without `event`) is still
understood.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.mqtt import AckMessage, decode
from tests.fixtures.broker import BrokerHandle
from tests.harness.cluster_process import ClusterProcess
from tests.harness.engine_process import NodeEngineProcess
from tests.harness.procs import count_processes
from tests.harness.wait import wait_for
from tests.harness.wire import WireCounter
from tests.integration.test_cluster_dispatch import (
    JOIN,
    SimNode,
    api,
    get,
    join,
    wait_ready,
)

pytestmark = [pytest.mark.broker]

STATUS = ("status", "status")


@pytest.fixture
def cluster(mosquitto_broker: BrokerHandle, tmp_path: Path) -> Iterator[ClusterProcess]:
    """A cluster with 0.5 s statuses and a 3 s ack timeout (well past one status)."""
    proc = ClusterProcess(
        tmp_path / "cluster",
        broker_port=mosquitto_broker.port,
        broker_admin_password=mosquitto_broker.admin_password,
        operator_token="operator-token",
        join_token=JOIN,
        extra_args=["--ack-timeout", "3.0", "--status-interval", "0.5"],
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def sims() -> Iterator[list[SimNode]]:
    made: list[SimNode] = []
    yield made
    for sim in made:
        sim.close()


@pytest.fixture
def wire(mosquitto_broker: BrokerHandle) -> Iterator[WireCounter]:
    counter = WireCounter.connect(
        mosquitto_broker.host,
        mosquitto_broker.port,
        mosquitto_broker.admin_username,
        mosquitto_broker.admin_password,
        keep=True,
    )
    try:
        yield counter
    finally:
        counter.close()


def place(cluster: ClusterProcess, iid: str, command: list[str]) -> dict[str, Any]:
    body = {
        "instance_id": iid,
        "job_id": "j",
        "job_name": "j",
        "spec": {"runtime": "native", "command": command},
    }
    with api(cluster) as client:
        response = client.post("/api/v1/instances", json=body)
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


def not_status(key: tuple[str, str]) -> bool:
    return key == STATUS


def test_a_deploy_and_a_terminate_cost_two_messages_each(cluster, wire, tmp_path) -> None:
    engine = NodeEngineProcess(tmp_path / "node", cluster.url, join_token=JOIN, name="n1")
    engine.start()
    try:
        wait_ready(cluster, 1)
        command = ["sleep", f"3600.{uuid.uuid4().int % 10**6:06d}"]
        wire.wait_idle()
        before = wire.snapshot()
        seen = len(wire.seen)
        place(cluster, "i1", command)
        wait_for(lambda: get(cluster, "i1")["state"] == "RUNNING", 15, "i1 RUNNING")
        wire.wait_idle(quiet=0.5)
        assert wire.since(before, skip=not_status) == {
            ("commands", "deploy"): 1,
            ("events", "ack"): 1,
        }
        (ack,) = [decode(json.dumps(m)) for _t, m in wire.seen[seen:] if m["kind"] == "ack"]
        assert isinstance(ack, AckMessage) and ack.payload.accepted
        assert ack.payload.event is not None and ack.payload.event.state.value == "RUNNING"
        states = [e["state"] for e in get(cluster, "i1")["events"] if e["kind"] == "instance.state"]
        assert states == ["SCHEDULED", "ASSIGNED", "RUNNING"]
        assert count_processes(command) == 1

        before = wire.snapshot()
        seen = len(wire.seen)
        with api(cluster) as client:
            assert client.delete("/api/v1/instances/i1").status_code == 202
        wait_for(lambda: get(cluster, "i1")["state"] == "TERMINATED", 15, "i1 TERMINATED")
        wire.wait_idle(quiet=0.5)
        assert wire.since(before, skip=not_status) == {
            ("commands", "terminate"): 1,
            ("events", "ack"): 1,
        }
        (ack,) = [decode(json.dumps(m)) for _t, m in wire.seen[seen:] if m["kind"] == "ack"]
        assert isinstance(ack, AckMessage)
        assert ack.payload.event is not None and ack.payload.event.state.value == "TERMINATED"
        wait_for(lambda: count_processes(command) == 0, 10, "task process gone")
    finally:
        engine.stop_quietly()


def test_a_lost_ack_is_corrected_by_the_next_status(cluster, mosquitto_broker, sims, wire) -> None:
    """The deploy's one message (the ack carrying RUNNING) never arrives: the node's
    next status (every 0.3 s here) puts the instance RUNNING and stands in for the ack,
    so nothing is left waiting to time out and move the instance off the node that runs
    it."""
    node = SimNode(mosquitto_broker, join(cluster, "lossy"), "lost-ack")
    sims.append(node)
    wait_ready(cluster, 1)
    place(cluster, "i1", ["true"])
    wait_for(lambda: get(cluster, "i1")["state"] == "RUNNING", 2.0, "RUNNING from a status")
    assert get(cluster, "i1")["node_name"] == "lossy"
    assert not any(m["kind"] in ("ack", "task_event") for _t, m in wire.seen)
    with api(cluster) as client:
        assert "edge_cluster_acks_by_status_total 1" in client.get("/metrics").text
        assert client.get("/api/v1/stats").json()["pending_commands"] == 0
    assert [k for k, _ in node.kinds()] == ["deploy"]  # no retry elsewhere, no terminate


def test_an_engine_of_revision_1_is_understood(cluster, mosquitto_broker, sims) -> None:
    """Separate STARTING and RUNNING task events, then an ack without `event`."""
    node = SimNode(mosquitto_broker, join(cluster, "old"), "v1")
    sims.append(node)
    wait_ready(cluster, 1)
    place(cluster, "i1", ["true"])
    wait_for(lambda: get(cluster, "i1")["state"] == "RUNNING", 10, "i1 RUNNING")
    states = [e["state"] for e in get(cluster, "i1")["events"] if e["kind"] == "instance.state"]
    assert states == ["SCHEDULED", "ASSIGNED", "STARTING", "RUNNING"]


def test_an_engine_of_revision_2_is_understood(cluster, mosquitto_broker, sims) -> None:
    node = SimNode(mosquitto_broker, join(cluster, "new"), "v2")
    sims.append(node)
    wait_ready(cluster, 1)
    place(cluster, "i1", ["true"])
    wait_for(lambda: get(cluster, "i1")["state"] == "RUNNING", 10, "i1 RUNNING")
    states = [e["state"] for e in get(cluster, "i1")["events"] if e["kind"] == "instance.state"]
    assert states == ["SCHEDULED", "ASSIGNED", "RUNNING"]
