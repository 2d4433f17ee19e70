"""The engine: the one loop that owns all node-side state and wires the parts together.

Everything that changes state runs here, in one thread: commands from the transport
queue, task supervision, status publishing, the outbox. The MQTT network thread only
feeds the queue (see `node_engine.mqtt`); signal handlers only put a stop marker on it
(`queue.SimpleQueue.put` is reentrant, so that is safe from a handler).

Per tick (every `status_interval` seconds): poll tasks (exits, restarts), sample the
host, let the shedder (if configured) decide, publish a `StatusMessage` (QoS 0, only
while connected: a stale status is worthless). Events and acks go through the `Outbox`
(QoS 1, persisted, delivered after reconnects and restarts).
"""

from __future__ import annotations

import logging
import queue
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from node_engine.monitor import Monitor, Sample
from node_engine.mqtt import (
    CommandReceived,
    CommandRejected,
    Connected,
    ConnectFailed,
    Disconnected,
    Published,
    Transport,
)
from node_engine.state import CommandOutcome, Outbox, SeenCommands
from node_engine.supervisor import ShedDecision, Supervisor, TaskChange
from schemas.common import Runtime
from schemas.mqtt import (
    AckMessage,
    Channel,
    CommandAck,
    DeployMessage,
    Presence,
    PresenceMessage,
    StatusMessage,
    TaskEvent,
    TaskEventMessage,
    TerminateMessage,
    encode,
    topic,
)
from schemas.node import NodeStatus, TaskStatus

log = logging.getLogger(__name__)

STOP = object()
"""Queue marker: leave the loop."""

INFLIGHT_WINDOW = 100
"""At most this many outbox messages handed to paho and not yet acknowledged."""


class Shedder(Protocol):
    """Hook for local priority shedding (issue 7); the engine calls it once per tick.

    It receives the host sample and the task list and returns what to pause, stop or
    resume; the supervisor applies each decision and reports it as a task event.
    """

    @property
    def active(self) -> bool:
        """True while the shedder holds tasks back (reported as `NodeStatus.shedding`)."""
        ...

    def evaluate(self, sample: Sample, tasks: Sequence[TaskStatus]) -> Sequence[ShedDecision]:
        """Decide, from one sample and the current tasks, what to shed or bring back."""
        ...


def offline_presence(node_id: str, engine_version: str, reason: str) -> bytes:
    """The retained offline presence (also the last will)."""
    return encode(
        PresenceMessage(
            node_id=node_id,
            payload=Presence(online=False, engine_version=engine_version, reason=reason),
        )
    )


class Engine:
    """Owns the loop; build it with its parts (all injectable) and call `run()`."""

    def __init__(
        self,
        *,
        node_id: str,
        inbox: queue.SimpleQueue[Any],
        transport: Transport,
        monitor: Monitor,
        supervisor_factory: Callable[[Callable[[TaskChange], None]], Supervisor],
        outbox: Outbox,
        seen: SeenCommands,
        status_interval: float,
        runtimes: Sequence[Runtime],
        engine_version: str = "",
        shedder: Shedder | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.inbox = inbox
        self.transport = transport
        self.monitor = monitor
        self.outbox = outbox
        self.seen = seen
        self.status_interval = status_interval
        self.runtimes = list(runtimes)
        self.engine_version = engine_version
        self.shedder = shedder
        self._clock = clock
        self._wall = wall
        self.supervisor = supervisor_factory(self._emit)
        self._topics = {ch: topic(node_id, ch) for ch in Channel}
        self._inflight: dict[int, int] = {}  # paho mid -> outbox key
        self._inflight_keys: set[int] = set()
        self.messages_rejected = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self._status_seq = int(wall() * 1000)  # monotonic across restarts, +1 per status
        self._last_connect_error = ""
        self._stopping = False
        self._online = False  # set once the Connected item was handled (presence went first)

    # ----- outgoing -----

    def _emit(self, change: TaskChange) -> None:
        event = TaskEventMessage(
            node_id=self.node_id,
            payload=TaskEvent(
                instance_id=change.instance_id,
                state=change.state,
                previous=change.previous,
                reason=change.reason,
                exit_code=change.exit_code,
                seq=self.outbox.take_seq(),
                data=change.data,
            ),
        )
        self.outbox.append(self._topics[Channel.EVENTS], encode(event))

    def _ack(
        self,
        command_id: str,
        kind: str,
        outcome: CommandOutcome | None,
        *,
        duplicate: bool = False,
        accepted: bool | None = None,
        reason: str = "",
        instance_id: str | None = None,
    ) -> None:
        ack = CommandAck(
            command_id=command_id[:128],
            command_kind=kind[:128],
            instance_id=outcome.instance_id if outcome else instance_id,
            accepted=outcome.accepted if outcome else bool(accepted),
            duplicate=duplicate,
            reason=(outcome.reason if outcome else reason)[:1024],
        )
        message = AckMessage(node_id=self.node_id, payload=ack)
        self.outbox.append(self._topics[Channel.EVENTS], encode(message))

    @property
    def online(self) -> bool:
        """Connected, and the online presence has been published on this connection."""
        return self._online and self.transport.connected

    def _flush(self) -> None:
        """Hand waiting outbox entries to paho, keeping at most INFLIGHT_WINDOW in flight."""
        if not self.online:
            return
        for entry in self.outbox:
            if len(self._inflight) >= INFLIGHT_WINDOW:
                break
            if entry.key in self._inflight_keys:
                continue
            mid = self.transport.publish(entry.topic, entry.payload, entry.qos)
            if mid is None:
                break
            self._inflight[mid] = entry.key
            self._inflight_keys.add(entry.key)

    def _publish_presence(self) -> None:
        message = PresenceMessage(
            node_id=self.node_id,
            payload=Presence(online=True, engine_version=self.engine_version),
        )
        self.transport.publish(self._topics[Channel.PRESENCE], encode(message), 1, retain=True)

    def _publish_status(self, sample: Sample, tasks: list[TaskStatus]) -> None:
        self._status_seq += 1
        status = NodeStatus(
            ts=sample.ts,
            seq=self._status_seq,
            cpu_percent=sample.cpu_percent,
            cpu_per_core=sample.cpu_per_core,
            load_1m=sample.load_1m,
            memory=sample.memory,
            disk=sample.disk,
            network=sample.network,
            temperatures_c=sample.temperatures_c,
            max_temperature_c=sample.max_temperature_c,
            throttling=sample.throttling,
            accelerators=sample.accelerators,
            runtimes=self.runtimes,
            tasks=tasks,
            shedding=bool(self.shedder and self.shedder.active),
            messages_rejected=self.messages_rejected,
        )
        if self.online:
            message = StatusMessage(node_id=self.node_id, payload=status)
            self.transport.publish(self._topics[Channel.STATUS], encode(message), 0)

    # ----- incoming -----

    def _handle(self, item: Any) -> None:
        if isinstance(item, CommandReceived):
            self._on_command(item)
        elif isinstance(item, CommandRejected):
            self._on_rejected(item)
        elif isinstance(item, Published):
            key = self._inflight.pop(item.mid, None)
            if key is not None:
                self._inflight_keys.discard(key)
                self.outbox.remove(key)
        elif isinstance(item, Connected):
            self._last_connect_error = ""
            log.info(
                "connected to the broker (session %s)",
                "resumed" if item.session_present else "new",
            )
            self._publish_presence()
            self._online = True
        elif isinstance(item, Disconnected):
            self._online = False
            log.warning("lost the broker connection (%s); reconnecting", item.reason)
        elif isinstance(item, ConnectFailed) and item.reason != self._last_connect_error:
            log.warning("cannot connect to the broker: %s (retrying)", item.reason)
            self._last_connect_error = item.reason

    def _on_command(self, item: CommandReceived) -> None:
        message = item.message
        kind = message.kind
        previous = self.seen.get(message.id)
        if previous is not None:
            log.info("command %s (%s) seen before: acknowledging again", message.id, kind)
            self._ack(message.id, kind, previous, duplicate=True)
        else:
            outcome: CommandOutcome
            if isinstance(message, DeployMessage):
                cmd = message.payload
                outcome = self.supervisor.deploy(cmd.instance_id, cmd.job_id, cmd.spec, message.id)
            elif isinstance(message, TerminateMessage):
                term = message.payload
                outcome = self.supervisor.terminate(term.instance_id, term.reason)
            else:  # pragma: no cover - the transport only queues commands
                return
            self.seen.add(message.id, outcome)
            self.seen.save()
            log.info(
                "command %s %s %s: %s%s",
                kind,
                outcome.instance_id,
                message.id,
                "accepted" if outcome.accepted else "refused",
                f" ({outcome.reason})" if outcome.reason else "",
            )
            self._ack(message.id, kind, outcome)
        self.outbox.save()
        self.transport.ack(item.mid, item.qos, item.generation)

    def _on_rejected(self, item: CommandRejected) -> None:
        self.messages_rejected += 1
        self.rejected_by_reason[item.reason] += 1
        log.warning(
            "rejected message %s on the commands topic: %s: %s (rejected so far by reason: %s)",
            item.command_id,
            item.reason,
            item.detail,
            dict(self.rejected_by_reason),
        )
        self._ack(
            item.command_id,
            item.kind,
            None,
            accepted=False,
            reason=f"{item.reason}: {item.detail}",
        )
        self.outbox.save()
        self.transport.ack(item.mid, item.qos, item.generation)

    # ----- the loop -----

    def request_stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler and from other threads)."""
        self.inbox.put(STOP)

    def tick(self) -> None:
        """One status period: supervise tasks, sample the host, shed, publish status."""
        self.supervisor.poll()
        sample = self.monitor.sample()
        tasks = self.supervisor.statuses()
        if self.shedder is not None:
            try:
                decisions = self.shedder.evaluate(sample, tasks)
            except Exception:
                log.exception("shedder failed")
                decisions = []
            for decision in decisions:
                self.supervisor.apply_shed(decision)
            if decisions:
                tasks = self.supervisor.statuses()
        # Events first: a status that already shows a change must not overtake the event
        # carrying its reason and data (the cluster applies whichever comes first).
        self._flush()
        self._publish_status(sample, tasks)

    def run(self) -> None:
        """Recover tasks, connect, and loop until `request_stop()`; then go offline cleanly."""
        self.supervisor.recover()
        self.outbox.save()
        self.transport.start()
        next_tick = self._clock()
        try:
            while True:
                timeout = max(0.0, next_tick - self._clock())
                try:
                    item = self.inbox.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is STOP:
                    break
                if item is not None:
                    self._handle(item)
                    for _ in range(200):  # drain what else is waiting, bounded
                        try:
                            item = self.inbox.get_nowait()
                        except queue.Empty:
                            break
                        if item is STOP:
                            return
                        self._handle(item)
                now = self._clock()
                if now >= next_tick:
                    self.tick()
                    next_tick += self.status_interval
                    if next_tick <= now:  # fell behind (slow tick, suspend): no burst
                        next_tick = now + self.status_interval
                self._flush()
                self.outbox.save()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Persist, publish offline presence and disconnect. Tasks keep running."""
        if self._stopping:
            return
        self._stopping = True
        log.info("stopping: tasks keep running; publishing offline presence")
        try:
            self.outbox.save()
        except OSError:
            log.exception("could not save the outbox")
        final = (
            self._topics[Channel.PRESENCE],
            offline_presence(self.node_id, self.engine_version, "engine stopped"),
        )
        self.transport.stop(final=final)
