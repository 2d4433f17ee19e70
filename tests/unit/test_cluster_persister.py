"""The persister's coalescing of queued writes (a real SQLite store on disk)."""

from __future__ import annotations

from pathlib import Path

from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.persister import Persister, _Op, coalesce
from store import open_store


def put(collection: str, id: str, n: int) -> _Op:
    return _Op("put", collection, ({"_id": id, "n": n},))


def test_a_later_write_of_the_same_document_replaces_the_earlier_ones() -> None:
    batch = [put("i", "a", 1), put("e", "x", 1), put("i", "a", 2), put("e", "y", 1)]
    out = coalesce(batch)
    assert [(op.collection, op.docs[0]["_id"], op.docs[0]["n"]) for op in out] == [
        ("e", "x", 1),
        ("i", "a", 2),
        ("e", "y", 1),
    ]


def test_a_delete_is_the_last_word_and_nothing_moves_across_a_wait() -> None:
    from concurrent.futures import Future

    flush = _Op("flush", done=Future())
    batch = [put("i", "a", 1), flush, put("i", "a", 2), _Op("delete", "i", id="a")]
    out = coalesce(batch)
    assert [op.kind for op in out] == ["put", "flush", "delete"]  # a before the flush stays


def test_the_store_ends_with_the_newest_version(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    metrics = Metrics()
    persister = Persister(store, metrics)
    for n in range(50):  # queued before the writer starts: one batch
        persister.put("instances", {"_id": "i1", "n": n})
        persister.put("events", {"_id": f"e{n}", "n": n})
    persister.start()
    assert persister.flush(10)
    doc = store.get("instances", "i1")
    assert doc is not None and doc["n"] == 49
    assert len(store.find("events")) == 50
    assert metrics.counter("edge_cluster_store_writes_coalesced_total") == 49
    persister.stop()
    store.close()
