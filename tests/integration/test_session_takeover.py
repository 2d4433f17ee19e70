"""A second connection with a node's credentials is seen, counted and explained (issue 15).

Mosquitto closes the older of two connections with one client id (newer versions with
MQTT v5 reason 0x8E, session taken over; 2.0.11 here without any reason); when both
reconnect they displace each other in turn, silently. Here a real node engine process
runs and a raw paho client with the node's credentials and client id reconnects the way
an engine does: the engine sees its connections closed again and again within seconds,
logs the likely cause and says so in its next online presence; the cluster counts the
takeovers (`edge_cluster_node_session_takeovers_total`), logs a warning and records a
`node.session_takeover` event. A single drop (a broker restart) is not a takeover.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.fixtures.broker import BrokerHandle
from tests.harness.cluster_process import ClusterProcess
from tests.harness.engine_process import NodeEngineProcess
from tests.harness.wait import wait_for
from tests.integration.test_cluster_dispatch import JOIN, api, wait_ready
from tests.integration.test_cluster_poison import new_cluster

pytestmark = [pytest.mark.broker]

ENGINE_WARNING = "another client connected with this node's MQTT client id"


@pytest.fixture
def cluster(mosquitto_broker: BrokerHandle, tmp_path: Path) -> Iterator[ClusterProcess]:
    proc = new_cluster(mosquitto_broker, tmp_path / "cluster").start()
    try:
        yield proc
    finally:
        proc.stop()


def takeovers(cluster: ClusterProcess) -> float:
    with api(cluster) as client:
        text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith("edge_cluster_node_session_takeovers_total "):
            return float(line.split()[1])
    raise AssertionError("edge_cluster_node_session_takeovers_total missing from /metrics")


class Intruder:
    """A paho client with a node's credentials and client id that reconnects the way an
    engine does (1 s after a drop), so it and the engine displace each other in turn."""

    def __init__(self, broker: BrokerHandle, mqtt_info: dict[str, Any]) -> None:
        self.connects = 0
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=mqtt_info["client_id"],
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(mqtt_info["username"], mqtt_info["password"])
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = self._on_connect
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            self.connects += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_second_connection_with_a_nodes_credentials_is_counted(
    cluster: ClusterProcess, mosquitto_broker: BrokerHandle, tmp_path: Path
) -> None:
    engine = NodeEngineProcess(tmp_path / "node", cluster.url, join_token=JOIN, name="n1")
    engine.start()
    try:
        identity = engine.wait_identity()
        node_id = identity["node_id"]
        wait_ready(cluster, 1)
        assert takeovers(cluster) == 0
        intruder = Intruder(mosquitto_broker, identity["mqtt"])
        try:
            wait_for(lambda: ENGINE_WARNING in engine.output(), 30, "the engine's warning")
            wait_for(lambda: takeovers(cluster) >= 1, 15, "the cluster counted a takeover")
            assert intruder.connects >= 2  # it was displaced and came back: ping-pong
        finally:
            intruder.close()
        wait_ready(cluster, 1)  # the engine is back and stays
        with api(cluster) as client:
            events = client.get(
                "/api/v1/events", params={"kind": "node.session_takeover", "node_id": node_id}
            ).json()
        # one event per node per minute, each takeover counted
        assert len(events["events"]) == 1, events
        assert events["events"][0]["data"] == {"takeovers": 1}
        log = cluster.log_path.read_text(errors="replace")
        assert log.count("session taken over") == 1, cluster.output()
        assert "a second engine with a copy of its identity, or stolen credentials" in log
        assert engine.output().count(ENGINE_WARNING) == 1  # at most once a minute
    finally:
        engine.stop_quietly()


def test_a_plain_reconnect_is_not_a_takeover(
    cluster: ClusterProcess, mosquitto_broker: BrokerHandle, tmp_path: Path
) -> None:
    """A broker restart drops the engine too (no 0x8E): not counted."""
    engine = NodeEngineProcess(tmp_path / "node", cluster.url, join_token=JOIN, name="n1")
    engine.start()
    try:
        engine.wait_identity()
        wait_ready(cluster, 1)
        mosquitto_broker.restart()
        wait_for(lambda: "lost the broker connection" in engine.output(), 15, "engine dropped")
        wait_for(lambda: engine.output().count("connected to the broker") >= 2, 20, "back")
        wait_ready(cluster, 1)
        assert takeovers(cluster) == 0
        assert ENGINE_WARNING not in engine.output()
    finally:
        engine.stop_quietly()
