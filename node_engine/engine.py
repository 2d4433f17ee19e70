"""The engine: the one loop that owns all node-side state and wires the parts together.

Everything that changes state runs here, in one thread: commands from the transport
queue, task supervision, status publishing, the outbox. The MQTT network thread only
feeds the queue (see `node_engine.mqtt`); signal handlers only put a stop marker on it
(`queue.SimpleQueue.put` is reentrant, so that is safe from a handler).

Runtime calls that can block (deploy, stop with its grace period) run in a small
`WorkerPool` of daemon threads; each result comes back on the same queue as an `OpDone`
item and is applied here (pause and resume, quick, run inline). So the status tick keeps
its pace while a task that ignores SIGTERM is being stopped, and several deploys run at
once.

Group commit: the loop handles every item waiting on the queue (bounded), then writes
what changed once (tasks, seen commands, outbox), then acknowledges the commands to the
broker (PUBACK), then hands new operations to the pool (their intent, e.g. STARTING,
is on disk before the runtime acts), then publishes. A command is acknowledged (the
`AckMessage` and the PUBACK) once its outcome is known, i.e. after its runtime call.

Per tick (every `status_interval` seconds): poll tasks (exits, restarts), sample the
host, let the shedder (if configured) decide, publish a `StatusMessage` (QoS 0, only
while connected: a stale status is worthless). Events and acks go through the `Outbox`
(QoS 1, persisted, delivered after reconnects and restarts).

Logs requests are not commands: the loop only looks the task up and hands the read to
the `LogServer` (`node_engine.logs`, its own threads), which answers on the `logs`
topic; no seen-command entry, no outbox, no PUBACK after a commit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from node_engine.logs import DEFAULT_READERS, LogJob, LogServer, TaskSnapshot, error_chunk
from node_engine.monitor import Monitor, Sample
from node_engine.mqtt import (
    CommandReceived,
    CommandRejected,
    Connected,
    ConnectFailed,
    Disconnected,
    LogsRejected,
    LogsRequested,
    Published,
    Transport,
)
from node_engine.state import CommandOutcome, Outbox, SeenCommands, fsync_dir
from node_engine.supervisor import (
    OpDone,
    Operation,
    ShedDecision,
    Supervisor,
    TaskChange,
    run_operation,
)
from schemas.common import Runtime
from schemas.job import TaskState
from schemas.mqtt import (
    SESSION_TAKEN_OVER,
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

BATCH_MAX = 200
"""At most this many queue items handled before the state is written (group commit)."""

DEFAULT_WORKERS = 4
"""Runtime calls running at once (`Engine(workers=...)`; 0 runs them inline)."""

DEFAULT_SHUTDOWN_WAIT = 5.0
"""Seconds a stopping engine waits for runtime calls in progress before abandoning them."""

OUTBOX_REMOVALS_S = 5.0
"""Delivered outbox entries are written away at least this often (`Outbox.save`)."""

SHORT_SESSION_S = 10.0
TAKEOVER_STREAK = 3
"""This many connections in a row that the broker closed less than `SHORT_SESSION_S`
after accepting them are taken for a session takeover (see `Engine._on_disconnected`)."""

REJECT_LOG_EVERY_S = 10.0
"""A rejected message is logged at most this often per reason (all are counted)."""

Receipt = tuple[int, int, int]
"""(mid, qos, generation) of one delivery of a command: what `Transport.ack` needs."""


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


class WorkerPool:
    """A few daemon threads running `Operation`s; each result goes to `sink` (the inbox).

    Threads start on demand, up to `size`. They are daemons: an engine that stops does
    not wait for a runtime call beyond its own bounded wait (`Engine.shutdown`); the
    intent of every operation is persisted first, so the next start recovers it.
    """

    def __init__(self, size: int, sink: Callable[[OpDone], None], name: str = "runtime") -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.size = size
        self.name = name
        self._sink = sink
        self._jobs: queue.SimpleQueue[Operation | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._outstanding = 0
        self._closed = False

    @property
    def threads(self) -> int:
        """Threads started so far."""
        return len(self._threads)

    def submit(self, op: Operation) -> None:
        """Run `op` on a worker thread as soon as one is free."""
        with self._lock:
            if self._closed:
                raise RuntimeError("worker pool closed")
            self._outstanding += 1
            if self._outstanding > len(self._threads) and len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._jobs.put(op)

    def _work(self) -> None:
        while True:
            op = self._jobs.get()
            if op is None:
                return
            done = run_operation(op)
            with self._lock:
                self._outstanding -= 1
            self._sink(done)

    def close(self) -> None:
        """Let idle threads end; calls still running are abandoned (daemon threads)."""
        with self._lock:
            self._closed = True
            count = len(self._threads)
        for _ in range(count):
            self._jobs.put(None)


@dataclass
class OpenCommand:
    """A command whose outcome is not known yet (its runtime call runs, or it waits for
    the one in progress on its instance); every delivery of it is answered at the end."""

    message: DeployMessage | TerminateMessage
    receipts: list[Receipt]
    received: float
    """The engine clock when it was first handled (for the log)."""
    changes: list[TaskChange] = field(default_factory=list)
    """State changes of the command's instance made by the command so far; the ack
    carries the result (see `Engine._finish`)."""


def offline_presence(node_id: str, engine_version: str, reason: str) -> bytes:
    """The retained offline presence (also the last will)."""
    return encode(
        PresenceMessage(
            node_id=node_id,
            payload=Presence(online=False, engine_version=engine_version, reason=reason),
        )
    )


class Engine:
    """Owns the loop; build it with its parts (all injectable) and call `run()`.

    `workers` runtime calls run at once in a `WorkerPool`; with 0 they run inline in the
    loop thread (the status waits for them: for tests and the simplest setups).
    """

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
        workers: int = 0,
        shutdown_wait: float = DEFAULT_SHUTDOWN_WAIT,
        log_readers: int = DEFAULT_READERS,
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
        self.store = self.supervisor.store
        self.pool = WorkerPool(workers, self.inbox.put) if workers > 0 else None
        self.shutdown_wait = shutdown_wait
        # the loop commits once per batch; runtime calls go to the pool when there is one
        self.supervisor.autosave = False
        self.supervisor.defer = self.pool is not None
        self._open: dict[str, OpenCommand] = {}  # command id -> command awaiting its outcome
        self._waiting: dict[str, deque[OpenCommand]] = {}  # instance id -> commands queued
        self._pubacks: list[Receipt] = []  # PUBACKs to send after the next commit
        self._topics = {ch: topic(node_id, ch) for ch in Channel}
        self._inflight: dict[int, int] = {}  # paho mid -> outbox key
        self._inflight_keys: set[int] = set()
        self.messages_rejected = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self._reject_logged: dict[str, float] = {}  # reason -> monotonic time of its last log
        self.session_takeovers = 0
        """How often the broker closed our connection for another client with this node's
        client id: a second engine or a copy of its credentials (see `_on_disconnected`)."""
        self._taken_over = False  # the next online presence says why we reconnected
        self._connected_at: float | None = None  # monotonic time of the last CONNACK
        self._short_sessions = 0  # consecutive connections the broker closed quickly
        self._takeover_logged: float | None = None
        self._status_seq = int(wall() * 1000)  # monotonic across restarts, +1 per status
        self._last_connect_error = ""
        self._stopping = False
        self._online = False  # set once the Connected item was handled (presence went first)
        self.log_server = LogServer(node_id, self._publish_logs, threads=log_readers)
        #: the command whose runtime work is being applied: its instance's changes go
        #: into its ack (one message per fact), not into task events of their own
        self._capture: OpenCommand | None = None
        self._removals_saved = clock()

    # ----- outgoing -----

    def _emit(self, change: TaskChange) -> None:
        capture = self._capture
        if capture is not None and change.instance_id == capture.message.payload.instance_id:
            capture.changes.append(change)
            return
        self._send_event(change)

    def _task_event(self, change: TaskChange, previous: TaskState | None) -> TaskEvent:
        return TaskEvent(
            instance_id=change.instance_id,
            state=change.state,
            previous=previous,
            reason=change.reason,
            exit_code=change.exit_code,
            seq=self.outbox.take_seq(),
            data=change.data,
        )

    def _send_event(self, change: TaskChange) -> None:
        event = TaskEventMessage(
            node_id=self.node_id, payload=self._task_event(change, change.previous)
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
        event: TaskEvent | None = None,
    ) -> None:
        ack = CommandAck(
            command_id=command_id[:128],
            command_kind=kind[:128],
            instance_id=outcome.instance_id if outcome else instance_id,
            accepted=outcome.accepted if outcome else bool(accepted),
            duplicate=duplicate,
            reason=(outcome.reason if outcome else reason)[:1024],
            event=event,
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

    def _on_disconnected(self, item: Disconnected) -> None:
        """Log a lost connection and tell a session takeover from an ordinary drop.

        Taken over: the broker said so (MQTT v5 reason 0x8E), or it closed
        `TAKEOVER_STREAK` connections in a row each less than `SHORT_SESSION_S` after
        accepting them, which is what two clients with one client id do to each other
        when both reconnect (Mosquitto 2.0.11 closes the older one without the reason
        code). One drop, e.g. a broker restart, is never taken for a takeover."""
        lasted = None if self._connected_at is None else time.monotonic() - self._connected_at
        self._connected_at = None
        if lasted is not None and lasted < SHORT_SESSION_S:
            self._short_sessions += 1
        else:
            self._short_sessions = 0
        if item.taken_over or self._short_sessions >= TAKEOVER_STREAK:
            self._on_taken_over(item.reason, lasted)
        else:
            log.warning("lost the broker connection (%s); reconnecting", item.reason)

    def _on_taken_over(self, reason: str, lasted: float | None) -> None:
        """The broker dropped us for another connection with our client id: count it,
        say plainly what that means (at most once a minute), and tell the cluster in the
        next online presence."""
        self.session_takeovers += 1
        self._taken_over = True
        now = time.monotonic()
        if self._takeover_logged is not None and now - self._takeover_logged < 60.0:
            log.info("lost the broker connection again (%s): session taken over", reason)
            return
        self._takeover_logged = now
        log.warning(
            "the broker closed this connection (%s) after %.1f s, most likely because "
            "another client connected with this node's MQTT client id (session taken over, "
            "%d time(s) so far): a second engine is running with this node's identity (a "
            "copied state directory?) or its credentials are in use elsewhere; both will "
            "keep displacing each other until one stops (remove the node to revoke its "
            "credentials). Reconnecting",
            reason,
            lasted if lasted is not None else 0.0,
            self.session_takeovers,
        )

    def _publish_presence(self) -> None:
        reason = SESSION_TAKEN_OVER if self._taken_over else ""
        self._taken_over = False
        message = PresenceMessage(
            node_id=self.node_id,
            payload=Presence(online=True, engine_version=self.engine_version, reason=reason),
        )
        self.transport.publish(self._topics[Channel.PRESENCE], encode(message), 1, retain=True)

    def _publish_logs(self, payload: bytes) -> None:
        """Send one `logs_chunk` (any thread; QoS 0, dropped while disconnected)."""
        if self.transport.connected:
            self.transport.publish(self._topics[Channel.LOGS], payload, 0)

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
        if isinstance(item, OpDone):
            self._on_done(item)
        elif isinstance(item, CommandReceived):
            self._on_command(item)
        elif isinstance(item, CommandRejected):
            self._on_rejected(item)
        elif isinstance(item, LogsRequested):
            self._on_logs(item)
        elif isinstance(item, LogsRejected):
            self._on_logs_rejected(item)
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
            self._connected_at = time.monotonic()
        elif isinstance(item, Disconnected):
            self._online = False
            self._on_disconnected(item)
        elif isinstance(item, ConnectFailed) and item.reason != self._last_connect_error:
            log.warning("cannot connect to the broker: %s (retrying)", item.reason)
            self._last_connect_error = item.reason

    def _on_command(self, item: CommandReceived) -> None:
        message = item.message
        kind = message.kind
        receipt: Receipt = (item.mid, item.qos, item.generation)
        previous = self.seen.get(message.id)
        if previous is not None:
            log.debug("command %s (%s) seen before: acknowledging again", message.id, kind)
            self._ack(message.id, kind, previous, duplicate=True)
            self._pubacks.append(receipt)
            return
        pending = self._open.get(message.id)
        if pending is not None:  # redelivered while in progress: answered with the original
            log.debug("command %s (%s) is in progress: answering it when done", message.id, kind)
            pending.receipts.append(receipt)
            return
        command = OpenCommand(message, [receipt], self._clock())
        self._open[message.id] = command
        instance_id = message.payload.instance_id
        waiting = self._waiting.get(instance_id)
        if waiting is not None or self.supervisor.blocks(kind, instance_id):
            log.info(
                "command %s %s %s waits for the operation in progress on the instance",
                kind,
                instance_id,
                message.id,
            )
            self._waiting.setdefault(instance_id, deque()).append(command)
            return
        self._run_command(command)

    def _run_command(self, command: OpenCommand) -> None:
        """Hand a command to the supervisor; finish it now if its outcome is known."""
        message = command.message
        outcome: CommandOutcome | None
        self._capture = command
        try:
            if isinstance(message, DeployMessage):
                cmd = message.payload
                outcome = self.supervisor.deploy(cmd.instance_id, cmd.job_id, cmd.spec, message.id)
            else:
                term = message.payload
                outcome = self.supervisor.terminate(term.instance_id, term.reason, message.id)
        finally:
            self._capture = None
        if outcome is not None:
            self._finish(command, outcome)

    def _finish(self, command: OpenCommand, outcome: CommandOutcome) -> None:
        """Remember the outcome and answer every delivery of the command (PUBACK after the
        next commit).

        One message per fact: the state the command left its instance in (a deploy's
        RUNNING or FAILED, a terminate's TERMINATED) travels in the first ack as its
        `event`, not as a task event of its own; the intermediate STARTING of a deploy
        (persisted before the runtime acted) is not sent: while the runtime call lasts,
        the status lists the task as STARTING. The event's `previous` is the state before
        the command.
        """
        message = command.message
        self._open.pop(message.id, None)
        self.seen.add(message.id, outcome)
        log.debug(
            "command %s %s %s: %s%s (%.0f ms)",
            message.kind,
            outcome.instance_id,
            message.id,
            "accepted" if outcome.accepted else "refused",
            f" ({outcome.reason})" if outcome.reason else "",
            (self._clock() - command.received) * 1000,
        )
        changes, command.changes = command.changes, []
        event = self._task_event(changes[-1], changes[0].previous) if changes else None
        for i, receipt in enumerate(command.receipts):
            self._ack(message.id, message.kind, outcome, duplicate=i > 0, event=event)
            event = None
            self._pubacks.append(receipt)

    def _on_done(self, done: OpDone) -> None:
        """A runtime call finished: apply it, answer its command, run what waited for it."""
        command = self._open.get(done.op.command_id) if done.op.command_id else None
        self._capture = command
        try:
            outcome = self.supervisor.complete(done)
        finally:
            self._capture = None
        if command is not None:
            if outcome is not None:
                self._finish(command, outcome)
            else:  # not answered by this result (abandoned): report what changed
                for change in command.changes:
                    self._send_event(change)
                command.changes = []
        self._run_waiting(done.op.instance_id)

    def _run_waiting(self, instance_id: str) -> None:
        """Run the commands that waited for the instance's operation, in order, until one
        starts another operation. Not while stopping: they stay unacknowledged and the
        broker delivers them again after the restart."""
        waiting = self._waiting.get(instance_id)
        if waiting is None or self._stopping:
            return
        while waiting and not self.supervisor.blocks(waiting[0].message.kind, instance_id):
            self._run_command(waiting.popleft())
        if not waiting:
            del self._waiting[instance_id]

    def _should_log_reject(self, reason: str) -> bool:
        """At most one log line per rejection reason every `REJECT_LOG_EVERY_S`."""
        now = time.monotonic()
        if now - self._reject_logged.get(reason, -REJECT_LOG_EVERY_S) < REJECT_LOG_EVERY_S:
            return False
        self._reject_logged[reason] = now
        return True

    def _on_rejected(self, item: CommandRejected) -> None:
        self.messages_rejected += 1
        self.rejected_by_reason[item.reason] += 1
        if self._should_log_reject(item.reason):
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
        self._pubacks.append((item.mid, item.qos, item.generation))

    def _on_logs(self, item: LogsRequested) -> None:
        """Look the task up and hand the read to the log server (never read here)."""
        message = item.message
        request = message.payload
        deadline = item.received + message.ttl_s
        if time.monotonic() > deadline:
            self.log_server.expired += 1
            log.info("logs request %s expired before it was handled", message.id)
            return
        rec = self.supervisor.tasks.get(request.instance_id)
        if rec is None:
            why = f"instance {request.instance_id} is not on this node (or was forgotten)"
            self.log_server.send(
                error_chunk(message.id, request.instance_id, "unknown_instance", why)
            )
            return
        runtime = self.supervisor.runtimes.get(rec.spec.runtime)
        if runtime is None:
            why = f"runtime {rec.spec.runtime.value} is not available on this node"
            self.log_server.send(error_chunk(message.id, request.instance_id, "runtime", why))
            return
        ended = rec.state in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.TERMINATED)
        task = TaskSnapshot(rec.state, rec.exit_code, ended and rec.restart_at is None)
        job = LogJob(message, runtime, rec.handle, task, deadline)
        if not self.log_server.submit(job):
            why = "node busy: too many log reads in progress; try again"
            self.log_server.send(error_chunk(message.id, request.instance_id, "busy", why))

    def _on_logs_rejected(self, item: LogsRejected) -> None:
        self.messages_rejected += 1
        self.rejected_by_reason[item.reason] += 1
        if self._should_log_reject(item.reason):
            log.warning(
                "rejected logs request %s: %s: %s", item.request_id, item.reason, item.detail
            )
        if item.request_id != "unknown":
            why = f"invalid logs request: {item.reason}: {item.detail}"
            self.log_server.send(error_chunk(item.request_id, item.instance_id, "invalid", why))

    # ----- persistence -----

    def commit(self) -> None:
        """Group commit: write what changed (tasks, seen commands, outbox), then PUBACK the
        commands answered since the last commit, then start the operations whose intent
        is now on disk."""
        written: set[Path] = set()
        if self.store.commit(sync_dir=False):
            written.add(self.store.path.parent)
        if self.seen.save(sync_dir=False) and self.seen.path is not None:
            written.add(self.seen.path.parent)
        now = self._clock()
        removals = now - self._removals_saved >= OUTBOX_REMOVALS_S or self._stopping
        if self.outbox.dirty or (removals and self.outbox.stale):
            if self.outbox.save(removals=True, sync_dir=False) and self.outbox.path is not None:
                written.add(self.outbox.path.parent)
            self._removals_saved = now
        for directory in written:  # this commit's renames are durable before any ack
            fsync_dir(directory)
        pubacks, self._pubacks = self._pubacks, []
        for mid, qos, generation in pubacks:
            self.transport.ack(mid, qos, generation)
        if self.pool is not None and not self._stopping:
            for op in self.supervisor.take_operations():
                self.pool.submit(op)

    def process(self, items: Sequence[Any]) -> None:
        """Handle a batch of queue items, then commit and publish (what the loop does)."""
        for item in items:
            self._handle(item)
        self.commit()
        self._flush()

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
        self.commit()  # state on disk before anything reports it
        # Events first: a status that already shows a change must not overtake the event
        # carrying its reason and data (the cluster applies whichever comes first).
        self._flush()
        self._publish_status(sample, tasks)

    def run(self) -> None:
        """Recover tasks, connect, and loop until `request_stop()`; then go offline cleanly."""
        self.supervisor.recover()
        self.commit()
        self.transport.start()
        next_tick = self._clock()
        try:
            while True:
                timeout = max(0.0, next_tick - self._clock())
                try:
                    item = self.inbox.get(timeout=timeout)
                except queue.Empty:
                    item = None
                stop = item is STOP
                if item is not None and not stop:
                    self._handle(item)
                    for _ in range(BATCH_MAX - 1):  # the rest of the batch, bounded
                        try:
                            item = self.inbox.get_nowait()
                        except queue.Empty:
                            break
                        if item is STOP:
                            stop = True
                            break
                        self._handle(item)
                if stop:
                    break
                now = self._clock()
                if now >= next_tick:
                    self.tick()  # commits and publishes
                    next_tick += self.status_interval
                    if next_tick <= now:  # fell behind (slow tick, suspend): no burst
                        next_tick = now + self.status_interval
                else:
                    self.commit()
                    self._flush()
        finally:
            self.shutdown()

    def _wait_for_operations(self) -> None:
        """Stopping: apply the runtime calls that finish within `shutdown_wait`; abandon
        the rest (their intent is persisted: the next start adopts, starts or stops)."""
        for op in self.supervisor.take_operations():  # never handed to the pool
            self.supervisor.abandon(op)
        deadline = self._clock() + self.shutdown_wait
        if self.supervisor.in_flight:
            log.info(
                "waiting up to %.1f s for %d runtime call(s) in progress",
                self.shutdown_wait,
                self.supervisor.in_flight,
            )
        while self.supervisor.in_flight:
            left = deadline - self._clock()
            if left <= 0:
                break
            try:
                item = self.inbox.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(item, (OpDone, Published)):
                self._handle(item)
            # commands and the rest stay unanswered: the broker delivers them again
        if self.supervisor.in_flight:
            log.warning(
                "abandoning %d runtime call(s) in progress; the next start recovers them",
                self.supervisor.in_flight,
            )

    def shutdown(self) -> None:
        """Finish or abandon runtime calls, persist, publish offline presence, disconnect.

        Tasks keep running."""
        if self._stopping:
            return
        self._stopping = True
        log.info("stopping: tasks keep running; publishing offline presence")
        try:
            self._wait_for_operations()
        except Exception:
            log.exception("could not apply the runtime calls in progress")
        try:
            self.commit()
            self._flush()
        except OSError:
            log.exception("could not save the engine state")
        if self.pool is not None:
            self.pool.close()
        self.log_server.close()
        final = (
            self._topics[Channel.PRESENCE],
            offline_presence(self.node_id, self.engine_version, "engine stopped"),
        )
        self.transport.stop(final=final)
