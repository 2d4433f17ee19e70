"""Operator fixes end to end, as real processes (issue 11): truthful `--wait`, and
drain / cordon / uncordon of a node from the root and with `edgectl`.

One root (SQLite) and one cluster ``c1`` (a real ``cluster-orchestrator`` with its own
dynsec Mosquitto) with two native node engines ``c1-n0`` and ``c1-n1``, launched by
`tests.harness.system.LocalSystem`. `edgectl` runs as a subprocess against the root
(80 columns). Where instances run is always read back from the root.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.procs import find_processes, unique_sleep_args
from tests.harness.system import OPERATOR_TOKEN, LocalSystem, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker]

ROOT_SETTINGS = {"reconcile_interval": 0.2, "report_interval": 1.0}
DEADLINE = 60.0
NODES = ["c1-n0", "c1-n1"]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    workdir = tmp_path_factory.mktemp("node-ops")
    system = LocalSystem(
        workdir,
        root_settings=ROOT_SETTINGS,
        cluster_args=["--report-interval", "1", "--reconcile-interval", "0.5"],
    )
    try:
        system.start_root()
        system.add_cluster("c1", nodes=2, wait=False)
        system.wait_nodes_ready("c1", NODES, DEADLINE)
        system.wait_clusters_ready(timeout=DEADLINE)
        yield system
    finally:
        system.close()
    system.assert_clean()


@pytest.fixture
def sleepers() -> Iterator[Callable[[], list[str]]]:
    made: list[list[str]] = []

    def make() -> list[str]:
        args = unique_sleep_args(3600)
        made.append(args)
        return args

    yield make
    for args in made:
        for proc in find_processes(args):
            with contextlib.suppress(Exception):
                proc.kill()


def edgectl(
    system: LocalSystem, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("edgectl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    env.update({"EDGE_ROOT_URL": system.root.url, "EDGE_TOKEN": OPERATOR_TOKEN, "COLUMNS": "80"})
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def job_file(tmp_path: Path, name: str, command: list[str], replicas: int = 1, **spec: Any) -> str:
    path = tmp_path / f"{name}.json"
    body = {
        "name": name,
        "runtime": "native",
        "command": command,
        "replicas": replicas,
        "resources": {"memory_mib": 8},
        **spec,
    }
    path.write_text(json.dumps(body))
    return str(path)


def where(view: dict[str, Any]) -> dict[str, str]:
    """RUNNING instance id -> node name, as the root sees it."""
    return {i["id"]: i["node_name"] for i in view["instances"] if i["state"] == "RUNNING"}


def post(system: LocalSystem, path: str) -> Any:
    with system.root_client() as http:
        return http.post(path)


def delete_job(system: LocalSystem, job: str) -> None:
    with system.root_client() as http:
        assert http.delete(f"/api/v1/jobs/{job}").status_code == 202
    system.wait_job(job, lambda v: v["state"] == "TERMINATED", DEADLINE, "TERMINATED")


def uncordon_all(system: LocalSystem) -> None:
    for node in NODES:
        assert post(system, f"/api/v1/clusters/c1/nodes/{node}/uncordon").status_code == 200


# ------------------------------------------------------------------ --wait


def test_submit_wait_fails_with_the_reason_of_an_exit_3(
    system: LocalSystem, tmp_path: Path
) -> None:
    path = job_file(tmp_path, "exits-3", ["sh", "-c", "sleep 0.3; exit 3"])
    started = time.monotonic()
    result = edgectl(system, "jobs", "submit", "-f", path, "--wait", "--timeout", "60")
    assert result.returncode == 1, (result.stdout, result.stderr)
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.stderr
    assert "job exits-3: replica 0 FAILED:" in error[0] and "3" in error[0], error
    assert time.monotonic() - started < 60  # as soon as it failed, not at the timeout
    delete_job(system, "exits-3")


def test_submit_wait_succeeds_after_the_settle_window(
    system: LocalSystem, tmp_path: Path, sleepers: Callable[[], list[str]]
) -> None:
    path = job_file(tmp_path, "steady", sleepers(), replicas=2)
    result = edgectl(system, "jobs", "submit", "-f", path, "--wait", "--settle", "3", "-o", "json")
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)  # -o json: the job document, unchanged
    assert view["state"] == "RUNNING" and len(where(view)) == 2
    assert "every replica is running (steady for 3" in result.stderr
    # every instance had been RUNNING for at least the window when --wait returned
    assert all(time.time() - i["updated_at"] >= 3 for i in view["instances"]), view["instances"]
    delete_job(system, "steady")


# ------------------------------------------------------------------ drain, cordon


def test_drain_from_the_root_api_moves_instances(
    system: LocalSystem, tmp_path: Path, sleepers: Callable[[], list[str]]
) -> None:
    path = job_file(tmp_path, "drained", sleepers(), replicas=2)
    assert edgectl(system, "jobs", "submit", "-f", path).returncode == 0
    view = system.wait_running("drained", 2, DEADLINE)
    on_n0 = [i for i, n in where(view).items() if n == "c1-n0"]
    try:
        response = post(system, "/api/v1/clusters/c1/nodes/c1-n0/drain")
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["action"] == "drain" and result["node"]["draining"] is True
        assert result["cluster_name"] == "c1"
        assert sorted(m["instance_id"] for m in result["moved"]) == sorted(on_n0)
        assert all(m["node_name"] == "c1-n1" for m in result["moved"]) and result["stuck"] == []
        moved = system.wait_job(
            "drained",
            lambda v: len(where(v)) == 2 and set(where(v).values()) == {"c1-n1"},
            DEADLINE,
            "every replica RUNNING on c1-n1",
        )
        assert set(where(moved).values()) == {"c1-n1"}
        # recorded at the root
        with system.root_client() as http:
            events = http.get("/api/v1/events", params={"kind": "node.drain"}).json()["events"]
        assert events and events[-1]["cluster_id"] == result["cluster_id"]
        # clear errors: unknown node, unknown cluster
        assert post(system, "/api/v1/clusters/c1/nodes/nope/drain").status_code == 404
        assert post(system, "/api/v1/clusters/nope/nodes/c1-n0/drain").status_code == 404
    finally:
        uncordon_all(system)
    delete_job(system, "drained")


def test_edgectl_nodes_drain_then_uncordon(
    system: LocalSystem, tmp_path: Path, sleepers: Callable[[], list[str]]
) -> None:
    path = job_file(tmp_path, "cli-drained", sleepers(), replicas=2)
    assert edgectl(system, "jobs", "submit", "-f", path).returncode == 0
    system.wait_running("cli-drained", 2, DEADLINE)
    try:
        result = edgectl(system, "nodes", "drain", "c1-n1")  # no --cluster: found by name
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert all(len(line) <= 80 for line in lines), result.stdout
        assert "draining" in result.stdout and "MOVED" in result.stdout
        system.wait_job(
            "cli-drained",
            lambda v: len(where(v)) == 2 and set(where(v).values()) == {"c1-n0"},
            DEADLINE,
            "every replica RUNNING on c1-n0",
        )
        listed = edgectl(system, "nodes", "ls", "-o", "json")
        flags = {n["info"]["name"]: n["draining"] for n in json.loads(listed.stdout)["nodes"]}
        assert flags == {"c1-n0": False, "c1-n1": True}
        back = edgectl(system, "nodes", "uncordon", "c1-n1", "--cluster", "c1", "-o", "json")
        assert back.returncode == 0, back.stderr
        node = json.loads(back.stdout)["node"]
        assert node["draining"] is False and node["cordoned"] is False
    finally:
        uncordon_all(system)
    delete_job(system, "cli-drained")


def test_cordon_keeps_instances_new_replicas_go_elsewhere_and_uncordon_restores(
    system: LocalSystem, tmp_path: Path, sleepers: Callable[[], list[str]]
) -> None:
    path = job_file(tmp_path, "cordoned", sleepers(), replicas=2)
    assert edgectl(system, "jobs", "submit", "-f", path).returncode == 0
    before = where(system.wait_running("cordoned", 2, DEADLINE))
    assert sorted(before.values()) == NODES, before  # spread: one per node
    try:
        result = edgectl(system, "nodes", "cordon", "c1-n0", "-o", "json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["node"]["cordoned"] is True
        # the root's capacity view drops the node once the cluster reported it
        wait_for(
            lambda: (system.root_clusters()["c1"].get("report") or {}).get("nodes_cordoned") == 1,
            DEADLINE,
            "the cluster report counts the cordoned node",
        )
        # scale up: the new replicas go to c1-n1, what ran on c1-n0 stays (same instance)
        assert edgectl(system, "jobs", "scale", "cordoned", "4").returncode == 0
        view = system.wait_running("cordoned", 4, DEADLINE)
        now = where(view)
        assert {i: n for i, n in now.items() if i in before} == before  # nothing moved
        assert all(n == "c1-n1" for i, n in now.items() if i not in before), now
        # cordon survives a restart of the cluster (persisted)
        cluster = system.clusters["c1"]
        cluster.process.stop()
        cluster.process.start(DEADLINE)
        system._remember(cluster.process.pid)
        for broker in cluster.broker_processes():
            system._remember(broker.pid)
        with cluster.client() as http:
            nodes = {n["info"]["name"]: n for n in http.get("/api/v1/nodes").json()["nodes"]}
        assert nodes["c1-n0"]["cordoned"] is True and nodes["c1-n1"]["cordoned"] is False
        system.wait_nodes_ready("c1", NODES, DEADLINE)
        # uncordon: new replicas may land on c1-n0 again (spread prefers it now)
        assert edgectl(system, "nodes", "uncordon", "c1-n0").returncode == 0
        wait_for(
            lambda: (system.root_clusters()["c1"].get("report") or {}).get("nodes_cordoned") == 0,
            DEADLINE,
            "the cluster report has no cordoned node",
        )
        assert edgectl(system, "jobs", "scale", "cordoned", "5").returncode == 0
        view = system.wait_running("cordoned", 5, DEADLINE)
        added = [n for i, n in where(view).items() if i not in now]
        assert added == ["c1-n0"], where(view)
    finally:
        uncordon_all(system)
    delete_job(system, "cordoned")


def test_node_action_on_an_unreachable_cluster_is_503(system: LocalSystem) -> None:
    with system.root_client() as http:
        reg = {"name": "gone", "url": "http://127.0.0.1:9", "api_token": "gone-token-1"}
        from tests.harness.system import REGISTRATION_TOKEN

        r = http.post(
            "/api/v1/clusters/register",
            json=reg,
            headers={"Authorization": f"Bearer {REGISTRATION_TOKEN}"},
        )
        assert r.status_code == 200, r.text
        response = http.post("/api/v1/clusters/gone/nodes/x1/cordon")
    assert response.status_code == 503
    assert "cluster gone" in response.json()["detail"]
