"""Typed effects: what a decision of the cluster core wants done outside memory.

The plan functions (`inbound.apply`, `commands`, `admission`, `timers`) change the
in-memory state tables (`state.ClusterState`) and describe every side effect as a
value appended to an `Effects` buffer; they never touch the store, the broker, the
metrics registry or the reporter themselves. The `runner.EffectRunner` executes the
effects afterwards, in order. So a decision is a plain function of (state, input,
time) that a test can call and inspect, and the I/O happens in one place.

Effects are values: nothing changes one after it was emitted. (They are plain slotted
dataclasses, not frozen ones: a frozen dataclass costs about three times as much to
build, and a placement emits a dozen of them.)

| effect | executed by the runner as |
| --- | --- |
| `Persist`, `PersistMany`, `Delete` | a queued write to the persister (store writer thread) |
| `RecordEvent` | a queued write of the event to ``events`` |
| `Publish` | an MQTT publish of a command (QoS 1) |
| `Report` | an instance (or capacity) change for the root, then a wake-up of the reporter |
| `Count`, `ObserveLags`, `SetGauges` | metrics |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cluster_orchestrator.records import INSTANCES, NODES, InstanceRecord, NodeRecord, make_event
from schemas.cluster import InstanceChange
from schemas.job import Event
from schemas.mqtt import CommandMessage

__all__ = [
    "Count",
    "Delete",
    "Effect",
    "Effects",
    "Now",
    "ObserveLags",
    "Persist",
    "PersistMany",
    "Publish",
    "RecordEvent",
    "Report",
    "SetGauges",
]


@dataclass(slots=True)
class Now:
    """The time of one step: monotonic seconds (liveness, deadlines) and wall seconds
    (timestamps of events and instances)."""

    mono: float
    wall: float


@dataclass(slots=True)
class Persist:
    """Upsert one document; `durable`: the caller gets a future done once it is written."""

    collection: str
    doc: Mapping[str, Any]
    durable: bool = False


@dataclass(slots=True)
class PersistMany:
    """Upsert several documents of one collection (a status snapshot batch)."""

    collection: str
    docs: Sequence[Mapping[str, Any]]


@dataclass(slots=True)
class Delete:
    """Delete one document."""

    collection: str
    id: str


@dataclass(slots=True)
class RecordEvent:
    """Keep an event (already appended to its instance's recent events in memory)."""

    event: Event


@dataclass(slots=True)
class Publish:
    """Send a command to its node. `warn`: log when the broker does not take it now
    (a first send; a resend after an ack timeout is quiet)."""

    message: CommandMessage
    warn: bool = True


@dataclass(slots=True)
class Report:
    """Tell the root: an instance change, or (None) a capacity change (report soon)."""

    change: InstanceChange | None = None


@dataclass(slots=True)
class Count:
    """Add `value` to a counter."""

    name: str
    labels: Mapping[str, str] | None = None
    value: float = 1.0


@dataclass(slots=True)
class ObserveLags:
    """Status ingestion lags (publish -> applied) collected since the last tick."""

    samples: Sequence[float]


@dataclass(slots=True)
class SetGauges:
    """The state gauges: nodes by liveness, instances by state, commands waiting."""

    nodes_by_liveness: Mapping[str, float]
    instances_by_state: Mapping[str, float]
    pending_commands: int


Effect = (
    Persist
    | PersistMany
    | Delete
    | RecordEvent
    | Publish
    | Report
    | Count
    | ObserveLags
    | SetGauges
)


class Effects:
    """The effects of one step, in order, and the time of the step.

    The helpers only build effect values (and append an event to its instance's
    in-memory list, which is state); nothing here does I/O.
    """

    __slots__ = ("items", "now")

    def __init__(self, now: Now) -> None:
        self.now = now
        self.items: list[Effect] = []

    def persist(self, collection: str, doc: Mapping[str, Any], *, durable: bool = False) -> None:
        """Upsert a document (see `Persist`)."""
        self.items.append(Persist(collection, doc, durable))

    def persist_node(self, node: NodeRecord) -> None:
        """Write the node's document."""
        self.items.append(Persist(NODES, node.to_doc()))

    def persist_instance(self, inst: InstanceRecord) -> None:
        """Write the instance's document."""
        self.items.append(Persist(INSTANCES, inst.to_doc()))

    def persist_many(self, collection: str, docs: Sequence[Mapping[str, Any]]) -> None:
        """Upsert several documents (nothing for none)."""
        if docs:
            self.items.append(PersistMany(collection, docs))

    def delete(self, collection: str, id: str) -> None:
        """Delete a document."""
        self.items.append(Delete(collection, id))

    def event(self, inst: InstanceRecord | None, **kwargs: Any) -> Event:
        """Record an event now (on `inst`'s recent events too); returns it."""
        event = make_event(ts=self.now.wall, **kwargs)
        if inst is not None:
            inst.events.append(event)
        self.items.append(RecordEvent(event))
        return event

    def publish(self, message: CommandMessage, *, warn: bool = True) -> None:
        """Send a command."""
        self.items.append(Publish(message, warn))

    def report(self, change: InstanceChange | None = None) -> None:
        """Report an instance change (or, with None, that capacity changed)."""
        self.items.append(Report(change))

    def count(self, name: str, labels: Mapping[str, str] | None = None, value: float = 1.0) -> None:
        """Add to a counter."""
        self.items.append(Count(name, labels, value))

    def reject(self, reason: str) -> None:
        """Count an MQTT message refused by the core (unknown node, stale status)."""
        self.items.append(Count("edge_cluster_mqtt_rejected_total", {"reason": reason}))
