"""The orchestrator's own MQTT client: subscribe to every node's topics, publish commands.

The paho network thread does exactly two things with a message: decode it with
`schemas.mqtt.decode` (which validates the envelope, the payload and that the
envelope's node id matches the topic) and hand the typed message to the core loop
through its inbox. Messages that do not validate are counted by reason (visible at
`/metrics`) and logged at a bounded rate; they never reach the core.

The session is persistent (clean start off, a fixed client id per cluster, a session
expiry), so task events and acks published while the orchestrator restarts are
delivered when it comes back.

Logs: `logs_chunk` replies (`edge/v1/nodes/+/logs`, QoS 0) are decoded the same way and
go to `deliver_logs` (the owner of pending log requests, `cluster_orchestrator.logs`)
instead of the core; `publish_logs_request` sends a `logs_request` at QoS 0 with an MQTT
message expiry equal to its validity.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cluster_orchestrator.metrics import Metrics
from schemas.mqtt import (
    CHANNEL_QOS,
    LOGS_REQUEST_QOS,
    Channel,
    CommandMessage,
    LogsChunkMessage,
    LogsRequestMessage,
    Message,
    MessageError,
    decode,
    encode,
    subscription,
    topic,
)
from schemas.mqtt_socket import set_tcp_nodelay

__all__ = ["Inbound", "MqttAdapter"]

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 3600
_LOG_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class Inbound:
    """A decoded message and how it arrived."""

    message: Message
    retained: bool
    received_at: float  # wall clock, for lag


class MqttAdapter:
    """Service MQTT client. `deliver` is called on the network thread with each message."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        client_id: str,
        deliver: Callable[[Inbound], None],
        metrics: Metrics,
        on_connected: Callable[[], None] | None = None,
        deliver_logs: Callable[[LogsChunkMessage], None] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._deliver = deliver
        self._deliver_logs = deliver_logs
        self._metrics = metrics
        self._on_connected_cb = on_connected
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._client.max_inflight_messages_set(100)
        self._client.max_queued_messages_set(0)
        self._client.on_socket_open = set_tcp_nodelay
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._connected = threading.Event()
        self._refused: ReasonCode | None = None
        self._last_log: dict[str, float] = {}
        self._started = False

    # ---------------------------------------------------------------- lifecycle

    @property
    def connected(self) -> bool:
        """True while connected and subscribed."""
        return self._connected.is_set()

    def start(self, timeout: float = 10.0) -> None:
        """Connect and subscribe; raise ConnectionError if not connected in time."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(
            self._host, self._port, keepalive=15, clean_start=False, properties=props
        )
        self._client.loop_start()
        self._started = True
        if not self._connected.wait(timeout):
            refused = self._refused
            self.stop()
            detail = f": refused ({refused})" if refused is not None else ""
            raise ConnectionError(
                f"cannot connect to the broker at {self._host}:{self._port}{detail}"
            )

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        if not self._started:
            return
        self._started = False
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._connected.clear()

    # ---------------------------------------------------------------- publish

    def publish_command(self, message: CommandMessage) -> bool:
        """Publish a DEPLOY/TERMINATE to its node (QoS 1); False if paho refused it."""
        info = self._client.publish(
            topic(message.node_id, Channel.COMMANDS),
            encode(message),
            qos=CHANNEL_QOS[Channel.COMMANDS],
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning(
                "publishing %s to node %s failed: %s",
                message.kind,
                message.node_id,
                mqtt.error_string(info.rc),
            )
            return False
        self._metrics.inc("edge_cluster_commands_total", {"kind": message.kind})
        return True

    def publish_logs_request(self, message: LogsRequestMessage) -> bool:
        """Publish a `logs_request` to its node at QoS 0, expiring (MQTT v5 message
        expiry) with its validity; False if not connected or paho refused it."""
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.MessageExpiryInterval = max(1, math.ceil(message.ttl_s))
        info = self._client.publish(
            topic(message.node_id, Channel.COMMANDS),
            encode(message),
            qos=LOGS_REQUEST_QOS,
            properties=props,
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.info(
                "publishing a logs request to node %s failed: %s",
                message.node_id,
                mqtt.error_string(info.rc),
            )
            return False
        self._metrics.inc("edge_cluster_commands_total", {"kind": message.kind})
        return True

    # ---------------------------------------------------------------- callbacks

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._refused = reason_code
            log.error("broker refused the orchestrator's client: %s", reason_code)
            return
        subs = [
            (subscription(Channel.STATUS), CHANNEL_QOS[Channel.STATUS]),
            (subscription(Channel.EVENTS), CHANNEL_QOS[Channel.EVENTS]),
            (subscription(Channel.PRESENCE), CHANNEL_QOS[Channel.PRESENCE]),
            (subscription(Channel.LOGS), CHANNEL_QOS[Channel.LOGS]),
        ]
        client.subscribe(subs)
        log.info("connected to the broker at %s:%s", self._host, self._port)
        self._connected.set()
        if self._on_connected_cb is not None:
            self._on_connected_cb()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        if self._started:
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        try:
            message = decode(bytes(msg.payload), topic_name=msg.topic)
        except MessageError as exc:
            self.reject(exc.reason, msg.topic, exc.detail)
            return
        self._metrics.inc("edge_cluster_mqtt_messages_total", {"kind": message.kind})
        if message.kind in ("deploy", "terminate", "logs_request"):
            # decode() already refuses commands on node channels; this is a safety net
            self.reject("wrong_channel", msg.topic, f"{message.kind} from a node")
            return
        if isinstance(message, LogsChunkMessage):
            if self._deliver_logs is None:
                self.reject("unexpected_logs", msg.topic, "no log requests are served here")
            else:
                self._deliver_logs(message)
            return
        self._deliver(Inbound(message=message, retained=bool(msg.retain), received_at=now))

    def reject(self, reason: str, topic_name: str, detail: str) -> None:
        """Count a rejected message and log it (at most once per reason every 10 s)."""
        self._metrics.inc("edge_cluster_mqtt_rejected_total", {"reason": reason})
        now = time.monotonic()
        if now - self._last_log.get(reason, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._last_log[reason] = now
            log.warning("rejected MQTT message on %s (%s): %s", topic_name, reason, detail[:300])
