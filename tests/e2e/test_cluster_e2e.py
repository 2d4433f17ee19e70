"""End to end: real Mosquitto (dynsec), a real cluster-orchestrator process, real node engines.

Every wait is a condition with a deadline. Native tasks are `sleep` commands with a
unique argument so their processes can be counted (and cleaned up: a killed node
engine leaves its tasks running, as it should).

Instances that move between two engines on this one machine request no CPU or memory:
the native runtime names a task's cgroup after the instance id only, so two engines
on one host would share (and kill) each other's cgroup for the same instance.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas.common import Arch
from schemas.mqtt import (
    Presence,
    PresenceMessage,
    StatusMessage,
    encode,
)
from schemas.node import DiskStatus, MemoryStatus, NodeStatus
from tests.fixtures.broker import BrokerHandle, MqttProbe
from tests.harness.cluster_process import ClusterProcess
from tests.harness.engine_process import EngineFleet, NodeEngineProcess
from tests.harness.procs import count_processes, find_processes, unique_sleep_args
from tests.harness.wait import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

JOIN = "join-token"
OPERATOR = "operator-token"


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def cluster(mosquitto_broker: BrokerHandle, tmp_path: Path) -> Iterator[ClusterProcess]:
    proc = ClusterProcess(
        tmp_path / "cluster",
        broker_port=mosquitto_broker.port,
        broker_admin_password=mosquitto_broker.admin_password,
        operator_token=OPERATOR,
        join_token=JOIN,
        name="c1",
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def engines(cluster: ClusterProcess, tmp_path: Path) -> Iterator[Callable[..., NodeEngineProcess]]:
    """Start a node engine named `name` joined to `cluster`; all are stopped at the end."""
    fleet = EngineFleet(tmp_path, join_token=JOIN)

    def start(name: str, *, runtimes: tuple[str, ...] = ("native",)) -> NodeEngineProcess:
        return fleet.start(cluster.url, name, runtimes=runtimes, status_interval=None)

    try:
        yield start
    finally:
        fleet.stop_all()


@pytest.fixture
def sleepers() -> Iterator[Callable[[], list[str]]]:
    """Unique sleep commands; every process still running them is killed afterwards."""
    made: list[list[str]] = []

    def make() -> list[str]:
        args = unique_sleep_args(900)
        made.append(args)
        return args

    try:
        yield make
    finally:
        for args in made:
            for proc in find_processes(args):
                with contextlib.suppress(Exception):
                    proc.kill()


# ------------------------------------------------------------------ helpers


def api(cluster: ClusterProcess, token: str | None = OPERATOR) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=cluster.url, headers=headers, timeout=10.0)


def nodes_by_name(cluster: ClusterProcess) -> dict[str, dict[str, Any]]:
    with api(cluster) as client:
        body = client.get("/api/v1/nodes", params={"status": "false"}).json()
    return {n["info"]["name"]: n for n in body["nodes"]}


def wait_ready(cluster: ClusterProcess, *names: str, timeout: float = 30.0) -> dict[str, str]:
    def ready() -> dict[str, str] | None:
        nodes = nodes_by_name(cluster)
        if all(nodes.get(n, {}).get("liveness") == "READY" for n in names):
            return {n: nodes[n]["id"] for n in names}
        return None

    result: dict[str, str] = wait_for(ready, timeout, f"nodes {names} READY")
    return result


def place(cluster: ClusterProcess, iid: str, command: list[str], **extra: Any) -> dict[str, Any]:
    body = {
        "instance_id": iid,
        "job_id": extra.pop("job_id", "job-1"),
        "job_name": "sleeper",
        "spec": {"runtime": "native", "command": command, "resources": extra.pop("resources", {})},
        **extra,
    }
    with api(cluster) as client:
        response = client.post("/api/v1/instances", json=body)
    assert response.status_code in (200, 202), response.text
    result: dict[str, Any] = response.json()
    return result


def instance(cluster: ClusterProcess, iid: str) -> dict[str, Any]:
    with api(cluster) as client:
        response = client.get(f"/api/v1/instances/{iid}")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def wait_instance(
    cluster: ClusterProcess, iid: str, state: str, node: str | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        inst = instance(cluster, iid)
        if inst["state"] == state and (node is None or inst["node_name"] == node):
            return inst
        return None

    try:
        found: dict[str, Any] = wait_for(check, timeout, f"{iid} {state} on {node or 'any'}")
        return found
    except AssertionError:
        inst = instance(cluster, iid)
        events = [(e["state"], e["reason"]) for e in inst["events"]]
        raise AssertionError(
            f"{iid} is {inst['state']} on {inst['node_name']}: {events}\n{cluster.output()}"
        ) from None


def metric(cluster: ClusterProcess, name: str, labels: str = "") -> float:
    with cluster.client() as http:
        text = http.get("/metrics").text
    pattern = re.escape(name + (("{" + labels + "}") if labels else "")) + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def paper_join(cluster: ClusterProcess, name: str) -> dict[str, Any]:
    """Join a node through the API without running an engine (for MQTT credential tests)."""
    body = {
        "info": {
            "name": name,
            "hostname": name,
            "arch": Arch.AMD64.value,
            "cpu_cores": 2,
            "memory_mib": 1024,
            "disk_mib": 1000,
            "runtimes": ["native"],
        }
    }
    with api(cluster, JOIN) as client:
        response = client.post("/api/v1/nodes", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def status_message(node_id: str) -> StatusMessage:
    return StatusMessage(
        node_id=node_id,
        payload=NodeStatus(
            ts=time.time(),
            seq=1,
            cpu_percent=1.0,
            memory=MemoryStatus(total_mib=1024, available_mib=1000, used_percent=2),
            disk=DiskStatus(total_mib=1000, free_mib=900, used_percent=10),
        ),
    )


# ------------------------------------------------------------------ tests


def test_join_deploy_until_running_then_delete(cluster, engines, sleepers) -> None:
    engines("a")
    engines("b")
    ids = wait_ready(cluster, "a", "b")
    args = sleepers()
    result = place(cluster, "inst-1", args, resources={"cpu": 0.1, "memory_mib": 32})
    assert result["accepted"] is True and result["node_id"] in ids.values()
    inst = wait_instance(cluster, "inst-1", "RUNNING")
    wait_for(lambda: count_processes(args) == 1, 10, "the task process")
    states = [e["state"] for e in inst["events"]]
    assert states[:2] == ["SCHEDULED", "ASSIGNED"] and states[-1] == "RUNNING"

    # the node's status lists the task
    def node_lists_task() -> bool:
        with api(cluster) as client:
            node = client.get(f"/api/v1/nodes/{result['node_id']}").json()
        assert "inst-1" in node["instances"]
        return any(t["instance_id"] == "inst-1" for t in node["status"]["tasks"])

    wait_for(node_lists_task, 10, "the node's status to list the task")

    with api(cluster) as client:
        response = client.delete("/api/v1/instances/inst-1")
    assert response.status_code == 202
    wait_instance(cluster, "inst-1", "TERMINATED")
    wait_for(lambda: count_processes(args) == 0, 15, "the task process to exit")
    with api(cluster) as client:
        listed = client.get("/api/v1/instances", params={"state": "TERMINATED"}).json()
    assert [i["id"] for i in listed["instances"]] == ["inst-1"]


def test_instance_that_fits_no_node_is_rejected_with_reasons(cluster, engines) -> None:
    engines("a")
    engines("b")
    wait_ready(cluster, "a", "b")
    result = place(cluster, "too-big", ["sleep", "1"], resources={"cpu": 4000})
    assert result["accepted"] is False
    assert result["reasons"] == {"insufficient cpu": 2}
    assert "2 nodes: insufficient cpu" in result["explanation"]
    result = place(cluster, "wrong-arch", ["sleep", "1"], constraints={"arch": ["riscv64"]})
    assert result["accepted"] is False and result["reasons"] == {"architecture riscv64 required": 2}
    with api(cluster) as client:
        assert client.get("/api/v1/instances/too-big").status_code == 404


def test_api_tokens_secrets_and_validation(cluster) -> None:
    first = paper_join(cluster, "p1")
    # a returning node keeps its id with its secret, and gets a fresh password
    body = {
        "info": {
            "name": "p1",
            "hostname": "p1",
            "arch": "amd64",
            "cpu_cores": 2,
            "memory_mib": 1024,
            "disk_mib": 1000,
        },
        "node_id": first["node_id"],
        "node_secret": first["node_secret"],
    }
    with api(cluster, JOIN) as client:
        again = client.post("/api/v1/nodes", json=body)
        assert again.status_code == 201
        assert again.json()["node_id"] == first["node_id"]
        assert again.json()["mqtt"]["password"] != first["mqtt"]["password"]
        wrong = client.post("/api/v1/nodes", json={**body, "node_secret": "nope"})
        assert wrong.status_code == 403
        invalid = client.post("/api/v1/nodes", json={"info": {**body["info"], "cpu_cores": 0}})
        assert invalid.status_code == 422 and "info.cpu_cores" in invalid.text
    with api(cluster, None) as client:
        # a rejoin is authenticated by the node secret, not the join token ...
        assert client.post("/api/v1/nodes", json=body).status_code == 201
        assert client.post("/api/v1/nodes", json={**body, "node_secret": "nope"}).status_code == 403
        # ... a new node needs the join token
        new = client.post("/api/v1/nodes", json={"info": body["info"]})
        assert new.status_code == 401 and new.json()["reason"] == "join_token_missing"
        assert client.get("/api/v1/nodes").status_code == 401
    with api(cluster, "wrong") as client:
        assert client.get("/api/v1/instances").status_code == 401
    with api(cluster, JOIN) as client:  # the join token is not an operator token
        assert client.get("/api/v1/nodes").status_code == 401
    # secrets never show up later
    with api(cluster) as client:
        listing = client.get("/api/v1/nodes").text
    assert first["node_secret"] not in listing and first["mqtt"]["password"] not in listing
    log = (cluster.data_dir / "orchestrator.log").read_text()
    for secret in (first["node_secret"], first["mqtt"]["password"], OPERATOR, JOIN):
        assert secret not in log


def test_node_credentials_are_confined_and_bad_messages_change_nothing(
    cluster, mosquitto_broker: BrokerHandle
) -> None:
    a = paper_join(cluster, "pa")
    b = paper_join(cluster, "pb")
    a_id, b_id = a["node_id"], b["node_id"]
    probe_a = mosquitto_broker.probe(
        a["mqtt"]["username"], a["mqtt"]["password"], client_id=a["mqtt"]["client_id"]
    )
    try:
        assert probe_a.connected
        # A cannot speak for B ...
        rc = probe_a.publish(f"edge/v1/nodes/{b_id}/status", encode(status_message(b_id)))
        assert rc is not None and rc.is_failure
        rc = probe_a.publish(
            f"edge/v1/nodes/{b_id}/presence",
            encode(PresenceMessage(node_id=b_id, payload=Presence(online=False))),
        )
        assert rc is not None and rc.is_failure
        # ... nor read B's commands (nor everyone's)
        for sub in (f"edge/v1/nodes/{b_id}/commands", "edge/v1/nodes/+/commands", "#"):
            codes = probe_a.subscribe(sub)
            assert all(code.is_failure for code in codes), (sub, codes)
        # malformed and mismatched messages on A's own topic are counted, not applied
        before = metric(cluster, "edge_cluster_mqtt_rejected_total", 'reason="bad_json"')
        probe_a.publish(f"edge/v1/nodes/{a_id}/status", b"{this is not json")
        probe_a.publish(f"edge/v1/nodes/{a_id}/status", encode(status_message(b_id)))
        probe_a.publish(f"edge/v1/nodes/{a_id}/events", encode(status_message(a_id)))
        wait_for(
            lambda: (
                metric(cluster, "edge_cluster_mqtt_rejected_total", 'reason="bad_json"')
                == before + 1
            ),
            10,
            "bad_json counted",
        )
        wait_for(
            lambda: (
                metric(cluster, "edge_cluster_mqtt_rejected_total", 'reason="node_mismatch"') == 1
            ),
            10,
            "node_mismatch counted",
        )
        wait_for(
            lambda: (
                metric(cluster, "edge_cluster_mqtt_rejected_total", 'reason="wrong_channel"') == 1
            ),
            10,
            "wrong_channel counted",
        )
        health = httpx.get(cluster.url + "/healthz", timeout=5).json()
        assert health["mqtt_rejected"] >= 3
        assert health["mqtt_rejected_by_reason"]["bad_json"] >= 1
        nodes = nodes_by_name(cluster)
        assert nodes["pa"]["last_seen"] is None and nodes["pb"]["last_seen"] is None
        assert nodes["pa"]["liveness"] != "READY" and nodes["pb"]["liveness"] != "READY"
        # a valid status on A's own topic is accepted
        probe_a.publish(f"edge/v1/nodes/{a_id}/status", encode(status_message(a_id)), qos=0)
        wait_for(
            lambda: nodes_by_name(cluster)["pa"]["last_seen"] is not None, 10, "A's status applied"
        )
        assert nodes_by_name(cluster)["pb"]["last_seen"] is None
    finally:
        probe_a.close()
    anonymous = MqttProbe.connect(mosquitto_broker.host, mosquitto_broker.port, None, None)
    assert not anonymous.connected
    stranger = MqttProbe.connect(
        mosquitto_broker.host,
        mosquitto_broker.port,
        a["mqtt"]["username"],
        "wrong-password",
        client_id=a["mqtt"]["client_id"],
    )
    assert not stranger.connected


def test_sigkill_node_engine_moves_its_instances(cluster, engines, sleepers) -> None:
    engine_a = engines("a")
    wait_ready(cluster, "a")
    commands = {f"k{i}": sleepers() for i in range(3)}
    for iid, args in commands.items():
        assert place(cluster, iid, args)["accepted"]
    for iid in commands:
        wait_instance(cluster, iid, "RUNNING", "a")
    engines("b")
    wait_ready(cluster, "a", "b")
    engine_a.kill()
    started = time.monotonic()
    for iid in commands:
        inst = wait_instance(cluster, iid, "RUNNING", "b", timeout=30)
        assert "rescheduled" in " ".join(e["reason"] for e in inst["events"])
    elapsed = time.monotonic() - started
    print(f"failover of 3 instances: {elapsed:.2f}s")
    for args in commands.values():  # a's copies keep running (its engine is gone)
        wait_for(lambda args=args: count_processes(args) == 2, 15, "copy on b")
    nodes = nodes_by_name(cluster)
    assert nodes["a"]["liveness"] == "LOST" and nodes["a"]["instances"] == []


def test_drain_moves_instances_elsewhere(cluster, engines, sleepers) -> None:
    engines("a")
    ids = wait_ready(cluster, "a")
    commands = {f"d{i}": sleepers() for i in range(2)}
    for iid, args in commands.items():
        assert place(cluster, iid, args)["accepted"]
    for iid in commands:
        wait_instance(cluster, iid, "RUNNING", "a")
    engines("b")
    ids = wait_ready(cluster, "a", "b")
    with api(cluster) as client:
        response = client.post(f"/api/v1/nodes/{ids['a']}/drain")
    assert response.status_code == 200, response.text
    drained = response.json()
    assert drained["node"]["draining"] is True
    assert drained["moved"] == {iid: ids["b"] for iid in commands}
    for iid in commands:
        wait_instance(cluster, iid, "RUNNING", "b")
    for args in commands.values():  # the copies on a are terminated
        wait_for(lambda args=args: count_processes(args) == 1, 20, "one copy left")
    # no new placements on a draining node
    result = place(cluster, "after-drain", sleepers())
    assert result["accepted"] and result["node_name"] == "b"
    with api(cluster) as client:
        assert client.get(f"/api/v1/nodes/{ids['a']}").json()["draining"] is True

    def drain_event() -> bool:
        with api(cluster) as client:
            body = client.get(
                "/api/v1/events", params={"node_id": ids["a"], "kind": "node.drain"}
            ).json()
        return bool(body["count"] == 1)

    wait_for(drain_event, 10, "the drain event in the store")


def test_restart_keeps_nodes_and_instances(cluster, engines, sleepers) -> None:
    engines("a")
    ids = wait_ready(cluster, "a")
    args = sleepers()
    assert place(cluster, "r1", args)["accepted"]
    wait_instance(cluster, "r1", "RUNNING", "a")
    cluster.stop()
    cluster.start()
    assert wait_ready(cluster, "a") == ids
    inst = wait_instance(cluster, "r1", "RUNNING", "a")
    assert inst["node_id"] == ids["a"]
    assert count_processes(args) == 1
    text = json.dumps(inst)
    assert "SCHEDULED" in text  # history survived the restart


def test_returning_engine_stops_what_moved_away(cluster, engines, sleepers) -> None:
    engine_a = engines("a")
    wait_ready(cluster, "a")
    commands = {f"m{i}": sleepers() for i in range(2)}
    for iid, args in commands.items():
        assert place(cluster, iid, args)["accepted"]
    for iid in commands:
        wait_instance(cluster, iid, "RUNNING", "a")
    engines("b")
    wait_ready(cluster, "a", "b")
    engine_a.kill()
    for iid in commands:
        wait_instance(cluster, iid, "RUNNING", "b", timeout=30)
    for args in commands.values():  # a's copies keep running while its engine is dead
        wait_for(lambda args=args: count_processes(args) == 2, 15, "copy on b")
    engine_a.start()
    wait_ready(cluster, "a", "b")
    for args in commands.values():  # the returning engine stops them
        wait_for(lambda args=args: count_processes(args) == 1, 30, "a's copy stopped")
    for iid in commands:
        assert instance(cluster, iid)["node_name"] == "b"


@pytest.mark.docker
def test_returning_engine_stops_the_docker_container_that_moved_away(
    cluster, engines, busybox_image, docker_client
) -> None:
    def engine(name: str) -> NodeEngineProcess:
        return engines(name, runtimes=("native", "docker"))

    def containers(iid: str) -> list[Any]:
        return [
            c
            for c in docker_client.containers.list(
                ignore_removed=True, filters={"label": f"edge.instance={iid}"}
            )
            if c.status == "running"
        ]

    try:
        engine_a = engine("a")
        wait_ready(cluster, "a")
        body = {
            "instance_id": "dk1",
            "job_id": "job-dk",
            "job_name": "sleeper",
            "spec": {"runtime": "docker", "image": busybox_image, "command": ["sleep", "900"]},
        }
        with api(cluster) as client:
            assert client.post("/api/v1/instances", json=body).json()["accepted"]
        wait_instance(cluster, "dk1", "RUNNING", "a", timeout=60)
        engine("b")
        wait_ready(cluster, "a", "b")
        engine_a.kill()
        wait_instance(cluster, "dk1", "RUNNING", "b", timeout=60)
        wait_for(lambda: len(containers("dk1")) == 2, 30, "a's container and b's")
        engine_a.start()
        wait_ready(cluster, "a", "b")
        wait_for(lambda: len(containers("dk1")) == 1, 60, "a's container stopped")
        assert instance(cluster, "dk1")["node_name"] == "b"
    finally:
        for c in docker_client.containers.list(
            all=True, ignore_removed=True, filters={"label": "edge.instance=dk1"}
        ):
            with contextlib.suppress(Exception):
                c.remove(force=True)


def test_restarted_cluster_waits_for_nodes_that_come_back_late(cluster, engines, sleepers) -> None:
    """A restarted cluster gives the nodes in its store `restart_grace` (30 s) to report:
    engines that come back long after `lost_grace` (3 s) keep their instances in place."""
    engine_a, engine_b = engines("a"), engines("b")
    ids = wait_ready(cluster, "a", "b")
    commands = {f"g{i}": sleepers() for i in range(2)}
    for iid, args in commands.items():
        assert place(cluster, iid, args)["accepted"]
    where = {iid: wait_instance(cluster, iid, "RUNNING")["node_name"] for iid in commands}
    engine_a.terminate()
    engine_b.terminate()  # engines stop, their tasks keep running
    cluster.stop()
    cluster.start()

    def silent_long() -> bool:
        nodes = nodes_by_name(cluster)
        return all(nodes[n]["unhealthy_for_s"] > 3.0 + 1.0 for n in ("a", "b"))

    wait_for(silent_long, 30, "both nodes silent for longer than lost_grace")
    assert {n["liveness"] for n in nodes_by_name(cluster).values()} <= {"NOT_READY", "OFFLINE"}
    engine_a.start()
    engine_b.start()
    assert wait_ready(cluster, "a", "b") == ids
    for iid, node in where.items():
        inst = wait_instance(cluster, iid, "RUNNING", node)
        reasons = " ".join(e["reason"] for e in inst["events"])
        assert "rescheduled" not in reasons and "LOST" not in reasons, inst["events"]
    for args in commands.values():
        assert count_processes(args) == 1


def test_node_that_returns_gets_replicas_of_a_spread_job_back(cluster, engines, sleepers) -> None:
    """Kill a node engine: its replicas move to the other node. Start it again: after
    `rebalance_after` one replica moves back, so the spread job is even again."""
    cluster.stop()  # no node has joined yet: restart it with a short rebalance_after
    cluster.extra_args += ["--rebalance-after", "2"]
    cluster.start()
    engine_a, _b = engines("a"), engines("b")
    wait_ready(cluster, "a", "b")
    commands = {f"sp{i}": sleepers() for i in range(2)}
    for iid, args in commands.items():
        assert place(cluster, iid, args, job_id="spread-job", placement_policy="spread")["accepted"]
    nodes = {wait_instance(cluster, iid, "RUNNING")["node_name"] for iid in commands}
    assert nodes == {"a", "b"}
    engine_a.kill()
    for iid in commands:
        wait_instance(cluster, iid, "RUNNING", "b", timeout=30)
    engine_a.kill_native_tasks()  # a's old copy would be stopped on return anyway
    engine_a.start()
    wait_ready(cluster, "a", "b")

    def even() -> dict[str, str] | None:
        where = {iid: instance(cluster, iid) for iid in commands}
        if {i["node_name"] for i in where.values()} == {"a", "b"} and all(
            i["state"] == "RUNNING" for i in where.values()
        ):
            return {iid: i["node_name"] for iid, i in where.items()}
        return None

    where = wait_for(even, 40, "one replica back on a, both RUNNING")
    back = next(iid for iid, node in where.items() if node == "a")
    reasons = [e["reason"] for e in instance(cluster, back)["events"]]
    assert any(r.startswith("rebalanced: spread job had 2 replicas on b") for r in reasons)
    for args in commands.values():
        wait_for(lambda args=args: count_processes(args) == 1, 20, "one copy each")
    assert metric(cluster, "edge_cluster_rebalance_moves_total") == 1
