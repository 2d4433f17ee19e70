"""Every MQTT client of the system turns Nagle's algorithm off on its real socket.

A real Mosquitto; each client connects as it does in production (the cluster's
service client, its dynsec admin, a node engine's transport) and the option is read
back from the connected socket with getsockopt. A plain paho client shows the
default (off), so the check can fail.
"""

from __future__ import annotations

import queue
import socket
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cluster_orchestrator.broker_dynsec import (
    node_acls,
    node_client_id,
    node_role_name,
    node_username,
    service_acls,
)
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.mqtt_adapter import MqttAdapter
from node_engine.mqtt import Connected, MqttTransport
from schemas.node import MqttConnectInfo
from tests.fixtures.broker import BrokerHandle


def nodelay(client: Any) -> int:
    """TCP_NODELAY of a connected paho client's socket."""
    sock = client.socket()
    assert sock is not None, "not connected"
    assert sock.getsockname()[0] == "127.0.0.1"
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_plain_paho_leaves_nagle_on(mosquitto_broker: BrokerHandle) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.username_pw_set(mosquitto_broker.admin_username, mosquitto_broker.admin_password)
    client.connect(mosquitto_broker.host, mosquitto_broker.port)
    try:
        assert nodelay(client) == 0
    finally:
        client.disconnect()


def test_dynsec_admin_sets_tcp_nodelay(mosquitto_broker: BrokerHandle) -> None:
    admin = mosquitto_broker.new_admin()
    try:
        assert admin.get_default_acl_access()  # a round trip: really connected
        assert nodelay(admin._client) != 0
    finally:
        admin.close()


def test_cluster_service_client_sets_tcp_nodelay(mosquitto_broker: BrokerHandle) -> None:
    admin = mosquitto_broker.admin
    admin.ensure_role("svc-nodelay", service_acls())
    admin.create_client("svc-nodelay", "svc-password-1", roles=["svc-nodelay"])
    adapter = MqttAdapter(
        host=mosquitto_broker.host,
        port=mosquitto_broker.port,
        username="svc-nodelay",
        password="svc-password-1",
        client_id="svc-nodelay",
        deliver=lambda inbound: None,
        metrics=Metrics(),
    )
    adapter.start(timeout=10)
    try:
        assert nodelay(adapter._client) != 0
    finally:
        adapter.stop()


def test_node_engine_transport_sets_tcp_nodelay(mosquitto_broker: BrokerHandle) -> None:
    node_id = "n-nodelay"
    admin = mosquitto_broker.admin
    admin.ensure_role(node_role_name(node_id), node_acls(node_id))
    admin.create_client(
        node_username(node_id),
        "node-password-1",
        roles=[node_role_name(node_id)],
        client_id=node_client_id(node_id),
    )
    info = MqttConnectInfo(
        host=mosquitto_broker.host,
        port=mosquitto_broker.port,
        username=node_username(node_id),
        password="node-password-1",  # type: ignore[arg-type]
        client_id=node_client_id(node_id),
    )
    sink: queue.SimpleQueue[Any] = queue.SimpleQueue()
    transport = MqttTransport(info, node_id, sink, will_payload=b"offline")
    transport.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            item = sink.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(item, Connected):
                break
        assert nodelay(transport._client) != 0
    finally:
        transport.stop()
