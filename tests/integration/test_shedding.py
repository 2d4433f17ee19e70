"""Shedding with real processes: Mosquitto, a cluster-orchestrator process, node engines.

Determinism on a shared 2-core machine: the engine under test measures CPU pressure
from its own tasks only (``shedding_cpu_source=tasks``), so load from anything else on
the host (other test suites, the orchestrator) can neither trigger nor prolong
pressure. The only pressure source is a burner task that spins until a flag file exists.
The enter threshold (10 % of all cores, i.e. a fifth of one core) is far below what a
spinning process gets even when the host is busy, and the exit threshold (5 %) far
above what a paused or idle task uses; the test creates the flag while the burner is
paused, so once resumed it goes idle and pressure cannot come back: it is paused
exactly once and resumed exactly once. Every wait is a condition with a deadline.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.fixtures.broker import BrokerHandle
from tests.harness.cluster_process import ClusterProcess
from tests.harness.engine_process import EngineFleet, NodeEngineProcess
from tests.harness.wait import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

JOIN = "join-token"
OPERATOR = "operator-token"

SHEDDING_ENV = {
    "EDGE_NODE_SHEDDING": "on",
    "EDGE_NODE_SHEDDING_SIGNALS": "cpu",
    "EDGE_NODE_SHEDDING_CPU_SOURCE": "tasks",
    "EDGE_NODE_SHEDDING_CPU_ENTER": "10",
    "EDGE_NODE_SHEDDING_CPU_EXIT": "5",
    "EDGE_NODE_SHEDDING_ENTER_FOR": "2",
    "EDGE_NODE_SHEDDING_EXIT_FOR": "2",
    "EDGE_NODE_SHEDDING_STEP_INTERVAL": "1",
    "EDGE_NODE_SHEDDING_RESUME_AFTER": "3",
}

BURNER = textwrap.dedent(
    """
    import os, sys, time
    flag = sys.argv[1]
    go = sys.argv[2] if len(sys.argv) > 2 else None  # optional: idle until this file exists
    while go is not None and not os.path.exists(go):
        time.sleep(0.05)
    while not os.path.exists(flag):
        x = 0
        for _ in range(100000):
            x += 1
    while True:
        time.sleep(1)
    """
)


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
    fleet = EngineFleet(tmp_path, join_token=JOIN)

    def start(name: str, env: dict[str, str] | None = None) -> NodeEngineProcess:
        return fleet.start(
            cluster.url, name, status_interval=None, env=env or {"EDGE_NODE_SHEDDING": "off"}
        )

    try:
        yield start
    finally:
        fleet.stop_all()


@pytest.fixture
def burner(task_tmp: Path) -> tuple[list[str], Path]:
    """The burner script and its flag, where the task's run-as user can read them."""
    script = task_tmp / "burner.py"
    script.write_text(BURNER)
    flag = task_tmp / "stop-burning"
    return [sys.executable, str(script), str(flag)], flag


def api(cluster: ClusterProcess) -> httpx.Client:
    return httpx.Client(
        base_url=cluster.url, headers={"authorization": f"Bearer {OPERATOR}"}, timeout=10.0
    )


def wait_ready(cluster: ClusterProcess, *names: str) -> dict[str, str]:
    def ready() -> dict[str, str] | None:
        with api(cluster) as client:
            nodes = client.get("/api/v1/nodes", params={"status": "false"}).json()["nodes"]
        by_name = {n["info"]["name"]: n for n in nodes}
        if all(by_name.get(n, {}).get("liveness") == "READY" for n in names):
            return {n: by_name[n]["id"] for n in names}
        return None

    found: dict[str, str] = wait_for(ready, 60, f"nodes {names} READY")
    return found


def place(cluster: ClusterProcess, iid: str, command: list[str], **spec: Any) -> dict[str, Any]:
    body = {
        "instance_id": iid,
        "job_id": f"job-{iid}",
        "job_name": iid,
        "spec": {"runtime": "native", "command": command, **spec},
    }
    with api(cluster) as client:
        response = client.post("/api/v1/instances", json=body)
    assert response.status_code in (200, 202), response.text
    result: dict[str, Any] = response.json()
    assert result["accepted"], result
    return result


def instance(cluster: ClusterProcess, iid: str) -> dict[str, Any]:
    with api(cluster) as client:
        response = client.get(f"/api/v1/instances/{iid}")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def wait_state(
    cluster: ClusterProcess,
    iid: str,
    state: str,
    node: str | None = None,
    timeout: float = 60.0,
    engines: tuple[NodeEngineProcess, ...] = (),
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        inst = instance(cluster, iid)
        if inst["state"] == state and (node is None or inst["node_name"] == node):
            return inst
        return None

    try:
        found: dict[str, Any] = wait_for(check, timeout, f"{iid} {state}", interval=0.2)
        return found
    except AssertionError:
        inst = instance(cluster, iid)
        events = [(e["state"], e["reason"]) for e in inst["events"]]
        logs = "\n".join(e.output()[-4000:] for e in engines)
        raise AssertionError(f"{iid} is {inst['state']}: {events}\n{logs}") from None


def node_status(cluster: ClusterProcess, node_id: str) -> dict[str, Any]:
    with api(cluster) as client:
        status: dict[str, Any] = client.get(f"/api/v1/nodes/{node_id}").json()["status"] or {}
    return status


def burner_process(engine: NodeEngineProcess, iid: str) -> psutil.Process:
    """The burner itself (the child of the task's wrapper shell)."""
    import json

    handle = json.loads((engine.state_dir / "native" / "tasks" / iid / "handle.json").read_text())
    wrapper = psutil.Process(int(handle["pid"]))
    children = wrapper.children()
    assert children, "the burner has not started"
    return children[0]


def test_low_priority_burner_is_paused_then_resumed_and_the_cluster_sees_it(
    cluster: ClusterProcess, engines: Callable[..., NodeEngineProcess], burner: Any
) -> None:
    command, flag = burner
    engine = engines("edge", SHEDDING_ENV)
    node_id = wait_ready(cluster, "edge")["edge"]
    place(cluster, "important", ["sleep", "600"], priority=900)
    wait_state(cluster, "important", "RUNNING", engines=(engine,))
    place(cluster, "burner", command, priority=10, on_shed="pause")

    shed = wait_state(cluster, "burner", "SHED", engines=(engine,))
    assert shed["reason"].startswith("shed (pause): cpu "), shed["reason"]
    event = next(e for e in reversed(shed["events"]) if e["state"] == "SHED")
    assert event["data"]["shedder"] == "pause" and event["data"]["signals"] == ["cpu"]
    assert event["data"]["values"]["cpu"] >= 10.0
    assert event["data"]["thresholds"]["cpu"]["enter"] == 10.0
    assert event["data"]["priority"] == 10
    # really frozen (SIGSTOP), and the node says it is shedding
    proc = burner_process(engine, "burner")
    wait_for(lambda: proc.status() == psutil.STATUS_STOPPED, 10, "burner stopped (T)")
    wait_for(lambda: node_status(cluster, node_id).get("shedding") is True, 10, "shedding")
    tasks = {t["instance_id"]: t for t in node_status(cluster, node_id)["tasks"]}
    assert tasks["burner"]["state"] == "PAUSED" and tasks["important"]["state"] == "RUNNING"

    flag.touch()  # once resumed, the burner goes idle: pressure cannot come back
    resumed = wait_state(cluster, "burner", "RUNNING", engines=(engine,))
    assert resumed["reason"].startswith("resumed: pressure clear"), resumed["reason"]
    wait_for(lambda: proc.status() != psutil.STATUS_STOPPED, 10, "burner running again")
    wait_for(lambda: node_status(cluster, node_id).get("shedding") is False, 10, "not shedding")

    states = [e["state"] for e in instance(cluster, "burner")["events"]]
    assert states[-2:] == ["SHED", "RUNNING"] and states.count("SHED") == 1
    important = [e["state"] for e in instance(cluster, "important")["events"]]
    assert "SHED" not in important  # never the more important task
    log = engine.output()
    assert "shedding on: signals cpu" in log and "shedding: pause burner" in log


def test_reschedule_moves_a_shed_instance_to_another_node(
    cluster: ClusterProcess, engines: Callable[..., NodeEngineProcess], burner: Any
) -> None:
    command, flag = burner
    go = flag.with_name("start-burning")
    hot = engines("hot", SHEDDING_ENV)
    wait_ready(cluster, "hot")
    place(cluster, "important", ["sleep", "600"], priority=900)
    wait_state(cluster, "important", "RUNNING", engines=(hot,))
    place(cluster, "mover", [*command, str(go)], priority=10, on_shed="reschedule")
    wait_state(cluster, "mover", "RUNNING", "hot", engines=(hot,))
    cool = engines("cool")  # shedding off; joins only now, so "mover" started on "hot"
    wait_ready(cluster, "hot", "cool")
    go.touch()  # the pressure starts only once "cool" can take the shed task
    moved = wait_state(cluster, "mover", "RUNNING", "cool", timeout=90, engines=(hot, cool))
    flag.touch()  # stop spinning on "cool" (nothing sheds there)
    reasons = [(e["state"], e["reason"]) for e in moved["events"]]
    shed = [r for s, r in reasons if s == "SHED"]
    assert shed and shed[-1].startswith("shed by hot: shed (stop): cpu "), reasons
    assert any(s == "ASSIGNED" and r.startswith("rescheduled: shed by hot") for s, r in reasons)
    # the copy on "hot" was stopped and terminated there
    wait_for(
        lambda: not (hot.state_dir / "native" / "tasks" / "mover" / "handle.json").exists(),
        30,
        "the shed copy gone from hot",
    )


def test_inference_worker_figures_reach_the_cluster_api(
    cluster: ClusterProcess, engines: Callable[..., NodeEngineProcess], task_tmp: Path
) -> None:
    pytest.importorskip("onnx")
    from scripts.make_test_model import write_model

    model = write_model(task_tmp / "model" / "tiny.onnx", 32, 8)  # readable by the task user
    engine = engines("edge")
    node_id = wait_ready(cluster, "edge")["edge"]
    command = [
        sys.executable,
        "-m",
        "node_engine.inference.worker",
        "--model",
        str(model),
        "--target-fps",
        "10",
        "--budget-ms",
        "500",
    ]
    place(cluster, "detector", command, priority=500, latency_budget_ms=500)
    wait_state(cluster, "detector", "RUNNING", engines=(engine,))

    def figures() -> dict[str, Any] | None:
        inf = instance(cluster, "detector").get("inference")
        return inf if inf and inf["frames_executed"] > 0 else None

    inf = wait_for(figures, 60, "inference figures in the cluster API", interval=0.3)
    assert inf["budget_ms"] == 500.0 and inf["latency_p95_ms"] is not None
    assert inf["frames_executed"] <= 15  # one second's worth at 10 fps
    tasks = {t["instance_id"]: t for t in node_status(cluster, node_id)["tasks"]}
    assert tasks["detector"]["inference"]["budget_ms"] == 500.0
    stats_file = engine.state_dir / "native" / "work" / "detector"  # the task's own workdir
    assert (stats_file / "inference-stats.json").is_file()
