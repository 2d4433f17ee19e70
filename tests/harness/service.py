"""The cluster's MQTT side for tests: send commands, collect what nodes publish.

`ServiceClient` connects with the ``cluster-service`` role (or any credentials that
may read ``edge/v1/nodes/+/...`` and write commands), records every decoded message
in thread-safe lists and lets tests wait on conditions with deadlines:

    ack = svc.wait_for(lambda s: s.ack_for(node_id, cmd_id), timeout=10, what="ack")
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from schemas.common import new_id
from schemas.job import TaskSpec, TaskState
from schemas.mqtt import (
    AckMessage,
    Channel,
    DeployCommand,
    DeployMessage,
    MessageError,
    PresenceMessage,
    StatusMessage,
    TaskEventMessage,
    TerminateCommand,
    TerminateMessage,
    decode,
    encode,
    subscription,
    topic,
)
from tests.harness.wait import WaitTimeout as WaitTimeout

T = TypeVar("T")


@dataclass(frozen=True)
class Received:
    """One message a node published, decoded, with its arrival time."""

    topic: str
    message: Any
    retained: bool
    at: float


class ServiceClient:
    """MQTT client playing the cluster orchestrator's service side."""

    def __init__(
        self, host: str, port: int, username: str, password: str, *, client_id: str | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.received: list[Received] = []
        self.invalid: list[tuple[str, str]] = []
        self._cond = threading.Condition()
        self._connected = threading.Event()
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"svc-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.username_pw_set(username, password)
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    # ----- lifecycle -----

    def start(self, timeout: float = 10.0) -> ServiceClient:
        """Connect (persistent session) and subscribe; wait until connected."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self._client.connect_async(self.host, self.port, clean_start=False, properties=props)
        self._client.loop_start()
        if not self._connected.wait(timeout):
            raise WaitTimeout(f"service client could not connect to {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> ServiceClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        """Whether the service client is connected right now."""
        return self._connected.is_set()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            return
        for channel in (Channel.STATUS, Channel.EVENTS, Channel.PRESENCE, Channel.LOGS):
            client.subscribe(subscription(channel), qos=1)
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._connected.clear()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            message = decode(msg.payload, topic_name=msg.topic)
        except MessageError as exc:
            with self._cond:
                self.invalid.append((msg.topic, str(exc)))
                self._cond.notify_all()
            return
        with self._cond:
            self.received.append(Received(msg.topic, message, bool(msg.retain), time.monotonic()))
            self._cond.notify_all()

    # ----- waiting -----

    def wait_for(
        self, predicate: Callable[[ServiceClient], T | None], timeout: float, what: str = ""
    ) -> T:
        """Wait until `predicate(self)` returns something truthy and return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate(self)
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"timed out after {timeout}s waiting for {what or predicate}")
                self._cond.wait(min(left, 0.5))

    # ----- views (call under wait_for or freely: lists only grow) -----

    def messages(self, node_id: str, cls: type[T]) -> list[T]:
        """All messages of one type a node published, in arrival order."""
        with self._cond:
            items = list(self.received)
        return [
            r.message
            for r in items
            if isinstance(r.message, cls) and r.message.node_id == node_id  # type: ignore[attr-defined]
        ]

    def acks(self, node_id: str, command_id: str | None = None) -> list[AckMessage]:
        """Acks from a node, optionally for one command id."""
        acks = self.messages(node_id, AckMessage)
        if command_id is not None:
            acks = [a for a in acks if a.payload.command_id == command_id]
        return acks

    def ack_for(self, node_id: str, command_id: str) -> AckMessage | None:
        """The first ack for a command, or None."""
        acks = self.acks(node_id, command_id)
        return acks[0] if acks else None

    def task_events(self, node_id: str, instance_id: str | None = None) -> list[TaskEventMessage]:
        """Task state changes from a node in arrival order, optionally for one instance:
        its task events and the changes carried by its command acks (`CommandAck.event`,
        shown as a task event with the ack's envelope)."""
        with self._cond:
            items = list(self.received)
        events: list[TaskEventMessage] = []
        for r in items:
            m = r.message
            if getattr(m, "node_id", None) != node_id:
                continue
            if isinstance(m, TaskEventMessage):
                events.append(m)
            elif isinstance(m, AckMessage) and m.payload.event is not None:
                events.append(
                    TaskEventMessage(id=m.id, ts=m.ts, node_id=m.node_id, payload=m.payload.event)
                )
        if instance_id is not None:
            events = [e for e in events if e.payload.instance_id == instance_id]
        return events

    def starts(self, node_id: str, instance_id: str) -> int:
        """How many times the node reported starting the instance: a deploy's ack
        carrying its first state (RUNNING or FAILED, nothing before it), and a STARTING
        task event for each restart. A message delivered twice (the outbox resends
        what it had not recorded as delivered before a crash: same envelope id) counts
        once."""
        return len(
            {
                e.id
                for e in self.task_events(node_id, instance_id)
                if e.payload.state is TaskState.STARTING
                or (e.payload.previous is None and e.payload.state is not TaskState.TERMINATED)
            }
        )

    def event_with_state(
        self, node_id: str, instance_id: str, state: TaskState
    ) -> TaskEventMessage | None:
        """The latest event putting an instance into `state`, or None."""
        events = [e for e in self.task_events(node_id, instance_id) if e.payload.state is state]
        return events[-1] if events else None

    def statuses(self, node_id: str) -> list[StatusMessage]:
        """Status messages from a node."""
        return self.messages(node_id, StatusMessage)

    def last_status(self, node_id: str) -> StatusMessage | None:
        """The latest status from a node."""
        statuses = self.statuses(node_id)
        return statuses[-1] if statuses else None

    def presence(self, node_id: str) -> PresenceMessage | None:
        """The latest presence message of a node."""
        items = self.messages(node_id, PresenceMessage)
        return items[-1] if items else None

    def status_after(self, node_id: str, since: float) -> StatusMessage | None:
        """The first status that arrived after monotonic time `since`."""
        with self._cond:
            items = list(self.received)
        for r in items:
            if (
                r.at > since
                and isinstance(r.message, StatusMessage)
                and r.message.node_id == node_id
            ):
                return r.message
        return None

    def wait_task_state(
        self, node_id: str, instance_id: str, state: TaskState, timeout: float = 15.0
    ) -> TaskEventMessage:
        """Wait for an event putting `instance_id` into `state`."""
        return self.wait_for(
            lambda s: s.event_with_state(node_id, instance_id, state),
            timeout,
            f"{instance_id} -> {state.value}",
        )

    def wait_ack(self, node_id: str, command_id: str, timeout: float = 15.0) -> AckMessage:
        """Wait for the (first) ack of a command."""
        return self.wait_for(lambda s: s.ack_for(node_id, command_id), timeout, f"ack {command_id}")

    # ----- sending -----

    def publish(self, node_id: str, payload: bytes, qos: int = 1) -> None:
        """Publish raw bytes on a node's commands topic and wait for the broker's PUBACK."""
        info = self._client.publish(topic(node_id, Channel.COMMANDS), payload, qos=qos)
        info.wait_for_publish(10)

    def deploy(
        self,
        node_id: str,
        instance_id: str,
        spec: TaskSpec,
        *,
        job_id: str = "job1",
        command_id: str | None = None,
    ) -> str:
        """Send a DEPLOY; return its command (envelope) id."""
        message = DeployMessage(
            id=command_id or new_id("c"),
            node_id=node_id,
            payload=DeployCommand(instance_id=instance_id, job_id=job_id, spec=spec),
        )
        self.publish(node_id, encode(message))
        return message.id

    def terminate(
        self, node_id: str, instance_id: str, *, reason: str = "", command_id: str | None = None
    ) -> str:
        """Send a TERMINATE; return its command id."""
        message = TerminateMessage(
            id=command_id or new_id("c"),
            node_id=node_id,
            payload=TerminateCommand(instance_id=instance_id, reason=reason),
        )
        self.publish(node_id, encode(message))
        return message.id

    def resend(self, node_id: str, message: DeployMessage | TerminateMessage) -> None:
        """Publish an already built command again (same id)."""
        self.publish(node_id, encode(message))
