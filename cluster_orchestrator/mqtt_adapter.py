"""The orchestrator's own MQTT client: subscribe to every node's topics, publish commands.

The paho network thread does exactly two things with a message: decode it with
`schemas.mqtt.decode` (which validates the envelope, the payload and that the
envelope's node id matches the topic) and hand the typed message to the core loop
through its inbox. Messages that do not validate are counted by reason (visible at
`/metrics`) and logged at a bounded rate; they never reach the core. No message can end
the network thread: decode raises nothing but `MessageError`, anything else a callback
raises is counted as reason `error` (logged with its traceback at the same bounded
rate), and paho's `suppress_exceptions` is on as a second belt. `health` tells
`/healthz` whether the thread still runs and the broker connection is up (issue 15).

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
import ssl
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
from schemas.tls import last_tls_error

__all__ = ["Inbound", "MqttAdapter"]

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 3600
_LOG_EVERY_S = 10.0
DEFAULT_HEALTH_GRACE_S = 5.0


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
        tls_context: ssl.SSLContext | None = None,
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
        # a callback that raises must never end the network thread (issue 15)
        self._client.suppress_exceptions = True
        self._client.username_pw_set(username, password)
        self._tls_context = tls_context
        if tls_context is not None:
            # a verifying context (schemas.tls.client_context): CA and host name checked
            self._client.tls_set_context(tls_context)
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
        self._down_since: float | None = time.monotonic()  # not connected since (monotonic)

    # ---------------------------------------------------------------- lifecycle

    @property
    def connected(self) -> bool:
        """True while connected and subscribed."""
        return self._connected.is_set()

    @property
    def loop_alive(self) -> bool:
        """Whether paho's network thread runs (it clears its thread attribute on exit)."""
        thread = getattr(self._client, "_thread", None)
        return isinstance(thread, threading.Thread) and thread.is_alive()

    def health(self, grace_s: float = DEFAULT_HEALTH_GRACE_S) -> tuple[bool, str]:
        """(healthy, state) for `/healthz`: `connected`; `reconnecting` (down for at
        most `grace_s`, still healthy); or unhealthy: `broker_disconnected` (down longer),
        `mqtt_loop_dead` (the network thread ended: nothing is received or reconnected
        any more), `mqtt_stopped`."""
        if not self._started:
            return False, "mqtt_stopped"
        if not self.loop_alive:
            return False, "mqtt_loop_dead"
        if self.connected:
            return True, "connected"
        since = self._down_since
        if since is not None and time.monotonic() - since <= grace_s:
            return True, "reconnecting"
        return False, "broker_disconnected"

    @property
    def disconnected_for(self) -> float:
        """Seconds since the broker connection went down (0 while connected)."""
        since = self._down_since
        return 0.0 if since is None or self.connected else time.monotonic() - since

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
            tls_error = last_tls_error(self._tls_context)
            if tls_error is not None:
                detail = f": {tls_error}"
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
        self._down_since = None
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
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._connected.clear()
        if self._started:
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._handle(msg)
        except Exception as exc:  # a bug must cost one message, never the network thread
            self.reject("error", msg.topic, f"{type(exc).__name__}: {exc}", exc_info=True)

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
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

    def reject(self, reason: str, topic_name: str, detail: str, *, exc_info: bool = False) -> None:
        """Count a rejected message and log it (at most once per reason every 10 s;
        `exc_info` adds the traceback of an unexpected failure)."""
        self._metrics.inc("edge_cluster_mqtt_rejected_total", {"reason": reason})
        now = time.monotonic()
        if now - self._last_log.get(reason, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._last_log[reason] = now
            log.warning(
                "rejected MQTT message on %s (%s): %s",
                topic_name[:200],
                reason,
                detail[:300],
                exc_info=exc_info,
            )
