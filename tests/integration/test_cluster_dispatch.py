"""Dispatch over the real wire: a real broker and orchestrator, nodes simulated with MQTT.

The simulated nodes use the credentials the orchestrator issued at join (their own
dynsec clients), publish real status messages and answer commands the way a test
wants: accept, refuse, or stay silent.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas.common import Runtime
from schemas.job import TaskState
from schemas.mqtt import (
    AckMessage,
    CommandAck,
    DeployMessage,
    StatusMessage,
    TaskEvent,
    TaskEventMessage,
    TerminateMessage,
    decode,
    encode,
)
from schemas.node import DiskStatus, MemoryStatus, NodeStatus, TaskStatus
from tests.fixtures.broker import BrokerHandle
from tests.harness.cluster_process import ClusterProcess
from tests.harness.wait import wait_for

pytestmark = [pytest.mark.broker]

JOIN = "join-token"
OPERATOR = "operator-token"


class SimNode:
    """A node speaking MQTT with its own credentials; `mode` says how it answers DEPLOY:

    * ``accept``: an ack, then a RUNNING task event;
    * ``v1``: what an engine of protocol revision 1 sends: STARTING and RUNNING task
      events, then the ack (no `event` in it);
    * ``v2``: what an engine of revision 2 sends: only the ack, carrying the RUNNING;
    * ``lost-ack``: runs the task (its statuses list it RUNNING) but its ack never
      arrives (the one message of a deploy lost);
    * ``refuse``: a refusing ack; ``silent``: nothing at all.
    """

    def __init__(self, broker: BrokerHandle, joined: dict[str, Any], mode: str) -> None:
        self.id: str = joined["node_id"]
        self.mode = mode
        self.commands: list[Any] = []
        self.tasks: dict[str, TaskState] = {}
        self.probe = broker.probe(
            joined["mqtt"]["username"],
            joined["mqtt"]["password"],
            client_id=joined["mqtt"]["client_id"],
        )
        assert self.probe.connected
        self.probe.subscribe(f"edge/v1/nodes/{self.id}/commands")
        self.stop = threading.Event()
        self.seq = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _status(self) -> None:
        self.seq += 1
        tasks = [
            TaskStatus(instance_id=i, state=s, runtime=Runtime.NATIVE)
            for i, s in self.tasks.items()
        ]
        message = StatusMessage(
            node_id=self.id,
            payload=NodeStatus(
                ts=time.time(),
                seq=self.seq,
                cpu_percent=1.0,
                memory=MemoryStatus(total_mib=2048, available_mib=2000, used_percent=2),
                disk=DiskStatus(total_mib=1000, free_mib=900, used_percent=10),
                tasks=tasks,
            ),
        )
        self.probe.publish(f"edge/v1/nodes/{self.id}/status", encode(message), qos=0)

    def _send(self, message: AckMessage | TaskEventMessage) -> None:
        self.probe.client.publish(f"edge/v1/nodes/{self.id}/events", encode(message), qos=1)

    def _run(self) -> None:
        next_status = 0.0
        while not self.stop.is_set():
            if time.monotonic() >= next_status:
                self._status()
                next_status = time.monotonic() + 0.3
            try:
                raw = self.probe.messages.get(timeout=0.05)
            except Exception:
                continue
            command = decode(raw.payload, topic_name=raw.topic)
            self.commands.append(command)
            if isinstance(command, DeployMessage):
                if self.mode == "silent":
                    continue
                if self.mode in ("v1", "v2", "lost-ack"):
                    self._deploy_as(command)
                    continue
                accepted = self.mode == "accept"
                self._send(
                    AckMessage(
                        node_id=self.id,
                        payload=CommandAck(
                            command_id=command.id,
                            command_kind="deploy",
                            instance_id=command.payload.instance_id,
                            accepted=accepted,
                            reason="" if accepted else "no such image here",
                        ),
                    )
                )
                if accepted:
                    self.tasks[command.payload.instance_id] = TaskState.RUNNING
                    self._send(
                        TaskEventMessage(
                            node_id=self.id,
                            payload=TaskEvent(
                                instance_id=command.payload.instance_id, state=TaskState.RUNNING
                            ),
                        )
                    )
            elif isinstance(command, TerminateMessage):
                self.tasks.pop(command.payload.instance_id, None)
                self._send(
                    AckMessage(
                        node_id=self.id,
                        payload=CommandAck(
                            command_id=command.id,
                            command_kind="terminate",
                            instance_id=command.payload.instance_id,
                            accepted=True,
                        ),
                    )
                )

    def _deploy_as(self, command: DeployMessage) -> None:
        iid = command.payload.instance_id
        self.tasks[iid] = TaskState.RUNNING
        running = TaskEvent(instance_id=iid, state=TaskState.RUNNING, seq=self.seq)
        if self.mode == "lost-ack":
            return
        ack = CommandAck(
            command_id=command.id, command_kind="deploy", instance_id=iid, accepted=True
        )
        if self.mode == "v1":
            for state, previous in (
                (TaskState.STARTING, None),
                (TaskState.RUNNING, TaskState.STARTING),
            ):
                event = TaskEvent(instance_id=iid, state=state, previous=previous, reason="deploy")
                self._send(TaskEventMessage(node_id=self.id, payload=event))
        else:
            ack = ack.model_copy(update={"event": running})
        self._send(AckMessage(node_id=self.id, payload=ack))

    def kinds(self) -> list[tuple[str, str]]:
        return [(c.kind, c.payload.instance_id) for c in list(self.commands)]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.probe.close()


@pytest.fixture
def cluster(mosquitto_broker: BrokerHandle, tmp_path: Path) -> Iterator[ClusterProcess]:
    proc = ClusterProcess(
        tmp_path / "cluster",
        broker_port=mosquitto_broker.port,
        broker_admin_password=mosquitto_broker.admin_password,
        operator_token=OPERATOR,
        join_token=JOIN,
        extra_args=["--ack-timeout", "1.0"],
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def join(cluster: ClusterProcess, name: str) -> dict[str, Any]:
    body = {
        "info": {
            "name": name,
            "hostname": name,
            "arch": "amd64",
            "cpu_cores": 2,
            "memory_mib": 2048,
            "disk_mib": 1000,
            "runtimes": ["native"],
        }
    }
    response = httpx.post(
        cluster.url + "/api/v1/nodes",
        json=body,
        headers={"authorization": f"Bearer {JOIN}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def api(cluster: ClusterProcess) -> httpx.Client:
    return httpx.Client(
        base_url=cluster.url, timeout=10, headers={"authorization": f"Bearer {OPERATOR}"}
    )


def wait_ready(cluster: ClusterProcess, count: int) -> None:
    def ready() -> bool:
        with api(cluster) as client:
            nodes = client.get("/api/v1/nodes", params={"liveness": "READY"}).json()
        return bool(nodes["count"] == count)

    wait_for(ready, 15, f"{count} nodes READY")


@pytest.fixture
def sims(mosquitto_broker: BrokerHandle) -> Iterator[list[SimNode]]:
    made: list[SimNode] = []
    yield made
    for sim in made:
        with contextlib.suppress(Exception):
            sim.close()


def place(cluster: ClusterProcess, iid: str) -> dict[str, Any]:
    body = {
        "instance_id": iid,
        "job_id": "j",
        "job_name": "j",
        "spec": {"runtime": "native", "command": ["true"]},
    }
    with api(cluster) as client:
        result: dict[str, Any] = client.post("/api/v1/instances", json=body).json()
    return result


def get(cluster: ClusterProcess, iid: str) -> dict[str, Any]:
    with api(cluster) as client:
        result: dict[str, Any] = client.get(f"/api/v1/instances/{iid}").json()
    return result


def test_refusal_moves_to_the_next_node(cluster, mosquitto_broker, sims) -> None:
    refuser = SimNode(mosquitto_broker, join(cluster, "refuser"), "refuse")
    acceptor = SimNode(mosquitto_broker, join(cluster, "acceptor"), "accept")
    sims += [refuser, acceptor]
    wait_ready(cluster, 2)
    for i in range(4):
        assert place(cluster, f"i{i}")["accepted"]
    for i in range(4):
        wait_for(lambda i=i: get(cluster, f"i{i}")["state"] == "RUNNING", 15, f"i{i} RUNNING")
        assert get(cluster, f"i{i}")["node_name"] == "acceptor"
    refused = [iid for kind, iid in refuser.kinds() if kind == "deploy"]
    assert refused, "spread placement should have tried the refusing node at least once"
    reasons = " ".join(e["reason"] for e in get(cluster, refused[0])["events"])
    assert "refuser refused: no such image here" in reasons


def test_silent_and_refusing_nodes_fail_the_instance(cluster, mosquitto_broker, sims) -> None:
    silent = SimNode(mosquitto_broker, join(cluster, "silent"), "silent")
    refuser = SimNode(mosquitto_broker, join(cluster, "refuser"), "refuse")
    sims += [silent, refuser]
    wait_ready(cluster, 2)
    assert place(cluster, "x")["accepted"]
    wait_for(lambda: get(cluster, "x")["state"] == "FAILED", 15, "x FAILED")
    inst = get(cluster, "x")
    assert "no other node fits" in inst["reason"] or "gave up" in inst["reason"]
    # the silent node was told to drop what it may start later
    wait_for(lambda: ("terminate", "x") in silent.kinds(), 10, "terminate to silent node")
    text = " ".join(e["reason"] for e in inst["events"])
    assert "no ack from silent" in text or "refuser refused" in text


def test_batch_placement_answers_each_in_order_and_spreads(cluster, mosquitto_broker, sims) -> None:
    """POST /instances/batch: one answer per request, in order, each decided as a single
    placement would be (reservations made in turn: the two nodes share the batch), an
    already placed id answered as before, and every instance runs."""
    a = SimNode(mosquitto_broker, join(cluster, "a"), "accept")
    b = SimNode(mosquitto_broker, join(cluster, "b"), "accept")
    sims += [a, b]
    wait_ready(cluster, 2)
    assert place(cluster, "first")["accepted"]
    bodies = [
        {
            "instance_id": iid,
            "job_id": "j",
            "job_name": "j",
            "spec": {"runtime": "native", "command": ["true"], "resources": {"memory_mib": 200}},
        }
        for iid in ["b0", "b1", "first", "b2", "b3", "b4", "b5"]
    ]
    with api(cluster) as client:
        response = client.post("/api/v1/instances/batch", json={"instances": bodies})
        empty = client.post("/api/v1/instances/batch", json={"instances": []})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["instance_id"] for r in results] == [b["instance_id"] for b in bodies]
    assert all(r["accepted"] for r in results)
    assert "already placed" in results[2]["explanation"]
    names = [r["node_name"] for r in results if r["instance_id"] != "first"]
    assert set(names) == {"a", "b"}, names  # spread within one batch
    assert empty.status_code == 422 and "instances" in empty.text
    for iid in ["b0", "b1", "b2", "b3", "b4", "b5"]:
        wait_for(lambda iid=iid: get(cluster, iid)["state"] == "RUNNING", 15, f"{iid} RUNNING")
