"""`WireCounter`: count the messages on a cluster's broker by channel and kind.

Connects with the broker's admin credentials (the dynsec admin may read ``#``) and
subscribes to ``edge/v1/nodes/+/#``, so it sees every status, event, command and presence
of every node, in both directions. For tests that check how many messages a deploy costs
(issue 12: one message per fact) and for `bench/deploy_cost.py`.

    with WireCounter.connect(host, port, "admin", password) as wire:
        before = wire.snapshot()
        ...  # one deploy
        wire.wait_idle()
        print(wire.since(before))   # {("events", "ack"): 1, ("commands", "deploy"): 1, ...}

Only paho and the standard library: the benchmark loads this file by path to count an
older checkout's traffic too.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

__all__ = ["WireCounter", "kind_of"]

Key = tuple[str, str]
"""(channel, kind), e.g. ("events", "ack")."""


def kind_of(payload: bytes) -> str:
    """The envelope's `kind` (``?`` when the message is not a JSON envelope)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return "?"
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else "?"


class WireCounter:
    """Counts messages per (channel, kind); `seen` keeps every decoded message too
    (topic, envelope) when `keep` is true, for assertions on their content."""

    def __init__(self, client: mqtt.Client, *, keep: bool = False) -> None:
        self.client = client
        self.keep = keep
        self._lock = threading.Lock()
        self._counts: Counter[Key] = Counter()
        self._last = time.monotonic()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._subscribed = threading.Event()
        client.on_message = self._on_message
        client.on_subscribe = lambda *_a: self._subscribed.set()

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        keep: bool = False,
        timeout: float = 10.0,
    ) -> WireCounter:
        """Connect, subscribe to every node topic and wait for the SUBACK."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"wire-counter-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.username_pw_set(username, password)
        counter = cls(client, keep=keep)
        connected = threading.Event()
        client.on_connect = lambda *_a: connected.set()
        client.connect(host, port)
        client.loop_start()
        if not connected.wait(timeout):
            client.loop_stop()
            raise TimeoutError(f"wire counter: no CONNACK from {host}:{port}")
        client.subscribe("edge/v1/nodes/+/#", qos=1)
        if not counter._subscribed.wait(timeout):
            counter.close()
            raise TimeoutError("wire counter: no SUBACK")
        return counter

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        channel = msg.topic.rsplit("/", 1)[-1]
        payload = bytes(msg.payload)
        kind = kind_of(payload)
        with self._lock:
            self._counts[(channel, kind)] += 1
            if channel != "status":
                self._last = time.monotonic()
            if self.keep and kind != "?":
                self.seen.append((msg.topic, json.loads(payload)))

    def snapshot(self) -> Counter[Key]:
        """The counts so far."""
        with self._lock:
            return Counter(self._counts)

    def since(
        self, before: Counter[Key], *, skip: Callable[[Key], bool] | None = None
    ) -> dict[Key, int]:
        """Messages counted since `before` (a `snapshot()`), optionally without some keys."""
        now = self.snapshot()
        now.subtract(before)
        return {k: v for k, v in now.items() if v > 0 and not (skip and skip(k))}

    def wait_idle(self, quiet: float = 0.3, timeout: float = 10.0) -> None:
        """Wait until no message of any kind but `status` arrived for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                last = self._last
            if time.monotonic() - last >= quiet:
                return
            time.sleep(min(quiet / 3, 0.05))

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> WireCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
