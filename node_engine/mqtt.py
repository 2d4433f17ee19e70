"""The node's MQTT transport: a thin adapter over paho-mqtt 2.x.

paho's network thread only runs the callbacks below, and they only decode and put a
typed item on the engine's queue (the aiomqtt idea: messages as values, not work in
callbacks). Everything else (running commands, the outbox, presence) happens in the
engine's own thread.

Connection: MQTT v5, persistent session (clean start off, session expiry 1 day), a
retained offline `PresenceMessage` as last will, automatic reconnect with backoff, and
``connect_async`` so a broker that is down at start is not an error. Commands arrive at
QoS 1 with manual acknowledgement: the PUBACK goes out only after the engine handled
(and persisted) the command, so a crash in between makes the broker deliver it again.
A `logs_request` on the same topic is not a command: it becomes a `LogsRequested` item
stamped with its arrival time (acknowledged at once should it come at QoS 1), and never
touches the command path.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from node_engine.lean import patch_paho_without_ssl
from schemas.common import ID_PATTERN
from schemas.mqtt import (
    Channel,
    DeployMessage,
    LogsRequestMessage,
    MessageError,
    TerminateMessage,
    decode,
    parse_json,
    topic,
)
from schemas.mqtt_socket import set_tcp_nodelay
from schemas.node import MqttConnectInfo

log = logging.getLogger(__name__)
patch_paho_without_ssl(paho)

SESSION_EXPIRY_S = 24 * 3600
RECEIVE_MAXIMUM = 32
SESSION_TAKEN_OVER_RC = 0x8E
"""MQTT v5 DISCONNECT reason code: another connection with the same client id."""


# ---------------------------------------------------------------- queue items


@dataclass(frozen=True)
class Connected:
    """The broker accepted the connection (`session_present`: it kept our session)."""

    session_present: bool
    generation: int


@dataclass(frozen=True)
class ConnectFailed:
    """The broker refused the connection (bad credentials, not authorised...)."""

    reason: str


@dataclass(frozen=True)
class Disconnected:
    """The connection is gone; paho reconnects by itself. `taken_over`: the broker closed
    it because another client connected with our client id (MQTT v5 reason 0x8E)."""

    reason: str
    taken_over: bool = False


@dataclass(frozen=True)
class CommandReceived:
    """A valid command; ack it with `mid`/`qos`/`generation` once handled."""

    message: DeployMessage | TerminateMessage
    mid: int
    qos: int
    generation: int


@dataclass(frozen=True)
class CommandRejected:
    """A message on the commands topic that did not validate."""

    reason: str
    detail: str
    command_id: str
    kind: str
    mid: int
    qos: int
    generation: int


@dataclass(frozen=True)
class LogsRequested:
    """A valid logs request; `received` is time.monotonic() at its arrival."""

    message: LogsRequestMessage
    received: float


@dataclass(frozen=True)
class LogsRejected:
    """A `logs_request` that did not validate (answered with an error, if it has an id)."""

    reason: str
    detail: str
    request_id: str
    instance_id: str


@dataclass(frozen=True)
class Published:
    """The broker acknowledged a QoS 1 publish with this message id."""

    mid: int


TransportItem = (
    Connected
    | ConnectFailed
    | Disconnected
    | CommandReceived
    | CommandRejected
    | LogsRequested
    | LogsRejected
    | Published
)


class Transport(Protocol):
    """What the engine needs from an MQTT connection (a fake in unit tests)."""

    @property
    def connected(self) -> bool:
        """Whether the connection is up right now."""
        ...

    def start(self) -> None:
        """Begin connecting in the background."""
        ...

    def publish(
        self, topic_name: str, payload: bytes, qos: int, retain: bool = False
    ) -> int | None:
        """Publish; return the message id, or None if it could not even be queued."""
        ...

    def ack(self, mid: int, qos: int, generation: int) -> None:
        """Acknowledge a received command (no-op if the connection changed meanwhile)."""
        ...

    def stop(self, final: tuple[str, bytes] | None = None, timeout: float = 3.0) -> None:
        """Publish `final` (retained, QoS 1) if connected, disconnect cleanly, stop the thread."""
        ...


def _envelope_fields(raw: bytes) -> tuple[str, str, str]:
    """Best-effort envelope id, kind and payload instance id of a message that failed
    validation ("unknown" for what cannot be read; parsed with `decode`'s bounds, so a
    deeply nested message cannot raise RecursionError here)."""
    import re

    try:
        data = parse_json(raw)
    except MessageError:
        return "unknown", "unknown", "unknown"
    if not isinstance(data, dict):
        return "unknown", "unknown", "unknown"
    cid = data.get("id")
    kind = data.get("kind")
    payload = data.get("payload")
    iid = payload.get("instance_id") if isinstance(payload, dict) else None
    command_id = cid if isinstance(cid, str) and re.fullmatch(ID_PATTERN, cid) else "unknown"
    kind_text = kind[:64] if isinstance(kind, str) and kind else "unknown"
    instance_id = iid if isinstance(iid, str) and re.fullmatch(ID_PATTERN, iid) else "unknown"
    return command_id, kind_text, instance_id


class MqttTransport:
    """paho-mqtt client for one node; every callback ends in `sink.put(item)`."""

    def __init__(
        self,
        info: MqttConnectInfo,
        node_id: str,
        sink: queue.SimpleQueue[Any],
        *,
        will_payload: bytes,
        keepalive: int = 30,
        ca_file: Path | None = None,
        server_name: str | None = None,
        client_factory: Callable[..., Any] = paho.Client,
    ) -> None:
        self.info = info
        self.node_id = node_id
        self._sink = sink
        self._commands_topic = topic(node_id, Channel.COMMANDS)
        self._presence_topic = topic(node_id, Channel.PRESENCE)
        self._keepalive = keepalive
        self._generation = 0
        self._connected = threading.Event()
        client = client_factory(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=info.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        client.suppress_exceptions = True
        client.username_pw_set(info.username, info.password.get_secret_value())
        client.will_set(self._presence_topic, will_payload, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._tls_context: Any = None
        self._tls_hint = ""
        if info.tls:
            # imported only here: a plain-MQTT engine never loads OpenSSL (node_engine.lean)
            from schemas.tls import client_context

            # the operator's CA file wins over the CA in the join reply; hostname checked
            self._tls_context = client_context(
                cafile=ca_file,
                cadata=info.ca_pem,
                server_name=server_name or info.server_name,
            )
            client.tls_set_context(self._tls_context)
            trusted = (
                f"CA file {ca_file}"
                if ca_file is not None
                else "the CA from the join reply"
                if info.ca_pem
                else "the system CA store"
            )
            self._tls_hint = (
                f"trusting {trusted}, expecting {server_name or info.server_name or info.host}"
            )
        client.on_socket_open = set_tcp_nodelay
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        self._client = client

    # ----- paho callbacks (network thread): decode and hand over, nothing else -----

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            self._sink.put(ConnectFailed(str(reason_code)))
            return
        self._generation += 1
        # Subscribing is transport bookkeeping, not business work; a resumed session
        # already has the subscription and re-subscribing is harmless.
        client.subscribe(self._commands_topic, qos=1)
        self._connected.set()
        self._sink.put(Connected(bool(flags.session_present), self._generation))

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        reason = "cannot reach the broker"
        if self._tls_context is not None:
            from schemas.tls import last_tls_error

            tls_error = last_tls_error(self._tls_context)
            if tls_error is not None:
                reason = f"{tls_error} ({self._tls_hint})"
        self._sink.put(ConnectFailed(reason))

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            taken_over = getattr(reason_code, "value", None) == SESSION_TAKEN_OVER_RC
            self._sink.put(Disconnected(str(reason_code), taken_over=taken_over))

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        for code in reason_codes:
            if getattr(code, "is_failure", False):
                log.error("subscription to %s refused: %s", self._commands_topic, code)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        generation = self._generation
        try:
            self._handle_message(message, generation)
        except Exception as exc:  # never let a message kill the network thread
            self._sink.put(
                CommandRejected(
                    "error",
                    f"{type(exc).__name__}: {exc}"[:300],
                    "unknown",
                    "unknown",
                    message.mid,
                    message.qos,
                    generation,
                )
            )

    def _handle_message(self, message: Any, generation: int) -> None:
        try:
            decoded = decode(message.payload, topic_name=message.topic)
        except MessageError as exc:
            command_id, kind, instance_id = _envelope_fields(message.payload)
            if kind == "logs_request":
                self._ack_now(message)
                self._sink.put(LogsRejected(exc.reason, exc.detail, command_id, instance_id))
                return
            self._sink.put(
                CommandRejected(
                    exc.reason, exc.detail, command_id, kind, message.mid, message.qos, generation
                )
            )
            return
        if isinstance(decoded, LogsRequestMessage):
            self._ack_now(message)
            self._sink.put(LogsRequested(decoded, time.monotonic()))
        elif isinstance(decoded, DeployMessage | TerminateMessage):
            self._sink.put(CommandReceived(decoded, message.mid, message.qos, generation))
        else:  # decode() with topic_name already refuses other kinds; belt and braces
            self._sink.put(
                CommandRejected(
                    "wrong_channel",
                    f"kind {decoded.kind!r} is not a command",
                    decoded.id,
                    decoded.kind,
                    message.mid,
                    message.qos,
                    generation,
                )
            )

    def _ack_now(self, message: Any) -> None:
        """PUBACK a message that is not a command (a logs request sent at QoS 1 by
        mistake must not hold one of the session's receive slots)."""
        if message.qos > 0:
            with contextlib.suppress(Exception):
                self._client.ack(message.mid, message.qos)

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        self._sink.put(Published(mid))

    # ----- engine side -----

    @property
    def connected(self) -> bool:
        """Whether the connection is up right now."""
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background; a broker that is down now is retried with backoff."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        self._client.connect_async(
            self.info.host,
            self.info.port,
            keepalive=self._keepalive,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    def publish(
        self, topic_name: str, payload: bytes, qos: int, retain: bool = False
    ) -> int | None:
        """Publish (paho queues QoS 1 while disconnected); the message id or None."""
        info = self._client.publish(topic_name, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("publish to %s failed: %s", topic_name, paho.error_string(info.rc))
            return None
        if qos == 0 and info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        return int(info.mid)

    def ack(self, mid: int, qos: int, generation: int) -> None:
        """PUBACK a command once handled; skipped if the connection changed meanwhile."""
        if qos == 0 or generation != self._generation or not self.connected:
            return
        self._client.ack(mid, qos)

    def stop(self, final: tuple[str, bytes] | None = None, timeout: float = 3.0) -> None:
        """Publish `final` retained if connected, then disconnect and stop the thread."""
        try:
            if final is not None and self.connected:
                info = self._client.publish(final[0], final[1], qos=1, retain=True)
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(timeout)
            self._client.disconnect()
        finally:
            self._client.loop_stop()
