"""Rotating join tokens with real processes: Mosquitto (dynsec), cluster orchestrators,
node engines.

* a rolling rotation (old + new accepted, then only new) never stops joined nodes from
  restarting: a rejoin is authenticated by the node secret, not by the join token;
* a node the operator removed, and a node with a wrong stored secret, are refused at
  rejoin with a clear message and exit status 3 (a refusal is final);
* a cluster that lost its store re-admits a node under its id only with a current
  join token.

Every wait is a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.broker import BrokerHandle, MqttProbe
from tests.harness.cluster_process import ClusterProcess
from tests.harness.engine_process import EngineFleet, NodeEngineProcess
from tests.harness.procs import count_processes, find_processes, unique_sleep_args
from tests.harness.wait import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

OPERATOR = "operator-token"
OLD = "old-join-token"
NEW = "new-join-token"


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def clusters(
    mosquitto_broker: BrokerHandle, tmp_path: Path
) -> Iterator[Callable[..., ClusterProcess]]:
    """Start cluster orchestrators on the shared broker (stopped afterwards)."""
    made: list[ClusterProcess] = []

    def make(
        data: str = "cluster", join_token: str = OLD, port: int | None = None, **env: str
    ) -> ClusterProcess:
        proc = ClusterProcess(
            tmp_path / data,
            broker_port=mosquitto_broker.port,
            broker_admin_password=mosquitto_broker.admin_password,
            operator_token=OPERATOR,
            join_token=join_token,
            name="c1",
            port=port,
            env=env,
        )
        made.append(proc)
        return proc.start()

    try:
        yield make
    finally:
        for proc in made:
            with contextlib.suppress(Exception):
                proc.stop()


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Callable[..., NodeEngineProcess]]:
    """Start node engines (SIGTERM and task cleanup afterwards)."""
    fleet = EngineFleet(tmp_path)

    def make(cluster: ClusterProcess, name: str, token: str | None) -> NodeEngineProcess:
        return fleet.start(cluster.url, name, join_token=token, status_interval=None)

    try:
        yield make
    finally:
        fleet.stop_all()


# ------------------------------------------------------------------ helpers


def api(cluster: ClusterProcess) -> httpx.Client:
    return cluster.client(OPERATOR)


def node(cluster: ClusterProcess, node_id: str) -> dict[str, Any] | None:
    with api(cluster) as client:
        response = client.get(f"/api/v1/nodes/{node_id}", params={"status": "false"})
    if response.status_code == 404:
        return None
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def wait_ready_since(
    cluster: ClusterProcess, engine: NodeEngineProcess, since: float, timeout: float = 30.0
) -> str:
    """The engine's node id once the cluster has a status from it newer than `since`."""
    node_id = str(engine.wait_identity(timeout)["node_id"])

    def ready() -> bool:
        if not engine.running():
            raise AssertionError(f"engine exited:\n{engine.output()}")
        found = node(cluster, node_id)
        return bool(
            found
            and found["liveness"] == "READY"
            and found["last_seen"] is not None
            and found["last_seen"] > since
        )

    wait_for(ready, timeout, f"node {node_id} READY with a fresh status")
    return node_id


def restart_engine(engine: NodeEngineProcess, token: str | None) -> None:
    assert engine.terminate() == 0
    engine.join_token = token
    engine.start()


def restart_cluster(cluster: ClusterProcess, join_token: str, **env: str) -> None:
    cluster.stop()
    cluster.join_token = join_token
    cluster.env = dict(env)
    cluster.start()


def joins(cluster: ClusterProcess, result: str) -> float:
    with cluster.client() as http:
        text = http.get("/metrics").text
    needle = f'edge_cluster_joins_total{{result="{result}"}} '
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line[len(needle) :])
    return 0.0


def refused(engine: NodeEngineProcess, timeout: float = 30.0) -> str:
    """Wait for the engine to exit with status 3; its output."""
    code = engine.wait(timeout)
    engine.terminate()  # closes its log file
    out = engine.output()
    assert code == 3, out
    return out


# ------------------------------------------------------------------ tests


def test_rolling_rotation_keeps_joined_nodes_restartable(clusters, engines) -> None:
    cluster = clusters(join_token=OLD)
    a = engines(cluster, "a", OLD)
    a_id = wait_ready_since(cluster, a, 0)

    # step 1: the new token is accepted besides the old one; new nodes use it
    restart_cluster(cluster, OLD, EDGE_JOIN_TOKENS=NEW)
    b = engines(cluster, "b", NEW)
    b_id = wait_ready_since(cluster, b, 0)
    assert b_id != a_id

    # step 2: only the new token is left. Node a still has the old token configured
    # and restarts: its rejoin is authenticated by its node secret.
    restart_cluster(cluster, NEW)
    since = time.time()
    restart_engine(a, OLD)
    assert wait_ready_since(cluster, a, since) == a_id
    assert joins(cluster, "rejoined") == 1
    # a node without any join token (removed from its settings after joining) too
    since = time.time()
    restart_engine(b, None)
    assert wait_ready_since(cluster, b, since) == b_id
    assert joins(cluster, "rejoined") == 2

    # a new node with the old token is refused at its first join, as before
    c = engines(cluster, "c", OLD)
    out = refused(c)
    assert "refused the join (HTTP 401)" in out and "check the join token" in out
    assert c.identity() is None and OLD not in out
    # the log of the cluster holds no token
    log = (cluster.data_dir / "orchestrator.log").read_text()
    assert OLD not in log and NEW not in log


def test_removed_node_is_refused_at_rejoin(
    clusters, engines, mosquitto_broker: BrokerHandle
) -> None:
    cluster = clusters(join_token=OLD)
    a = engines(cluster, "a", OLD)
    a_id = wait_ready_since(cluster, a, 0)
    identity = a.wait_identity()

    # a node that still holds instances is not removed
    args = unique_sleep_args(900)
    try:
        with api(cluster) as client:
            placed = client.post(
                "/api/v1/instances",
                json={
                    "instance_id": "keep",
                    "job_id": "j",
                    "job_name": "j",
                    "spec": {"runtime": "native", "command": args},
                },
            )
            assert placed.status_code in (200, 202) and placed.json()["accepted"], placed.text
            wait_for(lambda: count_processes(args) == 1, 20, "the task process")
            busy = client.delete(f"/api/v1/nodes/{a_id}")
            assert busy.status_code == 409 and "keep" in busy.json()["detail"]
            assert client.delete("/api/v1/instances/keep").status_code == 202
            wait_for(
                lambda: client.get("/api/v1/instances/keep").json()["state"] == "TERMINATED",
                20,
                "the instance TERMINATED",
            )
            removed = client.delete(f"/api/v1/nodes/{a_id}")
            assert removed.status_code == 200, removed.text
            assert removed.json()["id"] == a_id
            assert client.delete(f"/api/v1/nodes/{a_id}").status_code == 404
            assert node(cluster, a_id) is None
            kinds = [
                e["kind"]
                for e in client.get("/api/v1/events", params={"node_id": a_id}).json()["events"]
            ]
            assert "node.removed" in kinds
    finally:
        for proc in find_processes(args):
            with contextlib.suppress(Exception):
                proc.kill()

    # its MQTT credentials are gone: the broker refuses them
    mqtt = identity["mqtt"]
    probe = MqttProbe.connect(
        mosquitto_broker.host,
        mosquitto_broker.port,
        mqtt["username"],
        mqtt["password"],
        client_id=mqtt["client_id"],
    )
    try:
        assert not probe.connected
    finally:
        probe.close()

    # the engine restarts (with a valid join token even): refused for good, exit 3
    assert a.terminate() == 0
    a.start()
    out = refused(a)
    assert f"refused the rejoin of node {a_id}" in out and "(HTTP 403)" in out
    assert "removed this node" in out and "identity.json" in out
    assert a.identity() is not None  # kept: the operator decides what happens next
    assert joins(cluster, "removed") == 1

    # a restarted cluster still refuses it
    restart_cluster(cluster, OLD)
    a.start()
    assert "removed this node" in refused(a).split(f"refused the rejoin of node {a_id}")[-1]
    assert joins(cluster, "removed") == 1  # counters restart with the process

    # deleting the identity lets the machine join again, as a new node
    (a.state_dir / "identity.json").unlink()
    a.start()
    assert wait_ready_since(cluster, a, 0) != a_id


def test_wrong_stored_secret_is_refused(clusters, engines) -> None:
    cluster = clusters(join_token=OLD)
    a = engines(cluster, "a", OLD)
    a_id = wait_ready_since(cluster, a, 0)
    assert a.terminate() == 0
    path = a.state_dir / "identity.json"
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "node_secret": "stolen-or-stale-secret"}))
    a.start()
    out = refused(a)
    assert f"refused the rejoin of node {a_id}" in out and "(HTTP 403)" in out
    assert "does not match" in out and "stolen-or-stale-secret" not in out
    assert joins(cluster, "forbidden") == 1
    found = node(cluster, a_id)
    assert found is not None and found["liveness"] != "READY"


def test_cluster_that_lost_its_store_needs_a_current_join_token(clusters, engines) -> None:
    first = clusters("first", join_token=OLD)
    a = engines(first, "a", OLD)
    a_id = wait_ready_since(first, a, 0)
    assert a.terminate() == 0
    first.stop()
    # a new, empty cluster at the same address that only takes the new token
    second = clusters("second", join_token=NEW, port=first.port)
    a.start()
    out = refused(a)
    assert f"refused the rejoin of node {a_id}" in out and "(HTTP 401)" in out
    assert "does not know this node" in out and "EDGE_NODE_JOIN_TOKEN" in out
    a.join_token = NEW
    a.start()
    assert wait_ready_since(second, a, 0) == a_id  # admitted again under its id
