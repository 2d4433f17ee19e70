"""The single owner of the cluster orchestrator's state.

One thread runs `ClusterCore._run`. It is the only code that reads or changes nodes,
instances and pending commands. Everything else talks to it through its inbox:

* the MQTT network thread puts decoded messages (`Inbound`) with `deliver()`;
* HTTP handlers put closures with `call()` / `run()` and get the result through a
  future (so an API request is applied between two MQTT messages, never during one);
* timers are handled by the loop itself (a 100 ms tick): liveness, ack timeouts,
  rescheduling after the lost grace, reconcile, status snapshots, report triggers.

Durable changes (joins, liveness transitions, instance state changes, events) are
handed to the `Persister` (one writer thread); the latest node status stays in memory
and is written in batches every `status_snapshot_interval` seconds. See
docs/cluster-orchestrator.md ("State ownership").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from cluster_orchestrator.aggregate import NodeSnapshot, aggregate
from cluster_orchestrator.candidates import (
    Usage,
    build_candidate,
    placement_request,
)
from cluster_orchestrator.liveness import LivenessTracker, Transition
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.mqtt_adapter import Inbound
from cluster_orchestrator.persister import Persister
from cluster_orchestrator.placement_index import PlacementIndex
from cluster_orchestrator.rebalance import Placed, rebalance_moves
from cluster_orchestrator.records import (
    EVENTS,
    INSTANCES,
    NODE_STATUS,
    NODES,
    InstanceRecord,
    NodeRecord,
    event_doc,
    event_from_doc,
    hash_secret,
    make_event,
    new_secret,
    verify_secret,
)
from cluster_orchestrator.settings import ClusterSettings
from cluster_orchestrator.views import DrainResult, InstanceView, NodeDetail
from placement import Candidate, Decision, place
from schemas.cluster import (
    MAX_INSTANCE_CHANGES,
    ClusterReport,
    InstanceChange,
    PlaceInstanceRequest,
    PlaceInstanceResponse,
)
from schemas.job import InstanceState, RestartPolicy, ShedAction, TaskState
from schemas.mqtt import (
    SESSION_TAKEN_OVER,
    AckMessage,
    CommandMessage,
    DeployCommand,
    DeployMessage,
    PresenceMessage,
    StatusMessage,
    TaskEvent,
    TaskEventMessage,
    TerminateCommand,
    TerminateMessage,
)
from schemas.node import InferenceStats, JoinRequest, Liveness, NodeInfo, NodeStatus
from store import Store

__all__ = [
    "REMOVED_NODES",
    "ClusterCore",
    "Forbidden",
    "JoinGrant",
    "JoinUnauthorized",
    "NodeBusy",
    "NodeRemoval",
    "NodeRemoved",
    "NotFound",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

TICK_S = 0.1
GAUGE_EVERY_S = 1.0
BATCH = 500
#: a rebalancing pass that moved a replica (or waited for one on its way) looks again
#: this much later, until every spread job is even
REBALANCE_RETRY_S = 2.0
#: a node whose session is taken over again and again gets one warning and one event
#: this often (every takeover is counted)
TAKEOVER_LOG_EVERY_S = 60.0

_TASK_TO_INSTANCE: dict[TaskState, InstanceState] = {
    TaskState.STARTING: InstanceState.STARTING,
    TaskState.RUNNING: InstanceState.RUNNING,
    TaskState.PAUSED: InstanceState.SHED,
    TaskState.SUCCEEDED: InstanceState.SUCCEEDED,
    TaskState.FAILED: InstanceState.FAILED,
    TaskState.TERMINATED: InstanceState.TERMINATED,
    TaskState.SHED: InstanceState.SHED,
}

#: Task states in a status that prove the node holds a deployed task (see `_on_status`).
_DEPLOYED = frozenset({TaskState.RUNNING, TaskState.PAUSED})

#: Order of progress before a task runs: a status must not move an instance backwards.
_PROGRESS = {
    InstanceState.PENDING: 0,
    InstanceState.SCHEDULED: 1,
    InstanceState.ASSIGNED: 2,
    InstanceState.STARTING: 3,
    InstanceState.RUNNING: 4,
}


class NotFound(LookupError):
    """The node or instance does not exist."""


class Forbidden(PermissionError):
    """A join presented a node id with a wrong or missing node secret."""

    reason = "node_secret_wrong"


class NodeRemoved(Forbidden):
    """A join presented the id (and secret) of a node the operator removed."""

    reason = "node_removed"


class JoinUnauthorized(PermissionError):
    """A join that needs an accepted join token came without one.

    `reason` is ``join_token`` for a new node and ``node_unknown`` for a node id this
    cluster does not know (it would be admitted under that id with a join token).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class NodeBusy(RuntimeError):
    """The node cannot be removed: instances are still assigned to it."""


#: Tombstones of removed nodes: id, name, hash of the node secret, removal time.
REMOVED_NODES = "removed_nodes"


@dataclass(frozen=True, slots=True)
class JoinGrant:
    """What the core decided for a join: id, identity secret, whether it is new."""

    node_id: str
    node_secret: str
    new: bool
    durable: Future[None] | None


@dataclass(frozen=True, slots=True)
class NodeRemoval:
    """A removed node as it was, and the write of its tombstone."""

    node: NodeDetail
    durable: Future[None] | None


@dataclass(slots=True)
class PendingCommand:
    """A command waiting for its ack."""

    message: CommandMessage
    kind: str
    node_id: str
    instance_id: str
    deadline: float
    sent: int = 1
    orphan: bool = False


@dataclass(slots=True)
class _Call:
    fn: Callable[[], Any]
    future: Future[Any]


class ClusterCore:
    """Owns nodes, instances and commands; see the module docstring."""

    def __init__(
        self,
        *,
        settings: ClusterSettings,
        store: Store,
        persister: Persister,
        metrics: Metrics,
        publish: Callable[[CommandMessage], bool] | None = None,
        mono: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._store = store
        self._persister = persister
        self._metrics = metrics
        self._publish = publish or (lambda _m: False)
        self._mono = mono
        self._wall = wall
        self._rng = rng or random.Random()
        self._inbox: queue.SimpleQueue[Inbound | _Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._running = False
        # state (core thread only)
        self.nodes: dict[str, NodeRecord] = {}
        #: tombstones of removed nodes by id (see `remove_node`)
        self.removed_nodes: dict[str, dict[str, Any]] = {}
        self.instances: dict[str, InstanceRecord] = {}
        self._by_node: dict[str, set[str]] = {}
        #: reservations, replicas per job and candidates, kept current (see `_decide`)
        self._index = PlacementIndex(self._build_candidate)
        self._pending: dict[str, PendingCommand] = {}
        #: instance id -> id of its pending DEPLOY (at most one: `_deploy` drops older ones)
        self._deploying: dict[str, str] = {}
        self._terminating: dict[tuple[str, str], str] = {}
        self._lags: list[float] = []
        #: latest figures of inference tasks from node statuses (memory only: they are
        #: a second old at best and a restart loses nothing worth keeping)
        self._inference: dict[str, InferenceStats] = {}
        self._next_reconcile = 0.0
        self._next_snapshot = 0.0
        self._next_gauges = 0.0
        #: monotonic time of the next rebalancing pass (None: nothing to look at)
        self._rebalance_at: float | None = None
        # instance changes and capacity changes for the reporter (any thread)
        self._changes_lock = threading.Lock()
        self._changes: list[InstanceChange] = []
        self._listeners: list[Callable[[], None]] = []

    # ================================================================ lifecycle

    def set_publisher(self, publish: Callable[[CommandMessage], bool]) -> None:
        """Install the function that publishes commands (the MQTT adapter's)."""
        self._publish = publish

    def load(self) -> None:
        """Load nodes and unfinished instances from the store (before `start`)."""
        now = self._mono()
        for doc in self._store.find(REMOVED_NODES):
            self.removed_nodes[str(doc["_id"])] = dict(doc)
        for doc in self._store.find(NODES):
            try:
                node = NodeRecord.from_doc(doc, now, hold=self.settings.restart_grace)
            except (KeyError, ValueError) as exc:
                log.error("skipping unreadable node document %s: %s", doc.get("_id"), exc)
                continue
            if node.id in self.removed_nodes:  # the delete of a removed node did not land
                continue
            self.nodes[node.id] = node
        for doc in self._store.find(NODE_STATUS):
            node_or_none = self.nodes.get(str(doc.get("_id")))
            if node_or_none is None or "status" not in doc:
                continue
            try:
                node_or_none.status = NodeStatus.model_validate(doc["status"])
            except ValueError:
                continue
        for state in InstanceState:
            if state.terminal:
                continue
            for doc in self._store.find(INSTANCES, {"state": state.value}):
                try:
                    inst = InstanceRecord.from_doc(doc)
                except (KeyError, ValueError) as exc:
                    log.error("skipping unreadable instance %s: %s", doc.get("_id"), exc)
                    continue
                inst.acked_at = now
                inst.assigned_at = now
                self.instances[inst.id] = inst
                if inst.node_id:
                    self._by_node.setdefault(inst.node_id, set()).add(inst.id)
                for ev in self._store.find(
                    EVENTS, {"instance_id": inst.id}, order_by="_id", descending=True, limit=50
                ):
                    inst.events.appendleft(event_from_doc(ev))
        self._index.reset(self.instances.values())
        log.info(
            "loaded %d nodes and %d unfinished instances", len(self.nodes), len(self.instances)
        )

    def start(self) -> None:
        """Start the loop thread."""
        if self._thread is not None:
            return
        now = self._mono()
        self._next_reconcile = now + self.settings.reconcile_interval
        self._next_snapshot = now + self.settings.status_snapshot_interval
        self._running = True
        self._thread = threading.Thread(target=self._run, name="cluster-core", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop and queue the last status snapshot."""
        if self._thread is None:
            return
        self._running = False
        self._inbox.put(None)
        self._thread.join(timeout)
        self._thread = None
        self._flush_snapshots()

    # ================================================================ entry points

    def deliver(self, inbound: Inbound) -> None:
        """Hand a decoded MQTT message to the loop (called on the MQTT thread)."""
        self._inbox.put(inbound)

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the loop thread; the future holds its result or exception."""
        future: Future[T] = Future()
        if threading.current_thread() is self._thread:
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)
            return future
        self._inbox.put(_Call(fn, future))
        return future

    async def run(self, fn: Callable[[], T]) -> T:
        """Await `fn` run on the loop thread (for async HTTP handlers)."""
        return await asyncio.wrap_future(self.call(fn))

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Register a function called (on the core thread) when a report is due soon."""
        self._listeners.append(fn)

    def take_changes(self) -> list[InstanceChange]:
        """Instance changes since the last call (any thread)."""
        with self._changes_lock:
            out, self._changes = self._changes, []
        return out

    def requeue_changes(self, changes: list[InstanceChange], limit: int = 10000) -> None:
        """Put changes that could not be reported back in front (bounded)."""
        with self._changes_lock:
            merged = changes + self._changes
            self._changes = merged[-limit:]

    @property
    def queue_depth(self) -> int:
        """Items waiting in the inbox."""
        return self._inbox.qsize()

    # ================================================================ the loop

    def _run(self) -> None:
        next_tick = self._mono()
        while True:
            timeout = max(0.0, next_tick - self._mono())
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is None and not self._running:
                return
            if item is not None:
                self._handle(item)
                for _ in range(BATCH):
                    try:
                        item = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        if not self._running:
                            return
                        continue
                    self._handle(item)
            now = self._mono()
            if now >= next_tick:
                try:
                    self._tick(now)
                except Exception:
                    log.exception("core tick failed")
                next_tick = now + TICK_S

    def _handle(self, item: Inbound | _Call) -> None:
        if isinstance(item, _Call):
            if not item.future.set_running_or_notify_cancel():
                return
            try:
                item.future.set_result(item.fn())
            except BaseException as exc:
                item.future.set_exception(exc)
            return
        try:
            message = item.message
            if isinstance(message, StatusMessage):
                self._on_status(message, item)
            elif isinstance(message, TaskEventMessage):
                self._on_task_event(message)
            elif isinstance(message, AckMessage):
                self._on_ack(message)
            elif isinstance(message, PresenceMessage):
                self._on_presence(message, item)
        except Exception:
            log.exception("handling %s from %s failed", item.message.kind, item.message.node_id)

    def _tick(self, now: float) -> None:
        if self._lags:
            self._metrics.observe_lags(self._lags)
            self._lags = []
        self._tick_liveness(now)
        self._tick_commands(now)
        self._tick_grace(now)
        if now >= self._next_reconcile:
            self._next_reconcile = now + self.settings.reconcile_interval
            self.reconcile()
        if self._rebalance_at is not None and now >= self._rebalance_at:
            self._rebalance_at = None
            self.rebalance(now)
        if now >= self._next_snapshot:
            self._next_snapshot = now + self.settings.status_snapshot_interval
            self._flush_snapshots()
        if now >= self._next_gauges:
            self._next_gauges = now + GAUGE_EVERY_S
            self._update_gauges()

    # ================================================================ helpers

    def _node_name(self, node_id: str | None) -> str:
        if node_id is None:
            return "-"
        node = self.nodes.get(node_id)
        return node.info.name if node else node_id

    def _reject(self, reason: str) -> None:
        self._metrics.inc("edge_cluster_mqtt_rejected_total", {"reason": reason})

    def _notify_report(self) -> None:
        for fn in self._listeners:
            try:
                fn()
            except Exception:
                log.exception("report listener failed")

    def _persist_node(self, node: NodeRecord) -> None:
        self._persister.put(NODES, node.to_doc())

    def _persist_instance(self, inst: InstanceRecord) -> None:
        self._persister.put(INSTANCES, inst.to_doc())

    def _record_event(self, inst: InstanceRecord | None, **kwargs: Any) -> None:
        event = make_event(ts=self._wall(), **kwargs)
        if inst is not None:
            inst.events.append(event)
        self._persister.put(EVENTS, event_doc(event))

    def _set_node(self, inst: InstanceRecord, node_id: str | None) -> None:
        if inst.node_id is not None:
            ids = self._by_node.get(inst.node_id)
            if ids is not None:
                ids.discard(inst.id)
        inst.node_id = node_id
        if node_id is not None:
            self._by_node.setdefault(node_id, set()).add(inst.id)
        self._index.sync(inst)

    def _instances_on(self, node_id: str) -> list[InstanceRecord]:
        out = []
        for iid in sorted(self._by_node.get(node_id, ())):
            inst = self.instances.get(iid)
            if inst is not None and inst.node_id == node_id:
                out.append(inst)
        return out

    def _transition(
        self,
        inst: InstanceRecord,
        state: InstanceState,
        reason: str,
        *,
        exit_code: int | None = None,
        data: dict[str, Any] | None = None,
        report: bool = True,
        persist: bool = True,
    ) -> None:
        """Change an instance's state: event, store, metrics, report.

        `persist=False` leaves the instance document to the caller's next write (a
        placement writes it once, after SCHEDULED and ASSIGNED); the event is kept
        either way."""
        if state is inst.state and reason == inst.reason and exit_code == inst.exit_code:
            return
        previous = inst.state
        inst.state = state
        self._index.sync(inst)  # placement: a finished instance frees its reservation
        inst.reason = reason[:1024]
        if exit_code is not None:
            inst.exit_code = exit_code
        inst.updated_at = self._wall()
        if state.terminal:
            self._drop_pending_deploys(inst.id)
            self._inference.pop(inst.id, None)
        ev_data = {"previous": previous.value, **(data or {})}
        self._record_event(
            inst,
            kind="instance.state",
            subject=inst.id,
            state=state.value,
            reason=inst.reason,
            job_id=inst.job_id,
            instance_id=inst.id,
            node_id=inst.node_id,
            data=ev_data,
        )
        if persist:
            self._persist_instance(inst)
        self._metrics.inc("edge_cluster_instance_transitions_total", {"state": state.value})
        if report:
            change = InstanceChange(
                instance_id=inst.id,
                job_id=inst.job_id,
                state=state,
                node_id=inst.node_id,
                reason=inst.reason,
                ts=inst.updated_at,
                exit_code=inst.exit_code,
                data=self._change_data(inst),
            )
            with self._changes_lock:
                self._changes.append(change)
                if len(self._changes) > 10000:
                    del self._changes[: len(self._changes) - 10000]
            self._notify_report()
        log.debug(
            "instance %s %s -> %s on %s: %s",
            inst.id,
            previous.value,
            state.value,
            self._node_name(inst.node_id),
            inst.reason,
        )

    def _change_data(self, inst: InstanceRecord) -> dict[str, Any]:
        """What an `InstanceChange` carries besides the state: node name, restarts, and
        the latest inference figures (so the root shows them; full reports refresh them)."""
        data: dict[str, Any] = {
            "node_name": self._node_name(inst.node_id),
            "restarts": inst.restarts,
        }
        stats = self._inference.get(inst.id)
        if stats is not None:
            data["inference"] = stats.model_dump(mode="json")
        return data

    def _drop_pending_deploys(self, instance_id: str) -> None:
        cid = self._deploying.pop(instance_id, None)
        if cid is not None:
            self._pending.pop(cid, None)

    def _pop_pending(self, command_id: str) -> PendingCommand | None:
        """Forget a pending command (and the deploy index entry pointing at it)."""
        pending = self._pending.pop(command_id, None)
        if (
            pending is not None
            and pending.kind == "deploy"
            and self._deploying.get(pending.instance_id) == command_id
        ):
            del self._deploying[pending.instance_id]
        return pending

    # ================================================================ nodes: join

    def join(self, request: JoinRequest, *, join_token_ok: bool = True) -> JoinGrant:
        """Register or re-admit a node (core thread).

        `join_token_ok` says whether the request carried an accepted join token (the
        HTTP route checks it; in-process callers that admit nodes themselves leave the
        default).

        * A node presenting a known id is authenticated by its node secret alone,
          whatever join token it sent: it keeps id and secret, so rotating the join
          tokens never locks out joined nodes. Wrong or missing secret: `Forbidden`.
        * The id and secret of a node the operator removed: `NodeRemoved`.
        * A node presenting an unknown id with a secret (e.g. the cluster's store was
          reset) is admitted under that id, with an accepted join token only.
        * Anything else gets a new id and secret, with an accepted join token only.

        Without the join token where one is needed: `JoinUnauthorized`.
        """
        presented = request.node_secret.get_secret_value() if request.node_secret else None
        now_wall = self._wall()
        if request.node_id is not None:
            node = self.nodes.get(request.node_id)
            removed = self.removed_nodes.get(request.node_id) if node is None else None
            if removed is not None:
                self._refuse_removed(request.node_id, removed, presented)
            if node is not None:
                if presented is None or not verify_secret(presented, node.secret_hash):
                    self._metrics.inc("edge_cluster_joins_total", {"result": "forbidden"})
                    raise Forbidden(f"wrong node secret for node {request.node_id}")
                node.info = request.info
                self._index.node_changed(node.id)
                node.credentials_issued += 1
                durable = self._persister.put(NODES, node.to_doc(), wait=True)
                self._metrics.inc("edge_cluster_joins_total", {"result": "rejoined"})
                log.info("node %s (%s) rejoined", node.id, node.info.name)
                return JoinGrant(node.id, presented, False, durable)
            if not join_token_ok:
                self._metrics.inc("edge_cluster_joins_total", {"result": "unauthorized"})
                raise JoinUnauthorized(
                    f"node {request.node_id} is not known to this cluster (was its store "
                    "reset?); it is admitted under its id only with a valid join token",
                    "node_unknown",
                )
            if presented is not None:
                node_id, secret = request.node_id, presented
            else:
                node_id, secret = _new_node_id(), new_secret()
        else:
            if not join_token_ok:
                self._metrics.inc("edge_cluster_joins_total", {"result": "unauthorized"})
                raise JoinUnauthorized("a new node needs a valid join token", "join_token")
            node_id, secret = _new_node_id(), new_secret()
        while node_id in self.nodes or node_id in self.removed_nodes:  # pragma: no cover
            node_id = _new_node_id()
        node = NodeRecord(
            id=node_id,
            info=request.info,
            secret_hash=hash_secret(secret),
            joined_at=now_wall,
            liveness=LivenessTracker.new(self._mono()),
            credentials_issued=1,
            reason="joined; waiting for its first status",
        )
        self.nodes[node_id] = node
        self._index.nodes_changed()
        durable = self._persister.put(NODES, node.to_doc(), wait=True)
        self._metrics.inc("edge_cluster_joins_total", {"result": "joined"})
        self._record_event(
            None,
            kind="node.joined",
            subject=node_id,
            node_id=node_id,
            state=node.state.value,
            reason=f"{node.info.name} joined",
        )
        log.info(
            "node %s (%s, %s, %.1f cores, %d MiB) joined",
            node_id,
            node.info.name,
            node.info.arch.value,
            node.info.cpu_cores,
            node.info.memory_mib,
        )
        self._notify_report()
        return JoinGrant(node_id, secret, True, durable)

    def _refuse_removed(
        self, node_id: str, tomb: dict[str, Any], presented: str | None
    ) -> NoReturn:
        """Refuse the id of a removed node: `NodeRemoved` with its secret, else `Forbidden`.

        The secret is checked first so that only the holder of the identity learns
        that the node was removed.
        """
        stored = str(tomb.get("secret_hash", ""))
        if presented is None or not stored or not verify_secret(presented, stored):
            self._metrics.inc("edge_cluster_joins_total", {"result": "forbidden"})
            raise Forbidden(f"wrong node secret for node {node_id}")
        self._metrics.inc("edge_cluster_joins_total", {"result": "removed"})
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(tomb.get("removed_at", 0))))
        log.warning("refused the rejoin of removed node %s (%s)", node_id, tomb.get("name", "?"))
        raise NodeRemoved(
            f"node {node_id} ({tomb.get('name', '?')}) was removed from cluster "
            f"{self.settings.name} by the operator at {when}; its identity is no longer "
            "accepted. To join this machine again as a new node, delete its identity.json "
            "and start it with a join token"
        )

    def remove_node(self, node_id: str) -> NodeRemoval:
        """Remove a node for good (core thread); its stored identity is refused from now on.

        `NotFound` for an unknown id; `NodeBusy` while instances that are not finished
        are assigned to it (drain it first, or delete them). The node leaves memory and
        the store; a tombstone (id, name, hash of its secret) stays, so a rejoin with the
        removed identity gets `NodeRemoved` rather than a silent re-admission. The
        caller deletes the node's MQTT client (that cuts its broker connection).
        """
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        busy = [i.id for i in self._instances_on(node_id) if not i.state.terminal]
        if busy:
            shown = ", ".join(busy[:10]) + (f" and {len(busy) - 10} more" if len(busy) > 10 else "")
            raise NodeBusy(
                f"node {node_id} ({node.info.name}) still holds instances {shown}: drain it "
                f"first (POST /api/v1/nodes/{node_id}/drain) until they moved, or delete them"
            )
        detail = self.node_detail(node)
        del self.nodes[node_id]
        self._by_node.pop(node_id, None)
        self._index.nodes_changed()
        for cid in [c for c, p in self._pending.items() if p.node_id == node_id]:
            self._pop_pending(cid)
        for key in [k for k in self._terminating if k[0] == node_id]:
            del self._terminating[key]
        tomb: dict[str, Any] = {
            "_id": node_id,
            "name": node.info.name,
            "secret_hash": node.secret_hash,
            "removed_at": self._wall(),
        }
        self.removed_nodes[node_id] = tomb
        self._persister.delete(NODES, node_id)
        self._persister.delete(NODE_STATUS, node_id)
        durable = self._persister.put(REMOVED_NODES, tomb, wait=True)
        self._record_event(
            None,
            kind="node.removed",
            subject=node_id,
            node_id=node_id,
            state=node.state.value,
            reason=f"{node.info.name} removed by the operator",
        )
        log.info("node %s (%s) removed", node_id, node.info.name)
        self._notify_report()
        return NodeRemoval(detail, durable)

    # ================================================================ MQTT handlers

    def _on_status(self, message: StatusMessage, inbound: Inbound) -> None:
        node = self.nodes.get(message.node_id)
        if node is None:
            self._reject("unknown_node")
            return
        status = message.payload
        prev = node.status
        if (
            prev is not None
            and status.seq <= prev.seq
            and node.status_sent_ts is not None
            and message.ts <= node.status_sent_ts
        ):
            self._reject("stale_status")
            return
        now = self._mono()
        wall = self._wall()
        self._lags.append(wall - message.ts)
        node.status = status
        node.last_seen = inbound.received_at
        node.status_sent_ts = message.ts
        node.status_dirty = True
        self._index.node_changed(node.id)
        transition = node.liveness.on_status(now)
        if transition is not None:
            self._on_node_transition(node, transition)
            if prev is not None:  # it reported before: a node that returns
                self._arm_rebalance(now + self.settings.rebalance_after)
        for task in status.tasks:
            inst = self.instances.get(task.instance_id)
            if inst is None or inst.node_id != node.id:
                continue  # foreign: the reconcile pass terminates it
            if task.inference is not None:
                self._inference[inst.id] = task.inference
            elif inst.id in self._inference:
                del self._inference[inst.id]
            if inst.id in self._deploying and task.state in _DEPLOYED:
                self._deployed_by_status(inst, node)
            self._observe_task(
                inst,
                task.state,
                task.reason,
                task.exit_code,
                message.ts,
                from_status=True,
                restarts=task.restarts,
            )

    def _deployed_by_status(self, inst: InstanceRecord, node: NodeRecord) -> None:
        """The node lists the instance as running while its DEPLOY still waits for the
        ack: the ack was lost (or is behind), and the status, a level, stands in for it,
        so the instance is not moved away from a node that runs it."""
        cid = self._deploying.get(inst.id)
        pending = self._pending.get(cid) if cid is not None else None
        if pending is None or pending.node_id != node.id:
            return
        self._pop_pending(pending.message.id)
        self._metrics.inc("edge_cluster_acks_by_status_total")
        inst.acked_at = self._mono()
        inst.tried = []

    def _on_presence(self, message: PresenceMessage, inbound: Inbound) -> None:
        node = self.nodes.get(message.node_id)
        if node is None:
            self._reject("unknown_node")
            return
        presence = message.payload
        node.presence_online = presence.online
        if presence.online:
            if presence.reason == SESSION_TAKEN_OVER and not inbound.retained:
                self._on_session_takeover(node)
            return
        now = self._mono()
        if (
            inbound.retained
            and node.liveness.last_status_at is not None
            and (now - node.liveness.last_status_at < self.settings.status_interval * 1.5)
        ):
            return  # an old retained goodbye; the node has spoken since
        reason = "offline: " + (presence.reason or "connection lost")
        transition = node.liveness.on_presence(False, now, reason)
        if transition is not None:
            self._on_node_transition(node, transition)

    def _on_session_takeover(self, node: NodeRecord) -> None:
        """The node says the broker dropped it for another client with its client id: two
        clients share its credentials and displace each other. Counted every time; one
        warning and one `node.session_takeover` event per node per `TAKEOVER_LOG_EVERY_S`."""
        node.session_takeovers += 1
        self._metrics.inc("edge_cluster_node_session_takeovers_total")
        now = self._mono()
        last = node.takeover_logged_at
        if last is not None and now - last < TAKEOVER_LOG_EVERY_S:
            return
        node.takeover_logged_at = now
        reason = (
            "another MQTT client connected with this node's credentials and client id; "
            "a second engine with a copy of its identity, or stolen credentials"
        )
        self._record_event(
            None,
            kind="node.session_takeover",
            subject=node.id,
            node_id=node.id,
            reason=reason,
            data={"takeovers": node.session_takeovers},
        )
        log.warning(
            "node %s (%s): session taken over %d time(s): %s (remove the node to revoke "
            "its credentials if it is not a second engine of yours)",
            node.id,
            node.info.name,
            node.session_takeovers,
            reason,
        )

    def _on_task_event(self, message: TaskEventMessage) -> None:
        self._apply_task_event(message.node_id, message.ts, message.payload)

    def _apply_task_event(self, node_id: str, ts: float, event: TaskEvent) -> None:
        """A task state change reported by a node (a task event, or carried by an ack)."""
        inst = self.instances.get(event.instance_id)
        if inst is None or inst.node_id != node_id:
            if not event.state.terminal:
                self._terminate_orphan(node_id, event.instance_id, "not assigned here")
            return
        self._observe_task(
            inst,
            event.state,
            event.reason,
            event.exit_code,
            ts,
            from_status=False,
            data=event.data,
        )

    def _on_ack(self, message: AckMessage) -> None:
        """A command's answer. Revision 2 engines put the state change the command caused
        in it (`ack.event`): applied first, exactly as the separate task event that
        older engines send before their ack."""
        ack = message.payload
        self._metrics.inc(
            "edge_cluster_acks_total",
            {"kind": ack.command_kind or "?", "result": "accepted" if ack.accepted else "refused"},
        )
        if ack.event is not None:
            self._apply_task_event(message.node_id, message.ts, ack.event)
        pending = self._pending.get(ack.command_id)
        if pending is None or pending.node_id != message.node_id:
            return  # late, duplicate or not ours
        self._pop_pending(ack.command_id)
        inst = self.instances.get(pending.instance_id)
        if pending.kind == "deploy":
            if inst is None or inst.node_id != pending.node_id or inst.desired != "running":
                return
            if ack.accepted:
                inst.acked_at = self._mono()
                inst.tried = []
                if _PROGRESS.get(inst.state, 99) < _PROGRESS[InstanceState.STARTING]:
                    self._transition(
                        inst,
                        InstanceState.STARTING,
                        f"deploy acknowledged by {self._node_name(inst.node_id)}",
                    )
            else:
                self._retry_deploy(
                    inst,
                    f"node {self._node_name(pending.node_id)} refused: {ack.reason}",
                    terminate_old=False,
                )
            return
        # terminate
        self._terminating.pop((pending.node_id, pending.instance_id), None)
        if (
            inst is not None
            and inst.node_id == pending.node_id
            and inst.desired == "stopped"
            and not inst.state.terminal
        ):
            why = "terminated on request" if ack.accepted else f"node: {ack.reason}"
            self._transition(inst, InstanceState.TERMINATED, why)

    # ================================================================ task states

    def _observe_task(
        self,
        inst: InstanceRecord,
        task_state: TaskState,
        reason: str,
        exit_code: int | None,
        ts: float,
        *,
        from_status: bool,
        restarts: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Apply what the assigned node says about an instance's task.

        Events are applied as they come (they are ordered per node, QoS 1). A status is
        a level: it only moves an instance forward, and a finished task that the node
        will restart under its restart policy does not finish the instance.
        """
        if inst.desired == "stopped":
            if task_state.terminal and not inst.state.terminal:
                self._transition(
                    inst,
                    InstanceState.TERMINATED,
                    reason or f"task {task_state.value.lower()} on request",
                )
            return
        if restarts is not None and restarts > inst.restarts:
            inst.restarts = restarts
        target = _TASK_TO_INSTANCE[task_state]
        if target is inst.state:
            return
        if task_state.terminal:
            if task_state is TaskState.SHED and inst.spec.on_shed is ShedAction.RESCHEDULE:
                self._reschedule_shed(inst, reason, data)
                return
            restarting = (
                "restart_in_s" in (data or {})
                if not from_status
                else _may_restart(inst, task_state, restarts)
            )
            if restarting:
                if not from_status:
                    text = reason or f"task {task_state.value.lower()}"
                    self._transition(
                        inst,
                        InstanceState.STARTING,
                        f"{text}; node restarts it in {data.get('restart_in_s', 0):g}s"
                        if data
                        else text,
                        exit_code=exit_code,
                        data=data,
                    )
                return
        elif (
            from_status
            and target in _PROGRESS
            and (_PROGRESS.get(inst.state, -1) > _PROGRESS[target])
        ):
            return  # an older status; the event that advanced us is newer
        text = reason or f"task {task_state.value.lower()} on {self._node_name(inst.node_id)}"
        self._transition(inst, target, text, exit_code=exit_code, data=data)
        if target.terminal:
            inst.desired = "stopped"
            self._persist_instance(inst)

    # ================================================================ liveness

    def _on_node_transition(self, node: NodeRecord, tr: Transition) -> None:
        node.reason = tr.reason
        self._index.node_changed(node.id)
        self._persist_node(node)
        self._metrics.inc("edge_cluster_node_transitions_total", {"state": tr.current.value})
        self._record_event(
            None,
            kind="node.liveness",
            subject=node.id,
            node_id=node.id,
            state=tr.current.value,
            reason=tr.reason,
            data={"previous": tr.previous.value},
        )
        level = logging.WARNING if tr.current is not Liveness.READY else logging.INFO
        log.log(
            level,
            "node %s (%s) %s -> %s: %s",
            node.id,
            node.info.name,
            tr.previous.value,
            tr.current.value,
            tr.reason,
        )
        if tr.current is Liveness.LOST:
            # terminations that were waiting for this node will never be acked
            for inst in self._instances_on(node.id):
                if inst.desired == "stopped" and not inst.state.terminal:
                    self._transition(
                        inst,
                        InstanceState.TERMINATED,
                        f"node {node.info.name} lost before acknowledging",
                    )
            for key in [k for k in self._terminating if k[0] == node.id]:
                cid = self._terminating.pop(key)
                self._pop_pending(cid)
        self._notify_report()

    def _tick_liveness(self, now: float) -> None:
        interval = self.settings.status_interval
        grace = self.settings.lost_grace
        for node in self.nodes.values():
            state = node.liveness.state
            if state is Liveness.LOST:
                continue
            if (
                state is Liveness.READY
                and node.liveness.last_status_at is not None
                and (now - node.liveness.last_status_at < 3 * interval)
            ):
                continue
            for tr in node.liveness.tick(now, interval, grace):
                self._on_node_transition(node, tr)

    def _tick_grace(self, now: float) -> None:
        """Reschedule instances of nodes unhealthy for longer than their grace."""
        for node_id, ids in list(self._by_node.items()):
            if not ids:
                continue
            node = self.nodes.get(node_id)
            if node is None or node.liveness.state is Liveness.READY or node.liveness.held(now):
                continue
            unhealthy = node.liveness.unhealthy_for(now)
            for inst in self._instances_on(node_id):
                if inst.state.terminal or inst.desired != "running":
                    continue
                grace = (
                    inst.lost_grace_s if inst.lost_grace_s is not None else self.settings.lost_grace
                )
                if unhealthy >= grace:
                    self._reschedule_lost(inst, node, unhealthy)

    def _reschedule_shed(
        self, inst: InstanceRecord, reason: str, data: dict[str, Any] | None
    ) -> None:
        """A node shed the instance and its job says ``on_shed: reschedule``: handled like a
        lost instance on that node. The SHED state is recorded (with the node's measured
        values) and the instance goes to another node; when none fits, the SHED state is
        reported to the root, which replaces the instance elsewhere."""
        old = inst.node_id
        why = f"shed by {self._node_name(old)}: {reason}" if reason else "shed by its node"
        decision = self._decide(inst, exclude={old} if old else set())
        self._transition(
            inst,
            InstanceState.SHED,
            why,
            report=decision.chosen is None,
            data={**(data or {}), "rescheduling": decision.chosen is not None},
        )
        if decision.chosen is None:
            inst.reason = f"{why}; no other node fits: {decision.explain()}"[:1024]
            self._persist_instance(inst)
            return
        if old is not None:
            self._send_terminate(old, inst.id, "rescheduled elsewhere after shedding", orphan=True)
        inst.tried = []
        self._assign(inst, decision, f"rescheduled: {why}")

    def _reschedule_lost(self, inst: InstanceRecord, node: NodeRecord, unhealthy: float) -> None:
        why = f"node {node.info.name} {node.liveness.state.value} for {unhealthy:.1f}s"
        decision = self._decide(inst, exclude={node.id})
        self._transition(
            inst,
            InstanceState.LOST,
            why,
            report=decision.chosen is None,
            data={"rescheduling": decision.chosen is not None},
        )
        if decision.chosen is None:
            inst.desired = "stopped"
            inst.reason = f"{why}; no other node fits: {decision.explain()}"[:1024]
            self._persist_instance(inst)
            return
        # the old node may come back: its copy is foreign then and gets terminated
        self._send_terminate(node.id, inst.id, "rescheduled elsewhere", orphan=True)
        self._assign(inst, decision, f"rescheduled: {why}")

    # ================================================================ commands

    def _send(self, message: CommandMessage, pending: PendingCommand) -> None:
        self._pending[message.id] = pending
        if pending.kind == "deploy":
            self._deploying[pending.instance_id] = message.id
        if not self._publish(message):
            log.warning("could not publish %s to %s now; will retry", message.kind, message.node_id)

    def _deploy(self, inst: InstanceRecord) -> None:
        assert inst.node_id is not None
        message = DeployMessage(
            node_id=inst.node_id,
            payload=DeployCommand(instance_id=inst.id, job_id=inst.job_id, spec=inst.spec),
        )
        self._drop_pending_deploys(inst.id)
        self._send(
            message,
            PendingCommand(
                message=message,
                kind="deploy",
                node_id=inst.node_id,
                instance_id=inst.id,
                deadline=self._mono() + self.settings.ack_timeout,
            ),
        )

    def _send_terminate(self, node_id: str, instance_id: str, reason: str, *, orphan: bool) -> None:
        key = (node_id, instance_id)
        if key in self._terminating and self._terminating[key] in self._pending:
            return
        message = TerminateMessage(
            node_id=node_id,
            payload=TerminateCommand(instance_id=instance_id, reason=reason[:1024]),
        )
        self._terminating[key] = message.id
        self._send(
            message,
            PendingCommand(
                message=message,
                kind="terminate",
                node_id=node_id,
                instance_id=instance_id,
                deadline=self._mono() + self.settings.ack_timeout,
                orphan=orphan,
            ),
        )

    def _terminate_orphan(self, node_id: str, instance_id: str, why: str) -> None:
        node = self.nodes.get(node_id)
        if node is None or node.liveness.state is Liveness.LOST:
            return
        key = (node_id, instance_id)
        if key in self._terminating:
            return
        log.info("terminating foreign task %s on %s (%s)", instance_id, node.info.name, why)
        self._send_terminate(node_id, instance_id, f"not assigned to this node: {why}", orphan=True)

    def _tick_commands(self, now: float) -> None:
        expired = [p for p in self._pending.values() if p.deadline <= now]
        for pending in expired:
            if self._pending.get(pending.message.id) is not pending:
                continue
            self._metrics.inc("edge_cluster_ack_timeouts_total", {"kind": pending.kind})
            if pending.kind == "deploy":
                self._pop_pending(pending.message.id)
                inst = self.instances.get(pending.instance_id)
                if inst is None or inst.node_id != pending.node_id or inst.desired != "running":
                    continue
                self._retry_deploy(
                    inst,
                    f"no ack from {self._node_name(pending.node_id)} within "
                    f"{self.settings.ack_timeout:g}s",
                    terminate_old=True,
                )
                continue
            node = self.nodes.get(pending.node_id)
            if node is None or node.liveness.state is Liveness.LOST:
                self._pop_pending(pending.message.id)
                self._terminating.pop((pending.node_id, pending.instance_id), None)
                continue
            # terminate: resend the same command (idempotent) until acked or node lost
            pending.deadline = now + self.settings.ack_timeout
            pending.sent += 1
            self._publish(pending.message)

    def _retry_deploy(self, inst: InstanceRecord, why: str, *, terminate_old: bool) -> None:
        old = inst.node_id
        if old is not None:
            inst.tried.append(old)
            if terminate_old:
                self._send_terminate(
                    old, inst.id, "deploy timed out; placed elsewhere", orphan=True
                )
        attempts = len(inst.tried)
        if attempts >= self.settings.dispatch_attempts:
            self._fail(inst, f"{why}; gave up after {attempts} node(s)")
            return
        decision = self._decide(inst, exclude=set(inst.tried))
        if decision.chosen is None:
            self._fail(inst, f"{why}; no other node fits: {decision.explain()}")
            return
        self._assign(inst, decision, f"retry {attempts + 1}: {why}")

    def _fail(self, inst: InstanceRecord, reason: str) -> None:
        inst.desired = "stopped"
        self._transition(inst, InstanceState.FAILED, reason)

    # ================================================================ scheduling

    def _candidate(self, node: NodeRecord, reserved: Usage | None) -> Candidate:
        """One node as a placement candidate: its labels overlaid on the cluster's, CPU
        free by reservations, measured load for scoring and the overload filter."""
        return build_candidate(
            node_id=node.id,
            info=node.info,
            status=node.status,
            liveness=node.liveness.state,
            draining=node.draining or node.cordoned,  # placement: neither takes new work
            reserved=reserved,
            cluster_labels=self.settings.labels,
            overload_cpu_percent=self.settings.overload_cpu_percent,
        )

    def _build_candidate(self, node_id: str, reserved: Usage | None) -> Candidate:
        return self._candidate(self.nodes[node_id], reserved)

    def candidates(self, exclude: Iterable[str] = ()) -> list[Candidate]:
        """Candidates for every known node except `exclude` (core thread)."""
        skip = set(exclude)
        return [self._index.candidate(nid) for nid in self.nodes if nid not in skip]

    def _decide(self, inst: InstanceRecord, exclude: set[str]) -> Decision:
        """Run the placement pipeline for one instance over all nodes but `exclude`.

        The candidates, reservations and replicas per node come from `PlacementIndex`
        (kept current as statuses, liveness and instances change), so a decision costs
        the filters and scorers over the table, not a rebuild of every candidate.
        """
        constraints = inst.constraints
        pinned: str | None = None
        if constraints.node is not None:
            named = [n for n in self.nodes.values() if n.info.name == constraints.node]
            named.sort(key=lambda n: (n.liveness.state is not Liveness.READY, n.id))
            pinned = named[0].id if named else f"unknown-node-{constraints.node}"
        policy = (
            inst.placement_policy.value if inst.placement_policy else self.settings.placement_policy
        )
        request = placement_request(inst.spec, constraints, policy=None, pinned_id=pinned)
        decision = place(
            request,
            self._index.table(self.nodes),
            policy,
            self._rng,
            existing=self._index.replicas(inst.job_id, without=inst.id),
            noun="node",
            exclude=exclude,
        )
        if exclude:
            decision = _with_excluded(decision, len(exclude & self.nodes.keys()))
        self._metrics.inc(
            "edge_cluster_placements_total", {"result": "placed" if decision.chosen else "rejected"}
        )
        inst.placement = decision.to_dict(limit=10)
        return decision

    def _assign(
        self, inst: InstanceRecord, decision: Decision, why: str, *, report: bool = True
    ) -> None:
        """Put the instance on the chosen node and send the DEPLOY. `report=False` for a
        fresh placement: the root learns the node from the placement answer, so the
        ASSIGNED change does not travel twice (a node change later is reported)."""
        assert decision.chosen is not None
        self._set_node(inst, decision.chosen.id)
        inst.assigned_at = self._mono()
        inst.acked_at = None
        inst.desired = "running"
        self._transition(
            inst,
            InstanceState.ASSIGNED,
            f"{why}: {decision.explain()}" if why else decision.explain(),
            data={"node_name": decision.chosen.name, "score": decision.score},
            report=report,
        )
        self._deploy(inst)

    def _move(self, inst: InstanceRecord, why: str, *, exclude_current: bool) -> bool:
        """Place an active instance on another node; terminate its old copy. False: stays."""
        old = inst.node_id
        exclude = {old} if (exclude_current and old) else set()
        decision = self._decide(inst, exclude)
        if decision.chosen is None:
            inst.reason = f"{why}; no other node fits: {decision.explain()}"[:1024]
            self._persist_instance(inst)
            return False
        if old is not None:
            self._send_terminate(old, inst.id, why, orphan=True)
        inst.tried = []
        self._assign(inst, decision, f"moved: {why}")
        return True

    # ================================================================ API: instances

    def place_instance(self, request: PlaceInstanceRequest) -> PlaceInstanceResponse:
        """Decide a node for a new instance and send the DEPLOY (core thread)."""
        existing = self.instances.get(request.instance_id)
        if existing is not None and not existing.state.terminal:
            return PlaceInstanceResponse(
                accepted=True,
                instance_id=existing.id,
                node_id=existing.node_id,
                node_name=self._node_name(existing.node_id) if existing.node_id else None,
                explanation=f"already placed ({existing.state.value})",
            )
        if request.constraints.cluster is not None and (
            request.constraints.cluster != self.settings.name
        ):
            reason = f"cluster {request.constraints.cluster} required"
            self._metrics.inc("edge_cluster_placements_total", {"result": "rejected"})
            return PlaceInstanceResponse(
                accepted=False,
                instance_id=request.instance_id,
                reasons={reason: max(1, len(self.nodes))},
                explanation=f"this is cluster {self.settings.name}",
            )
        pinned = request.constraints.node
        if pinned is not None and not any(n.info.name == pinned for n in self.nodes.values()):
            reason = f"node {pinned} not in this cluster"
            self._metrics.inc("edge_cluster_placements_total", {"result": "rejected"})
            return PlaceInstanceResponse(
                accepted=False,
                instance_id=request.instance_id,
                reasons={reason[:128]: 1},
                explanation=reason,
            )
        inst = InstanceRecord.from_request(request, self._wall())
        decision = self._decide(inst, exclude=set())
        if decision.chosen is None:
            reasons = dict(decision.rejections)
            if not reasons:
                reasons = {"no nodes joined": 1}
            return PlaceInstanceResponse(
                accepted=False,
                instance_id=request.instance_id,
                reasons={k[:128]: v for k, v in reasons.items()},
                explanation=decision.explain()[:1024],
            )
        if existing is not None:
            self._set_node(existing, None)
        self.instances[inst.id] = inst
        self._transition(
            inst, InstanceState.SCHEDULED, "accepted by the cluster", report=False, persist=False
        )
        self._assign(inst, decision, "", report=False)
        return PlaceInstanceResponse(
            accepted=True,
            instance_id=inst.id,
            node_id=decision.chosen.id,
            node_name=decision.chosen.name or None,
            explanation=decision.explain()[:1024],
        )

    def delete_instance(self, instance_id: str) -> InstanceView:
        """Stop an instance: TERMINATE to its node, TERMINATED once acked (core thread)."""
        inst = self.instances.get(instance_id)
        if inst is None:
            raise NotFound(f"instance {instance_id} not found")
        if inst.state.terminal:
            return self.instance_view(inst)
        inst.desired = "stopped"
        self._drop_pending_deploys(inst.id)
        node = self.nodes.get(inst.node_id) if inst.node_id else None
        if node is None or node.liveness.state is Liveness.LOST:
            self._transition(
                inst, InstanceState.TERMINATED, "terminated (no reachable node held it)"
            )
        else:
            self._record_event(
                inst,
                kind="instance.terminating",
                subject=inst.id,
                job_id=inst.job_id,
                instance_id=inst.id,
                node_id=node.id,
                state=inst.state.value,
                reason="termination requested",
            )
            inst.reason = "termination requested"
            self._persist_instance(inst)
            self._send_terminate(node.id, inst.id, "terminated on request", orphan=False)
        return self.instance_view(inst)

    def instance_view(self, inst: InstanceRecord) -> InstanceView:
        """The API view of an instance (core thread)."""
        return InstanceView(
            id=inst.id,
            job_id=inst.job_id,
            job_name=inst.job_name,
            replica=inst.replica,
            state=inst.state,
            desired=inst.desired,
            node_id=inst.node_id,
            node_name=self._node_name(inst.node_id) if inst.node_id else None,
            reason=inst.reason,
            exit_code=inst.exit_code,
            restarts=inst.restarts,
            created_at=inst.created_at,
            updated_at=inst.updated_at,
            spec=inst.spec,
            constraints=inst.constraints,
            placement_policy=inst.placement_policy,
            lost_grace_s=inst.lost_grace_s,
            placement=inst.placement,
            events=list(inst.events),
            inference=self._inference.get(inst.id),
        )

    def get_instance(self, instance_id: str) -> InstanceView:
        """One instance (memory first, then the store for evicted ones)."""
        inst = self.instances.get(instance_id)
        if inst is None:
            doc = self._store.get(INSTANCES, instance_id)
            if doc is None:
                raise NotFound(f"instance {instance_id} not found")
            inst = InstanceRecord.from_doc(doc)
            for ev in self._store.find(
                EVENTS, {"instance_id": instance_id}, order_by="_id", descending=True, limit=50
            ):
                inst.events.appendleft(event_from_doc(ev))
        return self.instance_view(inst)

    def list_instances(
        self,
        *,
        state: InstanceState | None = None,
        node_id: str | None = None,
        job_id: str | None = None,
    ) -> list[InstanceView]:
        """Instances in memory (unfinished ones and recently finished ones)."""
        out = []
        for inst in sorted(self.instances.values(), key=lambda i: (i.created_at, i.id)):
            if state is not None and inst.state is not state:
                continue
            if node_id is not None and inst.node_id != node_id:
                continue
            if job_id is not None and inst.job_id != job_id:
                continue
            out.append(self.instance_view(inst))
        return out

    # ================================================================ API: nodes

    def node_detail(self, node: NodeRecord, *, with_status: bool = True) -> NodeDetail:
        """The API view of a node (core thread)."""
        return NodeDetail(
            id=node.id,
            info=node.info,
            liveness=node.liveness.state,
            draining=node.draining,
            cordoned=node.cordoned,
            last_seen=node.last_seen,
            status=node.status if with_status else None,
            reason=node.reason[:1024],
            instances=[i.id for i in self._instances_on(node.id) if not i.state.terminal],
            unhealthy_for_s=round(node.liveness.unhealthy_for(self._mono()), 3),
            joined_at=node.joined_at,
            presence_online=node.presence_online,
        )

    def get_node(self, node_id: str) -> NodeDetail:
        """One node."""
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        return self.node_detail(node)

    def list_nodes(
        self, *, liveness: Liveness | None = None, with_status: bool = True
    ) -> list[NodeDetail]:
        """Every node, optionally filtered by liveness."""
        return [
            self.node_detail(n, with_status=with_status)
            for n in sorted(self.nodes.values(), key=lambda n: (n.info.name, n.id))
            if liveness is None or n.liveness.state is liveness
        ]

    def set_draining(self, node_id: str, draining: bool) -> DrainResult:
        """Drain (or undrain) a node; draining moves its instances elsewhere now."""
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        moved: dict[str, str] = {}
        stuck: dict[str, str] = {}
        if node.draining != draining:
            node.draining = draining
            self._operator_flag_changed(
                node,
                "node.drain" if draining else "node.undrain",
                "draining" if draining else "drain cancelled",
            )
        if draining:
            for inst in self._instances_on(node.id):
                if inst.state.terminal or inst.desired != "running":
                    continue
                if self._move(inst, f"node {node.info.name} draining", exclude_current=True):
                    moved[inst.id] = inst.node_id or ""
                else:
                    stuck[inst.id] = inst.reason
        return DrainResult(node=self.node_detail(node), moved=moved, stuck=stuck)

    def set_cordoned(self, node_id: str, cordoned: bool) -> DrainResult:
        """Cordon a node (no new placements; what runs there stays), or uncordon it,
        which ends a drain too. Persisted like draining, so it survives a restart."""
        node = self.nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        if node.cordoned != cordoned or (not cordoned and node.draining):
            node.cordoned = cordoned
            if not cordoned:
                node.draining = False
            self._operator_flag_changed(
                node,
                "node.cordon" if cordoned else "node.uncordon",
                "cordoned" if cordoned else "uncordoned",
            )
        return DrainResult(node=self.node_detail(node))

    def _operator_flag_changed(self, node: NodeRecord, kind: str, reason: str) -> None:
        """A drain or cordon flag of `node` changed: persist it, record `kind`, report."""
        self._index.node_changed(node.id)
        node.reason = reason
        self._persist_node(node)
        self._record_event(
            None, kind=kind, subject=node.id, node_id=node.id, state=node.state.value, reason=reason
        )
        self._notify_report()

    # ================================================================ reconcile

    def reconcile(self) -> None:
        """Compare what READY nodes report with the assignments and close the gaps.

        * a task on a node that does not hold its instance (or whose instance should
          stop, unless the status may predate the instance's last change) is terminated;
        * an instance whose node acked its DEPLOY but no longer lists it in a status
          received afterwards is redeployed there, counting a restart; beyond the
          spec's `max_restarts` it FAILs;
        * instances still on a draining node are moved again;
        * finished instances older than `terminal_retention` leave memory.
        """
        settle = max(self.settings.status_interval * 2, 0.5)
        for node in self.nodes.values():
            if node.liveness.state is not Liveness.READY or node.status is None:
                continue
            reported = {t.instance_id: t for t in node.status.tasks}
            for iid, task in reported.items():
                inst = self.instances.get(iid)
                if inst is None or inst.node_id != node.id:
                    if not task.state.terminal:
                        self._terminate_orphan(node.id, iid, "no such assignment")
                elif (
                    inst.desired == "stopped"
                    and not task.state.terminal
                    and (node.id, iid) not in self._terminating
                    and not _older_than(node, inst.updated_at + self.settings.status_interval)
                ):
                    self._send_terminate(
                        node.id, iid, "instance is finished here", orphan=inst.state.terminal
                    )
            last_status = node.liveness.last_status_at or 0.0
            for inst in self._instances_on(node.id):
                if inst.state.terminal or inst.desired != "running" or inst.id in reported:
                    continue
                if inst.acked_at is None or last_status < inst.acked_at + settle:
                    continue
                if inst.id in self._deploying:
                    continue
                inst.restarts += 1
                if inst.restarts > inst.spec.max_restarts:
                    self._fail(
                        inst,
                        f"missing from {node.info.name} and restart limit "
                        f"({inst.spec.max_restarts}) reached",
                    )
                    continue
                self._record_event(
                    inst,
                    kind="instance.redeploy",
                    subject=inst.id,
                    job_id=inst.job_id,
                    instance_id=inst.id,
                    node_id=node.id,
                    state=inst.state.value,
                    reason=f"missing from {node.info.name}'s task list",
                )
                inst.acked_at = None
                self._deploy(inst)
            if node.draining:
                for inst in self._instances_on(node.id):
                    if not inst.state.terminal and inst.desired == "running":
                        self._move(inst, f"node {node.info.name} draining", exclude_current=True)
        retention = self.settings.terminal_retention
        wall = self._wall()
        for iid in [
            i.id
            for i in self.instances.values()
            if i.state.terminal and wall - i.updated_at > retention
        ]:
            inst = self.instances.pop(iid)
            self._set_node(inst, None)

    # ================================================================ rebalancing

    def _arm_rebalance(self, at: float) -> None:
        if self.settings.rebalance and (self._rebalance_at is None or at < self._rebalance_at):
            self._rebalance_at = at

    def rebalance(self, now: float) -> list[str]:
        """Move replicas of spread jobs onto nodes that returned (core thread).

        Runs `rebalance_after` seconds after a node came back. Targets are READY nodes
        that have been READY that long and are neither draining nor cordoned; per job at
        most one replica moves per pass, from its fullest node to a node holding two or
        more fewer, chosen by the placement pipeline among those (so every filter
        applies). Until all spread jobs are even, it looks again `REBALANCE_RETRY_S`
        later. Returns the moved ids.
        """
        wait = self.settings.rebalance_after
        targets = {
            n.id
            for n in self.nodes.values()
            if n.liveness.state is Liveness.READY
            and not n.draining
            and not n.cordoned
            and n.liveness.ready_since is not None
            and now - n.liveness.ready_since >= wait
        }
        if len(targets) < 2:
            return []
        placed = []
        for inst in self.instances.values():
            if inst.state.terminal or inst.desired != "running" or inst.node_id is None:
                continue
            policy = (
                inst.placement_policy.value
                if inst.placement_policy
                else self.settings.placement_policy
            )
            if policy != "spread":
                continue
            placed.append(
                Placed(
                    inst.id,
                    inst.job_id,
                    inst.node_id,
                    running=inst.state is InstanceState.RUNNING,
                    movable=inst.constraints.node is None,
                )
            )
        busy = {p.job_id for p in placed if not p.running}
        moved: list[str] = []
        for move in rebalance_moves(placed, targets):
            inst = self.instances[move.instance_id]
            kept = inst.placement
            decision = self._decide(inst, exclude=set(self.nodes) - move.allowed)
            if decision.chosen is None:
                inst.placement = kept  # a running instance keeps its explanation
                continue
            spread = ", ".join(
                f"{self._node_name(n)} {c}" for n, c in sorted(move.counts.items()) if c
            )
            why = (
                f"rebalanced: spread job had {move.counts[move.source]} replicas on "
                f"{self._node_name(move.source)} and "
                f"{move.counts.get(decision.chosen.id, 0)} on {decision.chosen.name} ({spread})"
            )
            self._record_event(
                inst,
                kind="instance.rebalance",
                subject=inst.id,
                job_id=inst.job_id,
                instance_id=inst.id,
                node_id=move.source,
                state=inst.state.value,
                reason=why,
                data={"from": move.source, "to": decision.chosen.id, "counts": move.counts},
            )
            self._send_terminate(move.source, inst.id, why, orphan=True)
            inst.tried = []
            self._assign(inst, decision, why)
            self._metrics.inc("edge_cluster_rebalance_moves_total")
            moved.append(inst.id)
        if moved or busy:
            self._arm_rebalance(now + REBALANCE_RETRY_S)
        return moved

    # ================================================================ snapshots, gauges

    def _flush_snapshots(self) -> None:
        docs = []
        for node in self.nodes.values():
            if node.status_dirty and node.status is not None:
                node.status_dirty = False
                docs.append(
                    {
                        "_id": node.id,
                        "last_seen": node.last_seen,
                        "liveness": node.liveness.state.value,
                        "status": node.status.model_dump(mode="json"),
                    }
                )
        self._persister.put_many(NODE_STATUS, docs)

    def _update_gauges(self) -> None:
        by_state: dict[str, float] = {s.value: 0.0 for s in Liveness}
        for node in self.nodes.values():
            by_state[node.liveness.state.value] += 1
        self._metrics.replace_gauge("edge_cluster_nodes", by_state, "liveness")
        inst_states: dict[str, float] = {}
        for inst in self.instances.values():
            inst_states[inst.state.value] = inst_states.get(inst.state.value, 0) + 1
        self._metrics.replace_gauge("edge_cluster_instances", inst_states, "state")
        self._metrics.set_gauge("edge_cluster_core_queue_depth", float(self.queue_depth))
        self._metrics.set_gauge("edge_cluster_pending_commands", float(len(self._pending)))

    # ================================================================ reporting

    def build_report(self, *, seq: int, full: bool, changes: list[InstanceChange]) -> ClusterReport:
        """The aggregated report (core thread); a full one lists every instance."""
        snaps = [
            NodeSnapshot(
                liveness=node.liveness.state,
                info=node.info,
                candidate=self._index.candidate(node.id),
            )
            for node in self.nodes.values()
        ]
        instances = changes
        if full:
            instances = [
                InstanceChange(
                    instance_id=inst.id,
                    job_id=inst.job_id,
                    state=inst.state,
                    node_id=inst.node_id,
                    reason=inst.reason,
                    ts=inst.updated_at,
                    exit_code=inst.exit_code,
                    data=self._change_data(inst),
                )
                for inst in self.instances.values()
            ]
        truncated = len(instances) > MAX_INSTANCE_CHANGES
        return aggregate(
            snaps,
            ts=self._wall(),
            seq=seq,
            full=full and not truncated,
            instances=instances[-MAX_INSTANCE_CHANGES:],
        )

    def stats(self) -> dict[str, Any]:
        """Counts for `/api/v1/stats` and `/healthz` (core thread)."""
        by_state: dict[str, int] = {}
        for node in self.nodes.values():
            by_state[node.liveness.state.value] = by_state.get(node.liveness.state.value, 0) + 1
        inst_states: dict[str, int] = {}
        for inst in self.instances.values():
            inst_states[inst.state.value] = inst_states.get(inst.state.value, 0) + 1
        return {
            "nodes": len(self.nodes),
            "nodes_by_liveness": by_state,
            "instances_by_state": inst_states,
            "pending_commands": len(self._pending),
            "queue_depth": self.queue_depth,
            "persister_backlog": self._persister.backlog,
        }

    def node_info(self, node_id: str) -> NodeInfo | None:
        """Join info of a node (core thread)."""
        node = self.nodes.get(node_id)
        return node.info if node else None


def _older_than(node: NodeRecord, wall: float) -> bool:
    """Whether the node's latest status was received before `wall` (so it may predate
    the last change of an instance: a status that crossed a TERMINATE's ack still lists
    the task, and is no reason to send the TERMINATE again)."""
    return node.last_seen is None or node.last_seen < wall


def _may_restart(inst: InstanceRecord, state: TaskState, restarts: int | None) -> bool:
    """Whether the node will restart a task that ended in `state` (its restart policy)."""
    spec = inst.spec
    if restarts is not None and restarts >= spec.max_restarts:
        return False
    if spec.restart_policy is RestartPolicy.ALWAYS:
        return state in (TaskState.SUCCEEDED, TaskState.FAILED)
    if spec.restart_policy is RestartPolicy.ON_FAILURE:
        return state is TaskState.FAILED
    return False


def _new_node_id() -> str:
    return "n" + uuid.uuid4().hex[:16]


def _with_excluded(decision: Decision, excluded: int) -> Decision:
    """Add the excluded nodes (tried before or the one being left) to the rejections."""
    if excluded <= 0:
        return decision
    reason = "excluded (previous node or refused)"
    rejections = dict(decision.rejections)
    rejections[reason] = rejections.get(reason, 0) + excluded
    return dataclasses.replace(
        decision,
        rejections=rejections,
        considered=decision.considered + excluded,
        rejected={**decision.rejected, reason: []},
    )
