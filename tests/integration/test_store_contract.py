"""One contract suite for every Store backend.

Each test runs against SQLite (a temporary file and ``:memory:``) and against every
MongoDB-wire server the session has (nx-27017 always; ``EDGE_TEST_MONGO_URL`` and a
Docker ``mongo`` container when available). Stores are opened through
``open_store`` with a URL, as the programs do.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from store import InvalidInput, SQLiteStore, Store, StoreError, VersionConflict, open_store
from tests.fixtures.mongo import MONGO_PARAMS, mongo_url_for

BACKENDS = [
    pytest.param("sqlite-file", id="sqlite-file"),
    pytest.param("sqlite-memory", id="sqlite-memory"),
    *[pytest.param(f"mongo-{p.values[0]}", id=f"mongo-{p.id}") for p in MONGO_PARAMS],
]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    kind = str(request.param)
    if kind == "sqlite-file":
        url = f"sqlite://{tmp_path / 'store.db'}"  # sqlite:///abs/path
    elif kind == "sqlite-memory":
        url = "sqlite://:memory:"
    else:
        url = mongo_url_for(request, kind.removeprefix("mongo-"))
    s = open_store(url)
    yield s
    s.close()


def ids(docs: list[dict[str, Any]]) -> list[str]:
    return [d["_id"] for d in docs]


# -- create, get, replace, conflicts ------------------------------------------------


def test_get_missing_returns_none(store: Store) -> None:
    assert store.get("jobs", "nope") is None


def test_create_returns_version_1_and_get_returns_id_and_version(store: Store) -> None:
    assert store.put("jobs", {"_id": "j1", "name": "a"}, expected_version=0) == 1
    assert store.get("jobs", "j1") == {"_id": "j1", "_version": 1, "name": "a"}


def test_replace_at_expected_version_increments_and_replaces_whole_document(
    store: Store,
) -> None:
    store.put("jobs", {"_id": "j1", "name": "a", "old": True}, expected_version=0)
    assert store.put("jobs", {"_id": "j1", "name": "b"}, expected_version=1) == 2
    assert store.put("jobs", {"_id": "j1", "name": "c"}, expected_version=2) == 3
    assert store.get("jobs", "j1") == {"_id": "j1", "_version": 3, "name": "c"}


def test_stale_write_raises_version_conflict_and_keeps_the_newer_document(store: Store) -> None:
    store.put("jobs", {"_id": "j1", "n": 1}, expected_version=0)
    store.put("jobs", {"_id": "j1", "n": 2}, expected_version=1)
    with pytest.raises(VersionConflict) as info:
        store.put("jobs", {"_id": "j1", "n": 99}, expected_version=1)
    err = info.value
    assert (err.collection, err.id, err.expected, err.actual) == ("jobs", "j1", 1, 2)
    assert "jobs/j1" in str(err) and "expected version 1" in str(err)
    assert "found version 2" in str(err)
    assert isinstance(err, StoreError)
    assert store.get("jobs", "j1") == {"_id": "j1", "_version": 2, "n": 2}


def test_create_twice_conflicts(store: Store) -> None:
    store.put("jobs", {"_id": "j1", "n": 1}, expected_version=0)
    with pytest.raises(VersionConflict) as info:
        store.put("jobs", {"_id": "j1", "n": 2}, expected_version=0)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert "expected no document" in str(info.value)
    assert store.get("jobs", "j1") == {"_id": "j1", "_version": 1, "n": 1}


def test_replace_of_missing_document_conflicts_with_actual_none(store: Store) -> None:
    with pytest.raises(VersionConflict) as info:
        store.put("jobs", {"_id": "ghost"}, expected_version=3)
    assert (info.value.expected, info.value.actual) == (3, None)
    assert "found no document" in str(info.value)
    assert store.get("jobs", "ghost") is None


def test_unconditional_upsert_creates_then_replaces(store: Store) -> None:
    assert store.put("jobs", {"_id": "j1", "n": 1}) == 1
    assert store.put("jobs", {"_id": "j1", "n": 2}) == 2
    assert store.get("jobs", "j1") == {"_id": "j1", "_version": 2, "n": 2}


def test_put_many_upserts_in_order_across_collections(store: Store) -> None:
    store.put("jobs", {"_id": "j1", "n": 0})
    store.put_many(
        [
            ("jobs", {"_id": "j1", "n": 1}),
            ("events", {"_id": "e1", "kind": "x"}),
            ("jobs", {"_id": "j2", "n": 1}),
            ("jobs", {"_id": "j1", "n": 2}),
        ]
    )
    store.put_many([])
    assert store.get("jobs", "j1") == {"_id": "j1", "_version": 3, "n": 2}
    assert store.get("jobs", "j2") == {"_id": "j2", "_version": 1, "n": 1}
    assert store.get("events", "e1") == {"_id": "e1", "_version": 1, "kind": "x"}


def test_put_many_rejects_invalid_input_clearly(store: Store) -> None:
    with pytest.raises(InvalidInput):
        store.put_many([("jobs", {"_id": "ok"}), ("jobs", {"name": "no id"})])


def test_sqlite_put_many_writes_nothing_of_an_invalid_batch(tmp_path: Path) -> None:
    """Invalid input anywhere in a batch: nothing of it is written."""
    s = open_store(f"sqlite://{tmp_path / 'store.db'}")
    try:
        with pytest.raises(InvalidInput):
            s.put_many([("jobs", {"_id": "a"}), ("jobs", {"_id": "b", "bad": float("nan")})])
        assert s.get("jobs", "a") is None
    finally:
        s.close()


def test_version_in_document_is_ignored_and_input_is_not_mutated(store: Store) -> None:
    doc = {"_id": "j1", "_version": 42, "spec": {"tags": ["a"]}}
    assert store.put("jobs", doc, expected_version=0) == 1
    assert doc == {"_id": "j1", "_version": 42, "spec": {"tags": ["a"]}}
    got = store.get("jobs", "j1")
    assert got is not None and got["_version"] == 1
    got["spec"]["tags"].append("mutated")  # the caller owns returned documents
    assert store.get("jobs", "j1") == {"_id": "j1", "_version": 1, "spec": {"tags": ["a"]}}


def test_read_modify_write_round_trip(store: Store) -> None:
    store.put("jobs", {"_id": "j1", "replicas": 1}, expected_version=0)
    doc = store.get("jobs", "j1")
    assert doc is not None
    doc["replicas"] = 3
    assert store.put("jobs", doc, expected_version=doc["_version"]) == 2


def test_collections_are_separate(store: Store) -> None:
    store.put("jobs", {"_id": "x", "kind": "job"})
    store.put("nodes", {"_id": "x", "kind": "node"})
    assert store.get("jobs", "x") == {"_id": "x", "_version": 1, "kind": "job"}
    assert store.get("nodes", "x") == {"_id": "x", "_version": 1, "kind": "node"}
    assert store.count("jobs") == store.count("nodes") == 1


# -- delete --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exists", "expected_version", "outcome"),
    [
        pytest.param(True, None, True, id="existing-unconditional"),
        pytest.param(False, None, False, id="missing-unconditional"),
        pytest.param(True, 2, True, id="existing-right-version"),
        pytest.param(True, 1, ("conflict", 1, 2), id="existing-stale-version"),
        pytest.param(False, 1, ("conflict", 1, None), id="missing-with-version"),
    ],
)
def test_delete(store: Store, exists: bool, expected_version: int | None, outcome: Any) -> None:
    if exists:
        store.put("jobs", {"_id": "j1", "n": 1}, expected_version=0)
        store.put("jobs", {"_id": "j1", "n": 2}, expected_version=1)
    if isinstance(outcome, tuple):
        with pytest.raises(VersionConflict) as info:
            store.delete("jobs", "j1", expected_version=expected_version)
        _, want_expected, want_actual = outcome
        assert (info.value.expected, info.value.actual) == (want_expected, want_actual)
        assert (store.get("jobs", "j1") is not None) == exists  # nothing was deleted
    else:
        assert store.delete("jobs", "j1", expected_version=expected_version) is outcome
        assert store.get("jobs", "j1") is None


def test_delete_then_create_starts_again_at_version_1(store: Store) -> None:
    store.put("jobs", {"_id": "j1"})
    store.put("jobs", {"_id": "j1"})
    assert store.delete("jobs", "j1", expected_version=2)
    assert store.put("jobs", {"_id": "j1"}, expected_version=0) == 1


# -- find, count, order, cursors ------------------------------------------------------

NODES = [
    {"_id": "n1", "state": "ready", "arch": "arm64", "cpu": 4, "spec": {"zone": "a", "gpu": True}},
    {"_id": "n2", "state": "ready", "arch": "amd64", "cpu": 8, "spec": {"zone": "b", "gpu": False}},
    {"_id": "n3", "state": "lost", "arch": "arm64", "cpu": 2, "spec": {"zone": "a", "gpu": False}},
    {"_id": "n4", "state": "ready", "arch": "arm64", "cpu": 4.0, "spec": {"zone": "b"}},
    {"_id": "n5", "state": "not_ready", "arch": "arm64", "cpu": 1, "spec": None},
]


@pytest.fixture
def nodes(store: Store) -> Store:
    for doc in reversed(NODES):  # insertion order must not matter
        store.put("nodes", doc, expected_version=0)
    return store


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        pytest.param(None, ["n1", "n2", "n3", "n4", "n5"], id="everything"),
        pytest.param({}, ["n1", "n2", "n3", "n4", "n5"], id="empty-filter"),
        pytest.param({"state": "ready"}, ["n1", "n2", "n4"], id="top-level"),
        pytest.param({"state": "ready", "arch": "arm64"}, ["n1", "n4"], id="two-fields"),
        pytest.param({"spec.zone": "a"}, ["n1", "n3"], id="dotted"),
        pytest.param({"spec.zone": "b", "state": "ready"}, ["n2", "n4"], id="dotted-and-top"),
        pytest.param({"spec.gpu": True}, ["n1"], id="bool-true"),
        pytest.param({"spec.gpu": False}, ["n2", "n3"], id="bool-false"),
        pytest.param({"cpu": 4}, ["n1", "n4"], id="int-matches-float"),
        pytest.param({"cpu": 4.0}, ["n1", "n4"], id="float-matches-int"),
        pytest.param({"cpu": 1}, ["n5"], id="int-not-true"),
        pytest.param({"cpu": True}, [], id="true-not-int"),
        pytest.param({"cpu": "4"}, [], id="string-not-number"),
        pytest.param({"spec.gpu": None}, ["n4", "n5"], id="none-matches-missing-and-null"),
        pytest.param({"spec": None}, ["n5"], id="none-matches-null"),
        pytest.param({"state": "gone"}, [], id="no-match"),
        pytest.param({"_id": "n3"}, ["n3"], id="by-id"),
        pytest.param({"_version": 1, "arch": "amd64"}, ["n2"], id="by-version"),
        pytest.param({"missing.deeply.nested": "x"}, [], id="missing-path"),
    ],
)
def test_find_by_equality(nodes: Store, where: dict[str, Any] | None, expected: list[str]) -> None:
    assert ids(nodes.find("nodes", where)) == expected
    assert nodes.count("nodes", where) == len(expected)


def test_find_returns_whole_documents(nodes: Store) -> None:
    assert nodes.find("nodes", {"_id": "n1"}) == [{**NODES[0], "_version": 1}]


@pytest.mark.parametrize(
    ("order_by", "descending", "expected"),
    [
        pytest.param(None, False, ["n1", "n2", "n3", "n4", "n5"], id="default-by-id"),
        pytest.param(None, True, ["n5", "n4", "n3", "n2", "n1"], id="by-id-descending"),
        pytest.param("cpu", False, ["n5", "n3", "n1", "n4", "n2"], id="by-number-ties-by-id"),
        pytest.param("cpu", True, ["n2", "n4", "n1", "n3", "n5"], id="by-number-descending"),
        pytest.param("state", False, ["n3", "n5", "n1", "n2", "n4"], id="by-string"),
        pytest.param("_id", True, ["n5", "n4", "n3", "n2", "n1"], id="explicit-id"),
    ],
)
def test_find_order(
    nodes: Store, order_by: str | None, descending: bool, expected: list[str]
) -> None:
    assert ids(nodes.find("nodes", order_by=order_by, descending=descending)) == expected


def test_find_order_by_dotted_field_with_filter(store: Store) -> None:
    for i, name in enumerate(["delta", "alpha", "charlie", "bravo"]):
        store.put("jobs", {"_id": f"j{i}", "kind": "svc", "spec": {"name": name}})
    store.put("jobs", {"_id": "other", "kind": "batch", "spec": {"name": "aaa"}})
    found = store.find("jobs", {"kind": "svc"}, order_by="spec.name")
    assert [d["spec"]["name"] for d in found] == ["alpha", "bravo", "charlie", "delta"]


@pytest.mark.parametrize(("limit", "expected"), [(0, []), (2, ["n1", "n2"]), (99, None)])
def test_find_limit(nodes: Store, limit: int, expected: list[str] | None) -> None:
    want = expected if expected is not None else ["n1", "n2", "n3", "n4", "n5"]
    assert ids(nodes.find("nodes", limit=limit)) == want


def test_after_cursor_pages_through_events_without_gaps_or_repeats(store: Store) -> None:
    for seq in range(1, 24):
        store.put("events", {"_id": f"e{seq:03d}", "seq": seq, "node": f"n{seq % 3}"})
    seen: list[int] = []
    last = 0
    for _ in range(10):
        page = store.find("events", order_by="seq", limit=5, after=("seq", last))
        if not page:
            break
        seen.extend(d["seq"] for d in page)
        last = page[-1]["seq"]
    assert seen == list(range(1, 24))


def test_after_cursor_with_filter_and_string_field(store: Store) -> None:
    for seq in range(1, 11):
        store.put("events", {"_id": f"e{seq:03d}", "seq": seq, "node": f"n{seq % 2}"})
    page = store.find("events", {"node": "n1"}, order_by="seq", after=("seq", 4))
    assert [d["seq"] for d in page] == [5, 7, 9]
    assert ids(store.find("events", after=("_id", "e007"))) == ["e008", "e009", "e010"]
    assert ids(store.find("events", after=("_id", "e010"))) == []


def test_after_compares_only_within_a_type_family(store: Store) -> None:
    values: list[Any] = [1, 2.5, 3, "2", "z", True, None, {"x": 1}]
    for i, value in enumerate(values):
        store.put("things", {"_id": f"t{i}", "v": value})
    assert ids(store.find("things", after=("v", 2))) == ["t1", "t2"]
    assert ids(store.find("things", after=("v", "1"))) == ["t3", "t4"]


def test_count(store: Store) -> None:
    assert store.count("jobs") == 0
    for i in range(7):
        store.put("jobs", {"_id": f"j{i}", "even": i % 2 == 0})
    assert store.count("jobs") == 7
    assert store.count("jobs", {"even": True}) == 4
    assert store.count("jobs", {"even": False}) == 3


def test_ensure_index_is_idempotent_and_queries_still_work(store: Store) -> None:
    for field in ("state", "spec.zone", "_id", "_version", "state"):
        store.ensure_index("nodes", field)
    for doc in NODES:
        store.put("nodes", doc)
    store.ensure_index("nodes", "spec.zone")  # again, now with data
    store.ensure_index("empty_collection", "state")
    assert ids(store.find("nodes", {"spec.zone": "b"})) == ["n2", "n4"]
    assert ids(store.find("nodes", {"state": "ready"}, order_by="cpu")) == ["n1", "n4", "n2"]


# -- values ---------------------------------------------------------------------------

NESTED: dict[str, Any] = {
    "_id": "deep",
    "int": 7,
    "negative": -3,
    "big": 2**62,
    "float": 0.1,
    "whole_float": 2.0,
    "true": True,
    "false": False,
    "none": None,
    "empty_list": [],
    "empty_dict": {},
    "list": [1, "two", 3.5, None, True, [4, [5]], {"k": "v"}],
    "spec": {"resources": {"cpu": 0.5, "memory_mb": 512}, "labels": {"edge-zone": "x"}},
    "quote": 'he said "hi"\n\ttab \\ backslash',
}


def test_json_round_trip_of_nested_values(store: Store) -> None:
    store.put("jobs", NESTED, expected_version=0)
    got = store.get("jobs", "deep")
    assert got == {**NESTED, "_version": 1}
    assert got is not None
    assert type(got["whole_float"]) is float and type(got["int"]) is int
    assert type(got["true"]) is bool
    assert ids(store.find("jobs", {"spec.resources.memory_mb": 512})) == ["deep"]
    assert ids(store.find("jobs", {"spec.labels.edge-zone": "x"})) == ["deep"]
    assert ids(store.find("jobs", {"big": 2**62})) == ["deep"]


def test_tuples_are_stored_as_lists(store: Store) -> None:
    store.put("jobs", {"_id": "t", "pair": (1, (2, 3))})
    got = store.get("jobs", "t")
    assert got is not None and got["pair"] == [1, [2, 3]]


def test_unicode_ids_and_values(store: Store) -> None:
    docs = {"héllo": "wörld", "日本": "東京", "emoji-😀": "🚀 ok", "plain": "ascii"}
    for id, value in docs.items():
        store.put("names", {"_id": id, "value": value, "nested": {"ключ": value}})
    for id, value in docs.items():
        assert store.get("names", id) == {
            "_id": id,
            "_version": 1,
            "value": value,
            "nested": {"ключ": value},
        }
    assert ids(store.find("names", {"value": "東京"})) == ["日本"]
    assert ids(store.find("names")) == sorted(docs)  # code point order


# -- concurrency ----------------------------------------------------------------------


def test_concurrent_compare_and_set_increments_lose_no_update(store: Store) -> None:
    threads_n, increments = 8, 25
    store.put("counters", {"_id": "c", "value": 0}, expected_version=0)
    conflicts = [0] * threads_n
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def worker(index: int) -> None:
        try:
            start.wait(timeout=30)
            for _ in range(increments):
                while True:
                    doc = store.get("counters", "c")
                    assert doc is not None
                    doc["value"] += 1
                    try:
                        store.put("counters", doc, expected_version=doc["_version"])
                        break
                    except VersionConflict:
                        conflicts[index] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "workers did not finish in time"
    assert errors == []
    final = store.get("counters", "c")
    total = threads_n * increments
    assert final == {"_id": "c", "_version": total + 1, "value": total}


def test_concurrent_creates_of_one_id_have_exactly_one_winner(store: Store) -> None:
    threads_n = 8
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(threads_n)

    def worker(index: int) -> None:
        start.wait(timeout=30)
        try:
            store.put("leases", {"_id": "leader", "holder": index}, expected_version=0)
            result = "won"
        except VersionConflict:
            result = "lost"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["lost"] * (threads_n - 1) + ["won"]
    doc = store.get("leases", "leader")
    assert doc is not None and doc["_version"] == 1


def test_concurrent_unconditional_upserts_all_count(store: Store) -> None:
    threads_n, writes = 6, 10
    start = threading.Barrier(threads_n)
    versions: list[int] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        start.wait(timeout=30)
        for i in range(writes):
            v = store.put("status", {"_id": "s", "writer": index, "i": i})
            with lock:
                versions.append(v)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(versions) == list(range(1, threads_n * writes + 1))  # each write its own


# -- invalid input --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(lambda s: s.get("Jobs", "x"), "collection name", id="uppercase-collection"),
        pytest.param(lambda s: s.get("jobs;drop", "x"), "collection name", id="sql-collection"),
        pytest.param(lambda s: s.get("", "x"), "collection name", id="empty-collection"),
        pytest.param(lambda s: s.get("jobs", ""), "document id", id="empty-id"),
        pytest.param(lambda s: s.put("jobs", {"a": 1}), "no '_id'", id="missing-id"),
        pytest.param(lambda s: s.put("jobs", {"_id": 5}), "document id", id="int-id"),
        pytest.param(lambda s: s.put("jobs", {"_id": "x", "_secret": 1}), "reserved", id="res"),
        pytest.param(lambda s: s.put("jobs", {"_id": "x", "a.b": 1}), "'.'", id="dot-key"),
        pytest.param(lambda s: s.put("jobs", {"_id": "x", "$set": 1}), "'$'", id="dollar-key"),
        pytest.param(lambda s: s.put("jobs", {"_id": "x", "v": {1, 2}}), "not JSON", id="set"),
        pytest.param(
            lambda s: s.put("jobs", {"_id": "x", "v": float("nan")}), "non-finite", id="nan"
        ),
        pytest.param(lambda s: s.put("jobs", {"_id": "x", "v": 2**64}), "64 bits", id="huge-int"),
        pytest.param(
            lambda s: s.put("jobs", {"_id": "x"}, expected_version=-1),
            "expected_version",
            id="negative-version",
        ),
        pytest.param(
            lambda s: s.delete("jobs", "x", expected_version=0),
            "expected_version",
            id="delete-version-0",
        ),
        pytest.param(lambda s: s.find("jobs", {"spec": {"a": 1}}), "compared", id="dict-where"),
        pytest.param(lambda s: s.find("jobs", {"a'b": 1}), "field path", id="quote-in-path"),
        pytest.param(lambda s: s.find("jobs", {"_secret": 1}), "reserved", id="reserved-path"),
        pytest.param(lambda s: s.find("jobs", {"a.0": 1}), "field path", id="numeric-segment"),
        pytest.param(lambda s: s.find("jobs", order_by="x y"), "field path", id="bad-order"),
        pytest.param(lambda s: s.find("jobs", limit=-1), "limit", id="negative-limit"),
        pytest.param(lambda s: s.find("jobs", after=("seq", None)), "cursor", id="null-after"),
        pytest.param(lambda s: s.ensure_index("jobs", "a..b"), "field path", id="bad-index"),
    ],
)
def test_invalid_input_is_rejected_clearly(store: Store, call: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as info:
        call(store)
    assert isinstance(info.value, StoreError) and isinstance(info.value, ValueError)


def test_closed_store_raises_store_error(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get("jobs", "x")
    store.close()  # idempotent


# -- open_store URLs (no backend parameter) --------------------------------------------


@pytest.mark.parametrize(
    ("make_url", "expected_path"),
    [
        pytest.param(lambda d: f"sqlite://{d}/a.db", "{d}/a.db", id="sqlite-abs"),
        pytest.param(lambda d: "sqlite:rel.db", "rel.db", id="sqlite-relative"),
        pytest.param(lambda d: f"{d}/plain.db", "{d}/plain.db", id="plain-path"),
        pytest.param(lambda d: "plain-relative.db", "plain-relative.db", id="plain-relative"),
        pytest.param(lambda d: "sqlite://:memory:", ":memory:", id="memory"),
        pytest.param(lambda d: ":memory:", ":memory:", id="bare-memory"),
    ],
)
def test_open_store_sqlite_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_url: Any, expected_path: str
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths land in the temporary directory
    with open_store(make_url(tmp_path)) as s:
        assert isinstance(s, SQLiteStore)
        assert s.path == expected_path.format(d=tmp_path)
        s.put("jobs", {"_id": "x"})
    if expected_path != ":memory:":
        assert Path(expected_path.format(d=tmp_path)).exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("postgres://db/x", "unsupported store URL scheme 'postgres'", id="scheme"),
        pytest.param("", "empty store URL", id="empty"),
        pytest.param("sqlite://host/x.db", "host part", id="sqlite-host"),
        pytest.param("sqlite:x.db?synchronus=off", "unknown SQLite store option", id="typo"),
        pytest.param("sqlite:x.db?synchronous=maybe", "synchronous mode", id="bad-mode"),
        pytest.param("sqlite:", "no database path", id="no-path"),
    ],
)
def test_open_store_rejects_bad_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match=message):
        open_store(url)


def test_open_store_mongodb_takes_database_from_url_path() -> None:
    from store.mongo import MongoStore

    # MongoClient connects lazily: no server is needed to check the parsing.
    with open_store("mongodb://127.0.0.1:1/site_a?serverSelectionTimeoutMS=100") as s:
        assert isinstance(s, MongoStore) and s.database_name == "site_a"
    with open_store("mongodb://127.0.0.1:1") as s:
        assert isinstance(s, MongoStore) and s.database_name == "edge"


def test_mongodb_unreachable_server_is_a_store_error() -> None:
    with (
        open_store("mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=100") as s,
        pytest.raises(StoreError, match="MongoDB error"),
    ):
        s.get("jobs", "x")


# -- SQLite specifics -----------------------------------------------------------------


def _pragma(s: SQLiteStore, name: str) -> Any:
    with s._locked() as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


@pytest.mark.parametrize(
    ("query", "synchronous"), [("", 2), ("?synchronous=normal", 1), ("?synchronous=FULL", 2)]
)
def test_sqlite_is_wal_and_synchronous_full_by_default(
    tmp_path: Path, query: str, synchronous: int
) -> None:
    with open_store(f"sqlite://{tmp_path}/s.db{query}") as s:
        assert isinstance(s, SQLiteStore)
        assert _pragma(s, "journal_mode") == "wal"
        assert _pragma(s, "synchronous") == synchronous


def test_sqlite_queries_use_the_expression_index(tmp_path: Path) -> None:
    from store.sqlite import _conditions, _field_expr

    with open_store(f"sqlite://{tmp_path}/s.db") as s:
        assert isinstance(s, SQLiteStore)
        s.ensure_index("events", "spec.seq")
        for i in range(20):
            s.put("events", {"_id": f"e{i}", "spec": {"seq": i}})
        expr = _field_expr("spec.seq")
        equality, eq_params = _conditions({"spec.seq": 3}, None)
        cursor, cursor_params = _conditions(None, ("spec.seq", 3))
        queries = [
            (f"SELECT id FROM c_events{equality}", eq_params),
            (f"SELECT id FROM c_events{cursor} ORDER BY {expr} ASC, id ASC", cursor_params),
            (f"SELECT id FROM c_events ORDER BY {expr} DESC, id DESC LIMIT 3", []),
        ]
        with s._locked() as conn:
            for sql, params in queries:
                plan = " | ".join(
                    str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)
                )
                assert "USING INDEX ix_c_events:spec.seq" in plan, (sql, plan)
                assert "TEMP B-TREE" not in plan, (sql, plan)  # no sort step


def test_sqlite_file_is_plain_sqlite_one_table_per_collection(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_store(str(path)) as s:
        s.put("jobs", {"_id": "j1", "name": "a"})
        s.put("nodes", {"_id": "n1"})
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"c_jobs", "c_nodes"} <= tables
        assert conn.execute("SELECT id, version, doc FROM c_jobs").fetchall() == [
            ("j1", 1, '{"name":"a"}')
        ]
    finally:
        conn.close()
