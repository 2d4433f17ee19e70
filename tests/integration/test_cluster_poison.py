"""Hostile MQTT input from a node cannot stop the cluster (issue 15), on a real broker and
a real cluster orchestrator process.

A 4 KB message nested 2,000 levels deep used to raise RecursionError on the cluster's paho
network thread and end it: every node then went LOST while `/healthz` said ok, and QoS 1
redelivery or a retained copy crashed it again after every restart. Here the node
publishes such a message with its own credentials (on its events topic, and retained on
its presence topic); the cluster must count a `bad_json` rejection and keep taking the
node's statuses, also after a restart with the retained copy still on the broker.
`/healthz` must turn 503 when the MQTT connection is really gone and 200 again after.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.broker import BrokerHandle
from tests.harness.cluster_process import ClusterProcess
from tests.harness.wait import wait_for
from tests.integration.test_cluster_dispatch import (
    JOIN,
    OPERATOR,
    SimNode,
    api,
    get,
    join,
    place,
    wait_ready,
)

pytestmark = [pytest.mark.broker]

DEPTH = 2000


def poison(node_id: str, kind: str) -> bytes:
    """An envelope whose payload is 2,000 nested arrays (about 4 KB)."""
    head = f'{{"v":1,"kind":"{kind}","id":"m1","ts":{time.time()},"node_id":"{node_id}",'
    return (head + '"payload":' + "[" * DEPTH + "]" * DEPTH + "}").encode()


def new_cluster(
    broker: BrokerHandle, data_dir: Path, *extra: str, port: int | None = None
) -> ClusterProcess:
    return ClusterProcess(
        data_dir,
        port=port,
        broker_port=broker.port,
        broker_admin_password=broker.admin_password,
        operator_token=OPERATOR,
        join_token=JOIN,
        extra_args=["--status-interval", "0.5", *extra],
    )


@pytest.fixture
def cluster(mosquitto_broker: BrokerHandle, tmp_path: Path) -> Iterator[ClusterProcess]:
    proc = new_cluster(mosquitto_broker, tmp_path / "cluster").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def sims() -> Iterator[list[SimNode]]:
    made: list[SimNode] = []
    yield made
    for sim in made:
        with contextlib.suppress(Exception):
            sim.close()


def health(cluster: ClusterProcess) -> httpx.Response:
    return httpx.get(cluster.url + "/healthz", timeout=5)


def rejected(cluster: ClusterProcess, reason: str) -> float:
    """The cluster's `edge_cluster_mqtt_rejected_total{reason=...}` from `/metrics`."""
    with api(cluster) as client:
        text = client.get("/metrics").text
    prefix = f'edge_cluster_mqtt_rejected_total{{reason="{reason}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def node(cluster: ClusterProcess, node_id: str) -> dict[str, Any]:
    with api(cluster) as client:
        response = client.get(f"/api/v1/nodes/{node_id}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def takes_statuses_after(cluster: ClusterProcess, node_id: str, since: float) -> None:
    """The node is READY with a status received well after `since` (two status periods
    of the simulated node): the cluster's MQTT thread is still taking messages."""

    def fresh() -> bool:
        seen = node(cluster, node_id)
        last = seen["last_seen"]
        return seen["liveness"] == "READY" and last is not None and last > since + 0.7

    wait_for(fresh, 15, f"a fresh status from {node_id} after {since}")


def assert_no_crash(cluster: ClusterProcess) -> None:
    text = cluster.log_path.read_text(errors="replace")
    assert "RecursionError" not in text, cluster.output()
    assert "Traceback" not in text, cluster.output()


def test_a_deeply_nested_event_is_a_counted_rejection(
    cluster: ClusterProcess, mosquitto_broker: BrokerHandle, sims: list[SimNode], tmp_path: Path
) -> None:
    sim = SimNode(mosquitto_broker, join(cluster, "n1"), "accept")
    sims.append(sim)
    wait_ready(cluster, 1)
    assert rejected(cluster, "bad_json") == 0

    sent = time.time()
    ack = sim.probe.publish(f"edge/v1/nodes/{sim.id}/events", poison(sim.id, "ack"), qos=1)
    assert ack is not None and not ack.is_failure
    wait_for(lambda: rejected(cluster, "bad_json") == 1, 10, "bad_json counted")
    takes_statuses_after(cluster, sim.id, sent)
    body = health(cluster)
    assert body.status_code == 200, body.text
    assert body.json()["mqtt"] == "connected"
    assert body.json()["mqtt_rejected_by_reason"] == {"bad_json": 1}
    place(cluster, "i1")  # commands still go out, acks still come in
    wait_for(lambda: get(cluster, "i1")["state"] == "RUNNING", 10, "i1 RUNNING")
    assert_no_crash(cluster)

    # the QoS 1 message was acknowledged once handled: a restart does not get it again
    cluster.stop()
    again = new_cluster(mosquitto_broker, cluster.data_dir, port=cluster.port)
    restarted = time.time()
    again.start()
    try:
        takes_statuses_after(again, sim.id, restarted)
        assert rejected(again, "bad_json") == 0
    finally:
        again.stop()


def test_a_retained_deeply_nested_presence_survives_restarts(
    cluster: ClusterProcess, mosquitto_broker: BrokerHandle, sims: list[SimNode]
) -> None:
    sim = SimNode(mosquitto_broker, join(cluster, "n1"), "accept")
    sims.append(sim)
    wait_ready(cluster, 1)
    presence = f"edge/v1/nodes/{sim.id}/presence"
    bad = poison(sim.id, "presence")

    sent = time.time()
    ack = sim.probe.publish(presence, bad, qos=1, retain=True)
    assert ack is not None and not ack.is_failure
    wait_for(lambda: rejected(cluster, "bad_json") == 1, 10, "bad_json counted")
    takes_statuses_after(cluster, sim.id, sent)
    assert_no_crash(cluster)

    # the broker keeps it: every (re)subscription of the cluster gets it again
    watcher = mosquitto_broker.probe(
        mosquitto_broker.admin_username, mosquitto_broker.admin_password
    )
    try:
        watcher.subscribe(presence)
        got = watcher.next_message()
        assert got.retain and got.payload == bad
    finally:
        watcher.close()

    current = cluster
    try:
        for attempt in range(2):
            current.stop()
            current = new_cluster(mosquitto_broker, cluster.data_dir, port=cluster.port)
            restarted = time.time()
            current.start()
            wait_for(
                lambda c=current: rejected(c, "bad_json") == 1, 10, f"retained copy #{attempt}"
            )
            takes_statuses_after(current, sim.id, restarted)
            assert health(current).status_code == 200
            assert_no_crash(current)
    finally:
        current.stop()


def test_healthz_follows_the_broker_connection(
    mosquitto_broker: BrokerHandle, tmp_path: Path
) -> None:
    """Within the grace a broker outage is `reconnecting` (200); past it 503 naming
    `broker_disconnected`; 200 again once the broker is back."""
    grace = 2.0
    cluster = new_cluster(
        mosquitto_broker, tmp_path / "cluster", "--broker-health-grace", str(grace)
    ).start()
    try:
        first = health(cluster)
        assert first.status_code == 200 and first.json()["mqtt"] == "connected", first.text
        mosquitto_broker.admin.close()
        mosquitto_broker.process.stop()
        try:
            seen: list[tuple[int, dict[str, Any]]] = []

            def down() -> bool:
                response = health(cluster)
                seen.append((response.status_code, response.json()))
                return response.status_code == 503

            wait_for(down, 20, "healthz 503 after the broker went away", interval=0.1)
            for code, body in seen:
                if body["mqtt"] == "reconnecting":
                    assert code == 200 and body["broker_disconnected_s"] <= grace, body
            code, body = seen[-1]
            assert body["mqtt"] == "broker_disconnected", body
            assert body["reasons"] == ["broker_disconnected"], body
            assert body["broker_disconnected_s"] > grace and body["status"] == "degraded"
        finally:
            mosquitto_broker.process.start()
            mosquitto_broker.admin = mosquitto_broker.process.admin()

        def up() -> bool:
            response = health(cluster)
            return response.status_code == 200 and response.json()["mqtt"] == "connected"

        wait_for(up, 20, "healthz 200 after the broker came back", interval=0.1)
    finally:
        cluster.stop()


def test_metrics_need_the_operator_token(cluster: ClusterProcess, tmp_path: Path) -> None:
    """Issue 15: the cluster's /metrics was open while the root's needs a token."""
    assert httpx.get(cluster.url + "/metrics", timeout=5).status_code == 401
    wrong = httpx.get(cluster.url + "/metrics", headers={"authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    with api(cluster) as client:
        ok = client.get("/metrics")
    assert ok.status_code == 200 and "edge_cluster_mqtt_rejected_total" in ok.text
    assert health(cluster).status_code == 200  # /healthz stays open for probes


def test_public_metrics_opens_metrics(mosquitto_broker: BrokerHandle, tmp_path: Path) -> None:
    cluster = new_cluster(mosquitto_broker, tmp_path / "cluster", "--public-metrics").start()
    try:
        response = httpx.get(cluster.url + "/metrics", timeout=5)
        assert response.status_code == 200 and "edge_cluster_nodes" in response.text
    finally:
        cluster.stop()
