"""MongoDB backend (pymongo).

Documents are stored as they are, with ``_id`` and ``_version`` as ordinary fields.

Only a small, boring subset of MongoDB is used on purpose: ``insert_one``,
``find``/``find_one``, ``count_documents``, ``delete_one``, ``create_index`` and
``replace_one`` whose filter is ``{_id, _version: expected}`` (optimistic
concurrency: the replace matches nothing if someone else wrote first). No update
operators (``$set``, ``$push``, ``$setOnInsert``...), no ``upsert=True``, no
transactions. Reasons: the MongoDB-wire server used in tests (nx-27017, over SQLite)
mishandles several update operators, and the same restriction keeps the backend
portable to other MongoDB-compatible servers (FerretDB, DocumentDB, ...). An
unconditional upsert is "read the version, then insert or replace-at-that-version",
retried when another writer gets in between.

Filters are plain documents, one operator document per field: ``{"$eq": v,
"$type": t}`` for a value, ``{"$eq": None}`` for null, ``"$gt"`` added for a cursor.
In real MongoDB the explicit ``$type`` changes nothing for scalar fields
(comparisons are already type-bracketed), but nx-27017 needs the shapes chosen
here to agree with MongoDB and the SQLite backend (found while writing the
contract tests, nx-27017 0.8.1):

- it compares across types: ``{"v": 1}`` matches ``true``; ``{"v": {"$gt": 1}}``
  matches strings, objects and arrays -> every comparison carries ``$type``;
- ``count_documents`` (an aggregation ``$match``) disagrees with ``find`` for
  ``{"v": {"$gt": 1}}`` and for the bare ``{"v": None}`` -> ``$type`` and ``$eq``;
- ``{"v": None}`` inside ``$and`` matches nothing -> no ``$and``, ever;
- ``$type`` with a list of types fails with a server error -> single aliases.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import pymongo
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError
from pymongo.uri_parser import parse_uri

from store.base import (
    ID_FIELD,
    VERSION_FIELD,
    ScalarKind,
    Store,
    StoreError,
    VersionConflict,
    split_document,
    validate_after,
    validate_collection,
    validate_expected,
    validate_field,
    validate_id,
    validate_limit,
    validate_where,
)

__all__ = ["DEFAULT_DATABASE", "MongoStore"]

DEFAULT_DATABASE = "edge"
_UPSERT_ATTEMPTS = 100
_TYPE_ALIASES: dict[ScalarKind, str] = {"number": "number", "string": "string", "bool": "bool"}

Document = dict[str, Any]


class MongoStore(Store):
    """A :class:`Store` in one MongoDB database; a collection per collection.

    pymongo's client is thread-safe and pools connections, so one instance serves
    all threads.
    """

    def __init__(self, url: str, *, database: str | None = None, **client_options: Any) -> None:
        """Connect lazily to ``url``; the database is ``database``, the URL path, or "edge"."""
        try:
            parsed = parse_uri(url)
            self.database_name = database or parsed.get("database") or DEFAULT_DATABASE
            self._client: MongoClient[Document] = MongoClient(url, **client_options)
            self._db = self._client[self.database_name]
        except (PyMongoError, ValueError) as exc:
            raise StoreError(f"invalid MongoDB URL or options: {exc}") from exc
        self._closed = False

    def __repr__(self) -> str:
        return f"MongoStore(database={self.database_name!r})"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Map pymongo errors (connection, server) to StoreError."""
        if self._closed:
            raise StoreError("store is closed")
        try:
            yield
        except PyMongoError as exc:
            raise StoreError(f"MongoDB error: {exc}") from exc

    def _coll(self, collection: str) -> Collection[Document]:
        return self._db[validate_collection(collection)]

    def _version_of(self, coll: Collection[Document], id: str) -> int | None:
        found = coll.find_one({ID_FIELD: id}, projection={VERSION_FIELD: True})
        return None if found is None else int(found[VERSION_FIELD])

    # -- the contract --------------------------------------------------------

    def get(self, collection: str, id: str) -> dict[str, Any] | None:
        """Return one document by id, or None."""
        validate_id(id)
        coll = self._coll(collection)
        with self._errors():
            return coll.find_one({ID_FIELD: id})

    def put(
        self, collection: str, doc: Mapping[str, Any], expected_version: int | None = None
    ) -> int:
        """Insert or compare-and-replace a document; return its new version."""
        id, body = split_document(doc)
        expected = validate_expected(expected_version, allow_create=True)
        coll = self._coll(collection)
        with self._errors():
            if expected is not None:
                if self._write_at(coll, id, body, expected):
                    return expected + 1
                raise VersionConflict(collection, id, expected, self._version_of(coll, id))
            for _ in range(_UPSERT_ATTEMPTS):
                current = self._version_of(coll, id) or 0
                if self._write_at(coll, id, body, current):
                    return current + 1
        raise StoreError(
            f"upsert of {collection}/{id} gave up after {_UPSERT_ATTEMPTS} concurrent changes"
        )

    @staticmethod
    def _write_at(coll: Collection[Document], id: str, body: Document, current: int) -> bool:
        """Write version current+1 if the stored version is ``current`` (0 = absent)."""
        new_doc: Document = {ID_FIELD: id, VERSION_FIELD: current + 1, **body}
        if current == 0:
            try:
                coll.insert_one(new_doc)
            except DuplicateKeyError:
                return False
            return True
        result = coll.replace_one({ID_FIELD: id, VERSION_FIELD: current}, new_doc)
        return result.matched_count == 1

    def delete(self, collection: str, id: str, expected_version: int | None = None) -> bool:
        """Delete a document, optionally only at ``expected_version``."""
        validate_id(id)
        expected = validate_expected(expected_version, allow_create=False)
        coll = self._coll(collection)
        with self._errors():
            if expected is None:
                return coll.delete_one({ID_FIELD: id}).deleted_count == 1
            if coll.delete_one({ID_FIELD: id, VERSION_FIELD: expected}).deleted_count == 1:
                return True
            raise VersionConflict(collection, id, expected, self._version_of(coll, id))

    def find(
        self,
        collection: str,
        where: Mapping[str, Any] | None = None,
        *,
        order_by: str | None = None,
        descending: bool = False,
        limit: int | None = None,
        after: tuple[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Return matching documents; see :meth:`Store.find`."""
        query = _filter(where, after)
        direction = pymongo.DESCENDING if descending else pymongo.ASCENDING
        key = validate_field(order_by) if order_by else ID_FIELD
        sort = [(key, direction)]
        if key != ID_FIELD:
            sort.append((ID_FIELD, direction))
        n = validate_limit(limit)
        coll = self._coll(collection)
        if query is None or n == 0:  # (pymongo would read limit(0) as "no limit")
            return []
        with self._errors():
            cursor = coll.find(query, sort=sort)
            if n is not None:
                cursor = cursor.limit(n)
            return list(cursor)

    def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int:
        """Count matching documents."""
        query = _filter(where, None)
        coll = self._coll(collection)
        if query is None:
            return 0
        with self._errors():
            return coll.count_documents(query)

    def ensure_index(self, collection: str, field: str) -> None:
        """Create an ascending index on a field path (idempotent)."""
        validate_field(field)
        if field == ID_FIELD:
            return
        coll = self._coll(collection)
        with self._errors():
            coll.create_index([(field, pymongo.ASCENDING)])

    def close(self) -> None:
        """Close the client's connections (idempotent)."""
        if not self._closed:
            self._closed = True
            self._client.close()


def _filter(where: Mapping[str, Any] | None, after: tuple[str, Any] | None) -> Document | None:
    """Build a MongoDB filter from validated equality terms and an optional cursor.

    One operator document per field, combined by the implicit AND of a plain filter
    (no ``$and``: nx-27017 drops matches for ``{f: None}`` inside ``$and``). Null is
    ``{"$eq": None}`` (null or missing), because nx-27017's ``count_documents``
    disagrees with ``find`` for the bare ``{f: None}`` form. Returns None when no
    document can match (a cursor on a field that must equal a value of another type).
    """
    query: Document = {}
    kinds: dict[str, ScalarKind] = {}
    for field, value, kind in validate_where(where):
        kinds[field] = kind
        if kind == "null":
            query[field] = {"$eq": None}
        else:
            query[field] = {"$eq": value, "$type": _TYPE_ALIASES[kind]}
    cursor = validate_after(after)
    if cursor is not None:
        field, value, kind = cursor
        if field in query:
            if kinds[field] != kind:
                return None  # e.g. where v == "x" and v > 3: nothing in either backend
            query[field]["$gt"] = value
        else:
            query[field] = {"$gt": value, "$type": _TYPE_ALIASES[kind]}
    return query
