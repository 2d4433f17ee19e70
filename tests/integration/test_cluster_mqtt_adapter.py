"""The cluster's MQTT adapter on a real broker, in this process (issue 15).

Whatever goes wrong while handling one message costs that message (counted as reason
`error`), never the network thread; and `health()` says when the thread has ended, which
`/healthz` turns into a 503 naming `mqtt_loop_dead`.
"""

from __future__ import annotations

import queue
import uuid
from collections.abc import Iterator

import pytest

from cluster_orchestrator.broker_dynsec import node_client_id, node_username
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.mqtt_adapter import Inbound, MqttAdapter
from schemas.mqtt import Channel, StatusMessage, encode, topic
from schemas.node import DiskStatus, MemoryStatus, NodeStatus
from tests.fixtures.broker import BrokerHandle, MqttProbe
from tests.harness.wait import wait_for

pytestmark = [pytest.mark.broker]


def status(node_id: str, seq: int) -> bytes:
    return encode(
        StatusMessage(
            node_id=node_id,
            payload=NodeStatus(
                ts=1.0,
                seq=seq,
                cpu_percent=1.0,
                memory=MemoryStatus(total_mib=1024, available_mib=1000, used_percent=2),
                disk=DiskStatus(total_mib=1000, free_mib=900, used_percent=10),
            ),
        )
    )


class Deliveries:
    """A `deliver` callback that raises for the statuses whose seq is in `fail`."""

    def __init__(self, fail: set[int]) -> None:
        self.fail = fail
        self.got: queue.Queue[Inbound] = queue.Queue()

    def __call__(self, inbound: Inbound) -> None:
        message = inbound.message
        if isinstance(message, StatusMessage) and message.payload.seq in self.fail:
            raise RuntimeError(f"a bug handling seq {message.payload.seq}")
        self.got.put(inbound)


@pytest.fixture
def node(mosquitto_broker: BrokerHandle) -> Iterator[MqttProbe]:
    """Node n1's own connection (its dynsec client and role)."""
    password = uuid.uuid4().hex
    mosquitto_broker.admin.ensure_node_client("n1", password)
    probe = mosquitto_broker.probe(node_username("n1"), password, client_id=node_client_id("n1"))
    assert probe.connected
    yield probe
    probe.close()


def adapter(broker: BrokerHandle, deliver: Deliveries, metrics: Metrics) -> MqttAdapter:
    password = uuid.uuid4().hex
    broker.admin.ensure_service_client("svc-test", password)
    mqtt = MqttAdapter(
        host=broker.host,
        port=broker.port,
        username="svc-test",
        password=password,
        client_id=f"svc-test-{uuid.uuid4().hex[:6]}",
        deliver=deliver,
        metrics=metrics,
    )
    mqtt.start()
    return mqtt


def test_a_failing_handler_costs_one_message_not_the_thread(
    mosquitto_broker: BrokerHandle, node: MqttProbe
) -> None:
    metrics = Metrics()
    deliveries = Deliveries(fail={2})
    mqtt = adapter(mosquitto_broker, deliveries, metrics)
    try:
        status_topic = topic("n1", Channel.STATUS)

        def subscribed() -> bool:  # a barrier: the adapter's SUBSCRIBE has been served
            node.publish(status_topic, status("n1", 100), qos=0)
            try:
                deliveries.got.get(timeout=0.2)
            except queue.Empty:
                return False
            return True

        wait_for(subscribed, 10, "the adapter subscribed")
        for seq in (1, 2, 3):
            node.publish(status_topic, status("n1", seq), qos=0)
        seqs: list[int] = []
        while 3 not in seqs:  # in order on one connection; late barrier copies left out
            inbound = deliveries.got.get(timeout=10)
            assert isinstance(inbound.message, StatusMessage)
            if inbound.message.payload.seq != 100:
                seqs.append(inbound.message.payload.seq)
        assert seqs == [1, 3]
        assert metrics.counter("edge_cluster_mqtt_rejected_total", {"reason": "error"}) == 1
        assert mqtt.loop_alive and mqtt.health() == (True, "connected")
    finally:
        mqtt.stop()
    assert mqtt.health() == (False, "mqtt_stopped")


def test_health_names_a_dead_network_thread(
    mosquitto_broker: BrokerHandle, node: MqttProbe
) -> None:
    metrics = Metrics()
    mqtt = adapter(mosquitto_broker, Deliveries(fail=set()), metrics)
    try:
        assert mqtt.health() == (True, "connected")
        # end paho's network thread under the adapter, as an exception escaping it did
        mqtt._client.loop_stop()
        assert not mqtt.loop_alive
        assert mqtt.health() == (False, "mqtt_loop_dead")
    finally:
        mqtt.stop()
