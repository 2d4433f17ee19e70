"""The cluster's store writer: queued puts go to the store in batches, in order.

A real SQLite store (in memory) behind a thin wrapper that counts the calls and can
hold the first write until the test has queued more, so the queue really builds up.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.persister import MAX_DOCS, Persister
from store import InvalidInput, Store, open_store


class Gated:
    """Delegates to a real store; counts put/put_many and can hold the first write."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.single = 0

    def _hold(self) -> None:
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"

    def put_many(self, writes: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        self._hold()
        self.batches.append(len(writes))
        self.inner.put_many(writes)

    def put(self, collection: str, doc: Mapping[str, Any]) -> int:
        self._hold()
        self.single += 1
        return self.inner.put(collection, doc)

    def delete(self, collection: str, id: str) -> bool:
        self._hold()
        return self.inner.delete(collection, id)


@pytest.fixture
def gated() -> Any:
    inner = open_store("sqlite://:memory:")
    yield Gated(inner)
    inner.close()


def test_queued_puts_are_written_in_one_batch_in_order(gated: Gated) -> None:
    metrics = Metrics()
    writer = Persister(gated, metrics)  # type: ignore[arg-type]
    writer.start()
    try:
        writer.put("instances", {"_id": "i0", "n": 0})
        assert gated.entered.wait(5)  # the writer holds its first batch
        futures = [writer.put("instances", {"_id": "i1", "n": n}, wait=True) for n in range(5)]
        writer.put_many("node_status", [{"_id": f"n{k}"} for k in range(3)])
        writer.delete("instances", "i0")
        writer.put("events", {"_id": "e1"})
        gated.gate.set()
        assert writer.flush(5)
        assert all(f is not None and f.result(1) is None for f in futures)
    finally:
        writer.stop()
    store = gated.inner
    # first the held put alone, then the 5 puts and the snapshot batch together, then
    # the delete (a barrier) and the last put
    assert gated.batches == [1, 8, 1]
    assert store.get("instances", "i1") == {"_id": "i1", "_version": 5, "n": 4}
    assert store.get("instances", "i0") is None
    assert store.count("node_status") == 3 and store.get("events", "e1") is not None
    assert metrics.counter_total("edge_cluster_status_snapshots_total") == 3


def test_a_bad_write_in_a_batch_fails_alone(gated: Gated) -> None:
    metrics = Metrics()
    writer = Persister(gated, metrics)  # type: ignore[arg-type]
    writer.start()
    try:
        writer.put("jobs", {"_id": "first"})
        assert gated.entered.wait(5)
        good = writer.put("jobs", {"_id": "a"}, wait=True)
        bad = writer.put("jobs", {"no": "id"}, wait=True)
        later = writer.put("jobs", {"_id": "b"}, wait=True)
        gated.gate.set()
        assert good is not None and bad is not None and later is not None
        assert good.result(5) is None and later.result(5) is None
        with pytest.raises(InvalidInput):
            bad.result(5)
    finally:
        writer.stop()
    assert gated.inner.count("jobs") == 3
    assert metrics.counter_total("edge_cluster_store_errors_total") == 1
    assert gated.single == 3  # the failed batch was retried one write at a time


def test_batches_are_bounded(gated: Gated) -> None:
    writer = Persister(gated, Metrics())  # type: ignore[arg-type]
    writer.start()
    try:
        writer.put("jobs", {"_id": "first"})
        assert gated.entered.wait(5)
        for k in range(MAX_DOCS + 10):
            writer.put("jobs", {"_id": f"j{k}"})
        gated.gate.set()
        assert writer.flush(10)
    finally:
        writer.stop()
    assert gated.batches[0] == 1 and max(gated.batches) <= MAX_DOCS
    assert sum(gated.batches) == MAX_DOCS + 11
    assert gated.inner.count("jobs") == MAX_DOCS + 11
