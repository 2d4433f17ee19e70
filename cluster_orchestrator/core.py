"""The cluster core loop: the single owner of the state tables, and the runner of effects.

The decisions live in small modules that change the state tables and describe their
side effects as values (docs/architecture.md, "Inside the cluster orchestrator"):

* `state.ClusterState`: the tables (nodes, instances, commands in flight, timers);
* `inbound.apply(state, inbound, now) -> effects`: status, task events, acks, presence;
* `timers.tick`: liveness, ack deadlines, lost grace, reconcile, rebalance, snapshots;
* `admission` (join, remove a node, take an instance), `commands` (terminate,
  drain, cordon), `scheduling` (the placement plan and its application),
  `queries` (API views and the root report);
* `runner.EffectRunner`: executes the effects (persister, MQTT publish, reporter
  buffer, metrics);
* `loading.load_state`: the tables from the store at startup.

One thread runs `ClusterCore._run`; it is the only code that reads or changes the
state. Everything else talks to it through its inbox:

* the MQTT network thread puts decoded messages (`Inbound`) with `deliver()`;
* HTTP handlers put closures with `call()` / `run()` and get the result through a
  future (so an API request is applied between two MQTT messages, never during one);
* timers are handled by the loop itself (a 100 ms tick).

Each step (one message, one API call, one tick) first decides in memory, then the
runner executes the step's effects, in order, on the same thread: so no store write
or publish happens in the middle of a decision, and none waits on disk (durable
changes go to the `Persister`, one writer thread). See docs/cluster-orchestrator.md
("State ownership").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from cluster_orchestrator import admission, commands, queries, timers
from cluster_orchestrator.admission import REMOVED_NODES, JoinGrant, NodeRemoval
from cluster_orchestrator.effects import Effect, Effects, Now
from cluster_orchestrator.errors import (
    Forbidden,
    JoinUnauthorized,
    NodeBusy,
    NodeRemoved,
    NotFound,
)
from cluster_orchestrator.inbound import apply_into
from cluster_orchestrator.loading import load_state
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.mqtt_adapter import Inbound
from cluster_orchestrator.persister import Persister
from cluster_orchestrator.records import InstanceRecord, NodeRecord
from cluster_orchestrator.runner import EffectRunner
from cluster_orchestrator.settings import ClusterSettings
from cluster_orchestrator.state import ClusterState
from cluster_orchestrator.timers import TICK_S
from placement import Candidate
from schemas.cluster import (
    ClusterReport,
    InstanceChange,
    PlaceInstanceRequest,
    PlaceInstanceResponse,
)
from schemas.cluster_api import DrainResult, InstanceView, NodeDetail
from schemas.job import InstanceState
from schemas.mqtt import CommandMessage
from schemas.node import JoinRequest, Liveness, NodeInfo
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

#: at most this many inbox items are handled between two looks at the clock
BATCH = 500


@dataclass(slots=True)
class _Call:
    fn: Callable[[], Any]
    future: Future[Any]


class ClusterCore:
    """The loop that owns a `ClusterState` and runs its effects; see the module docstring.

    Its public methods are the core's API for the routes, the reporter and tests; the
    ones that change state run one step each (decide, then run the effects), and must
    be called on the core thread (through `call`/`run`) once the loop is started.
    """

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
        self._store = store
        self._persister = persister
        self._mono = mono
        self._wall = wall
        self.state = ClusterState(settings=settings, rng=rng or random.Random())
        self._inbox: queue.SimpleQueue[Inbound | _Call | None] = queue.SimpleQueue()
        self._runner = EffectRunner(
            persister=persister, metrics=metrics, publish=publish, queue_depth=self._inbox.qsize
        )
        self._thread: threading.Thread | None = None
        self._running = False

    # ================================================================ state (read-only use)

    @property
    def settings(self) -> ClusterSettings:
        """The cluster's settings (the ones the decisions read)."""
        return self.state.settings

    @settings.setter
    def settings(self, settings: ClusterSettings) -> None:
        self.state.settings = settings

    @property
    def nodes(self) -> dict[str, NodeRecord]:
        """The node table (core thread)."""
        return self.state.nodes

    @property
    def instances(self) -> dict[str, InstanceRecord]:
        """The instance table (core thread)."""
        return self.state.instances

    @property
    def removed_nodes(self) -> dict[str, dict[str, Any]]:
        """Tombstones of removed nodes by id (core thread)."""
        return self.state.removed_nodes

    # ================================================================ lifecycle

    def set_publisher(self, publish: Callable[[CommandMessage], bool]) -> None:
        """Install the function that publishes commands (the MQTT adapter's)."""
        self._runner.publish = publish

    def load(self) -> None:
        """Load nodes and unfinished instances from the store (before `start`)."""
        load_state(self.state, self._store, self._mono())

    def start(self) -> None:
        """Start the loop thread."""
        if self._thread is not None:
            return
        now = self._mono()
        self.state.next_reconcile = now + self.settings.reconcile_interval
        self.state.next_snapshot = now + self.settings.status_snapshot_interval
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
        self.flush_snapshots()

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
        self._runner.add_listener(fn)

    def take_changes(self) -> list[InstanceChange]:
        """Instance changes since the last call (any thread)."""
        return self._runner.take_changes()

    def requeue_changes(self, changes: list[InstanceChange], limit: int = 10000) -> None:
        """Put changes that could not be reported back in front (bounded)."""
        self._runner.requeue_changes(changes, limit)

    @property
    def queue_depth(self) -> int:
        """Items waiting in the inbox."""
        return self._inbox.qsize()

    # ================================================================ steps

    def now(self) -> Now:
        """The time of a step, from the injected clocks."""
        return Now(self._mono(), self._wall())

    def execute(self, effects: Iterable[Effect]) -> Future[None] | None:
        """Run effects (of `inbound.apply` or another plan function) through the runner."""
        return self._runner.run(effects)

    def handle(self, inbound: Inbound) -> None:
        """One step for a node message: `inbound.apply`, then its effects (core thread).

        A message that makes the decision fail is logged and dropped; the effects
        emitted before the failure still run (they describe state already changed)."""
        fx = Effects(Now(self._mono(), self._wall()))
        try:
            apply_into(self.state, fx, inbound)
        except Exception:
            message = inbound.message
            log.exception("handling %s from %s failed", message.kind, message.node_id)
        if fx.items:  # a steady status has none: the hot path skips the runner
            self._runner.run(fx.items)

    def tick(self, now_mono: float) -> None:
        """One step of the timers at monotonic time `now_mono` (core thread)."""
        fx = Effects(Now(now_mono, self._wall()))
        try:
            timers.tick(self.state, fx)
        finally:
            self._runner.run(fx.items)

    def flush_snapshots(self) -> None:
        """Queue the latest status of every node that reported since the last snapshot."""
        fx = Effects(self.now())
        timers.flush_snapshots(self.state, fx)
        self._runner.run(fx.items)

    def _step(self, plan: Callable[[Effects], T]) -> T:
        """Run a plan function with a fresh effects buffer, then its effects (also when
        it raises: a refusal still counts, e.g. a join with a wrong secret)."""
        fx = Effects(self.now())
        try:
            return plan(fx)
        finally:
            self._runner.run(fx.items)

    def _durable_step(self, plan: Callable[[Effects], T]) -> tuple[T, Future[None] | None]:
        fx = Effects(self.now())
        try:
            result = plan(fx)
        finally:
            durable = self._runner.run(fx.items)
        return result, durable

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
                    self.tick(now)
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
        self.handle(item)

    # ================================================================ admission

    def join(self, request: JoinRequest, *, join_token_ok: bool = True) -> JoinGrant:
        """Register or re-admit a node (core thread); see `admission.join`."""
        grant, durable = self._durable_step(
            lambda fx: admission.join(self.state, fx, request, join_token_ok=join_token_ok)
        )
        return dataclasses.replace(grant, durable=durable)

    def remove_node(self, node_id: str) -> NodeRemoval:
        """Remove a node for good (core thread); see `admission.remove_node`."""
        removal, durable = self._durable_step(
            lambda fx: admission.remove_node(self.state, fx, node_id)
        )
        return dataclasses.replace(removal, durable=durable)

    def place_instance(self, request: PlaceInstanceRequest) -> PlaceInstanceResponse:
        """Decide a node for a new instance and send the DEPLOY (core thread)."""
        return self._step(lambda fx: admission.place_instance(self.state, fx, request))

    # ================================================================ commands

    def delete_instance(self, instance_id: str) -> InstanceView:
        """Stop an instance: TERMINATE to its node, TERMINATED once acked (core thread)."""
        return self._step(lambda fx: commands.delete_instance(self.state, fx, instance_id))

    def set_draining(self, node_id: str, draining: bool) -> DrainResult:
        """Drain (or undrain) a node; draining moves its instances elsewhere now."""
        return self._step(lambda fx: commands.set_draining(self.state, fx, node_id, draining))

    def set_cordoned(self, node_id: str, cordoned: bool) -> DrainResult:
        """Cordon a node (no new placements; what runs there stays), or uncordon it,
        which ends a drain too. Persisted like draining, so it survives a restart."""
        return self._step(lambda fx: commands.set_cordoned(self.state, fx, node_id, cordoned))

    def reconcile(self) -> None:
        """Run the reconcile pass now (core thread); see `timers.reconcile`."""
        self._step(lambda fx: timers.reconcile(self.state, fx))

    def rebalance(self, now: float) -> list[str]:
        """Run a rebalancing pass at monotonic `now` (core thread); see `timers.rebalance`."""
        fx = Effects(Now(now, self._wall()))
        try:
            return timers.rebalance(self.state, fx)
        finally:
            self._runner.run(fx.items)

    # ================================================================ views

    def candidates(self, exclude: Iterable[str] = ()) -> list[Candidate]:
        """Candidates for every known node except `exclude` (core thread)."""
        return self.state.candidates(set(exclude))

    def instance_view(self, inst: InstanceRecord) -> InstanceView:
        """The API view of an instance (core thread)."""
        return queries.instance_view(self.state, inst)

    def get_instance(self, instance_id: str) -> InstanceView:
        """One instance (memory first, then the store for evicted ones)."""
        return queries.get_instance(self.state, self._store, instance_id)

    def list_instances(
        self,
        *,
        state: InstanceState | None = None,
        node_id: str | None = None,
        job_id: str | None = None,
    ) -> list[InstanceView]:
        """Instances in memory (unfinished ones and recently finished ones)."""
        return queries.list_instances(self.state, state=state, node_id=node_id, job_id=job_id)

    def node_detail(self, node: NodeRecord, *, with_status: bool = True) -> NodeDetail:
        """The API view of a node (core thread)."""
        return queries.node_detail(self.state, node, self._mono(), with_status=with_status)

    def get_node(self, node_id: str) -> NodeDetail:
        """One node."""
        return queries.get_node(self.state, node_id, self._mono())

    def list_nodes(
        self, *, liveness: Liveness | None = None, with_status: bool = True
    ) -> list[NodeDetail]:
        """Every node, optionally filtered by liveness."""
        return queries.list_nodes(
            self.state, self._mono(), liveness=liveness, with_status=with_status
        )

    def build_report(self, *, seq: int, full: bool, changes: list[InstanceChange]) -> ClusterReport:
        """The aggregated report (core thread); a full one lists every instance."""
        return queries.build_report(
            self.state, wall=self._wall(), seq=seq, full=full, changes=changes
        )

    def stats(self) -> dict[str, Any]:
        """Counts for `/api/v1/stats` and `/healthz` (core thread)."""
        return {
            **queries.counts(self.state),
            "queue_depth": self.queue_depth,
            "persister_backlog": self._persister.backlog,
        }

    def node_info(self, node_id: str) -> NodeInfo | None:
        """Join info of a node (core thread)."""
        node = self.state.nodes.get(node_id)
        return node.info if node else None
