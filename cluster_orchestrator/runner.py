"""The runner: executes the effects of a step (see `effects`) after the step.

Writes go to the persister (the store writer thread), commands to the MQTT
publisher, instance changes into the buffer the reporter drains (`take_changes`),
counts and gauges into the metrics. The reporter is woken once per step that
reported anything. Only the change buffer is shared with another thread (the
reporter's), under its own lock; the state tables are not touched here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future

from cluster_orchestrator.effects import (
    Count,
    Delete,
    Effect,
    ObserveLags,
    Persist,
    PersistMany,
    Publish,
    RecordEvent,
    Report,
    SetGauges,
)
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.persister import Persister
from cluster_orchestrator.records import EVENTS, event_doc
from schemas.cluster import InstanceChange
from schemas.mqtt import CommandMessage

__all__ = ["MAX_BUFFERED_CHANGES", "EffectRunner"]

log = logging.getLogger(__name__)

#: Instance changes kept for the reporter while the root is away (a full report heals
#: anything dropped beyond this).
MAX_BUFFERED_CHANGES = 10000


class EffectRunner:
    """Runs effects in order; see the module docstring."""

    def __init__(
        self,
        *,
        persister: Persister,
        metrics: Metrics,
        publish: Callable[[CommandMessage], bool] | None = None,
        queue_depth: Callable[[], int] = lambda: 0,
    ) -> None:
        self._persister = persister
        self._metrics = metrics
        self.publish: Callable[[CommandMessage], bool] = publish or (lambda _m: False)
        self._queue_depth = queue_depth
        self._changes_lock = threading.Lock()
        self._changes: list[InstanceChange] = []
        self._listeners: list[Callable[[], None]] = []

    def run(self, effects: Iterable[Effect]) -> Future[None] | None:
        """Execute `effects` in order; returns the future of the last durable write."""
        durable: Future[None] | None = None
        notify = False
        persister = self._persister
        for effect in effects:
            if isinstance(effect, Persist):
                done = persister.put(effect.collection, effect.doc, wait=effect.durable)
                if done is not None:
                    durable = done
            elif isinstance(effect, RecordEvent):
                persister.put(EVENTS, event_doc(effect.event))
            elif isinstance(effect, Count):
                self._metrics.inc(effect.name, effect.labels, effect.value)
            elif isinstance(effect, Report):
                if effect.change is not None:
                    self._buffer(effect.change)
                notify = True
            elif isinstance(effect, Publish):
                if not self.publish(effect.message) and effect.warn:
                    log.warning(
                        "could not publish %s to %s now; will retry",
                        effect.message.kind,
                        effect.message.node_id,
                    )
            elif isinstance(effect, PersistMany):
                persister.put_many(effect.collection, effect.docs)
            elif isinstance(effect, Delete):
                persister.delete(effect.collection, effect.id)
            elif isinstance(effect, ObserveLags):
                self._metrics.observe_lags(list(effect.samples))
            elif isinstance(effect, SetGauges):
                self._set_gauges(effect)
        if notify:
            self._notify()
        return durable

    # ---------------------------------------------------------------- reporter side

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Register a function called (on the core thread) when a report is due soon."""
        self._listeners.append(fn)

    def take_changes(self) -> list[InstanceChange]:
        """Instance changes since the last call (any thread)."""
        with self._changes_lock:
            out, self._changes = self._changes, []
        return out

    def requeue_changes(
        self, changes: list[InstanceChange], limit: int = MAX_BUFFERED_CHANGES
    ) -> None:
        """Put changes that could not be reported back in front (bounded)."""
        with self._changes_lock:
            merged = changes + self._changes
            self._changes = merged[-limit:]

    def _buffer(self, change: InstanceChange) -> None:
        with self._changes_lock:
            self._changes.append(change)
            if len(self._changes) > MAX_BUFFERED_CHANGES:
                del self._changes[: len(self._changes) - MAX_BUFFERED_CHANGES]

    def _notify(self) -> None:
        for fn in self._listeners:
            try:
                fn()
            except Exception:
                log.exception("report listener failed")

    def _set_gauges(self, gauges: SetGauges) -> None:
        self._metrics.replace_gauge("edge_cluster_nodes", gauges.nodes_by_liveness, "liveness")
        self._metrics.replace_gauge("edge_cluster_instances", gauges.instances_by_state, "state")
        self._metrics.set_gauge("edge_cluster_core_queue_depth", float(self._queue_depth()))
        self._metrics.set_gauge("edge_cluster_pending_commands", float(gauges.pending_commands))
