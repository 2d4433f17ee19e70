"""SQLite backend (stdlib ``sqlite3``): the embedded default store.

Layout: one table per collection, named ``c_<collection>`` (the prefix keeps
collection names clear of SQLite's reserved ``sqlite_*`` names and of keywords)::

    CREATE TABLE c_jobs (id TEXT PRIMARY KEY, version INTEGER NOT NULL, doc TEXT NOT NULL)

``doc`` holds the JSON body without ``_id``/``_version`` (those live in their
columns). Queries on fields use ``json_extract(doc, '$."a"."b"')``; ``ensure_index``
creates an index on exactly that expression (then ``id``) so the planner uses it.

Durability: WAL journal with ``synchronous=FULL`` by default, so a write is on disk
(the WAL is fsynced) before ``put`` returns. Edge devices lose power; with
``NORMAL`` the last transactions before a power cut can vanish even though they
were acknowledged. ``?synchronous=normal`` in the URL trades that for speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from store.base import (
    ID_FIELD,
    VERSION_FIELD,
    InvalidInput,
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

__all__ = ["SYNCHRONOUS_MODES", "SQLiteStore"]

SYNCHRONOUS_MODES = ("off", "normal", "full", "extra")

_JSON_TYPES: dict[ScalarKind, str] = {
    "number": "IN ('integer', 'real')",
    "string": "= 'text'",
}


#: Files of one database: SQLite gives -wal and -shm the mode of the main file.
_DB_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _private_files(path: str) -> None:
    """Create the database file with mode 0600 and tighten existing ones to 0600.

    The store holds credentials. SQLite creates its -wal and -shm files with the mode of
    the main file, so creating that one private (before SQLite does, with the process
    umask) keeps all three private; files of an older run are tightened.
    """
    if path in ("", ":memory:") or path.startswith("file:"):
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)
    for suffix in _DB_SUFFIXES:
        name = path + suffix
        try:
            mode = os.stat(name).st_mode & 0o777
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(name, mode & 0o600)


class SQLiteStore(Store):
    """A :class:`Store` in one SQLite file (or ``:memory:``).

    Threading: ONE connection guarded by a lock, shared by all threads
    (``check_same_thread=False``). Chosen over a connection per thread because:
    an orchestrator funnels its writes through one owner anyway, so per-thread
    connections would buy little read concurrency; ``close()`` can really close
    everything (per-thread connections can only be closed by their own thread and
    leak with thread pools); and ``:memory:`` databases are per connection, so
    only a single connection gives all threads the same in-memory store. Writes
    still run in ``BEGIN IMMEDIATE`` transactions, so compare-and-set stays
    correct if another process opens the same file.
    """

    def __init__(
        self, path: str, *, synchronous: str = "full", busy_timeout_s: float = 10.0
    ) -> None:
        """Open (creating if needed) the database at ``path`` (``":memory:"`` allowed)."""
        mode = synchronous.lower()
        if mode not in SYNCHRONOUS_MODES:
            raise InvalidInput(
                f"invalid synchronous mode {synchronous!r}: use one of {SYNCHRONOUS_MODES}"
            )
        self.path = path
        self.synchronous = mode
        self._lock = threading.RLock()
        self._tables: set[str] = set()
        try:
            _private_files(path)
        except OSError as exc:
            raise StoreError(f"cannot create SQLite store {path!r}: {exc}") from exc
        try:
            conn = sqlite3.connect(
                path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {path!r}: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute(f"PRAGMA synchronous={mode.upper()}")
            conn.execute("""SELECT json_extract('{"a":1}', '$."a"')""").fetchone()
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot use SQLite store {path!r}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, synchronous={self.synchronous!r})"

    # -- plumbing ------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and map sqlite3 errors to StoreError."""
        with self._lock:
            if self._conn is None:
                raise StoreError("store is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite error on {self.path!r}: {exc}") from exc

    @contextlib.contextmanager
    def _write(self, collection: str) -> Iterator[tuple[sqlite3.Connection, str]]:
        """A write transaction (BEGIN IMMEDIATE) on the collection's table."""
        with self._locked() as conn:
            table = self._table(conn, collection)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn, table
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # also after a failed COMMIT (disk full, I/O error)
                    conn.execute("ROLLBACK")
                raise

    def _table(self, conn: sqlite3.Connection, collection: str) -> str:
        """Return the quoted table name for a collection, creating the table once."""
        validate_collection(collection)
        table = f'"c_{collection}"'
        if collection not in self._tables:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} "
                "(id TEXT PRIMARY KEY, version INTEGER NOT NULL, doc TEXT NOT NULL)"
            )
            self._tables.add(collection)
        return table

    @staticmethod
    def _row_to_doc(row: tuple[str, int, str]) -> dict[str, Any]:
        id, version, body = row
        doc: dict[str, Any] = {ID_FIELD: id, VERSION_FIELD: version}
        doc.update(json.loads(body))
        return doc

    # -- the contract --------------------------------------------------------

    def get(self, collection: str, id: str) -> dict[str, Any] | None:
        """Return one document by id, or None."""
        validate_id(id)
        with self._locked() as conn:
            table = self._table(conn, collection)
            row = conn.execute(
                f"SELECT id, version, doc FROM {table} WHERE id = ?", (id,)
            ).fetchone()
        return None if row is None else self._row_to_doc(row)

    def put(
        self, collection: str, doc: Mapping[str, Any], expected_version: int | None = None
    ) -> int:
        """Create, replace or upsert a document in one transaction; return its version."""
        id, body = split_document(doc)
        expected = validate_expected(expected_version, allow_create=True)
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        with self._write(collection) as (conn, table):
            row = conn.execute(f"SELECT version FROM {table} WHERE id = ?", (id,)).fetchone()
            actual: int | None = None if row is None else int(row[0])
            if expected is not None and (actual or 0) != expected:
                raise VersionConflict(collection, id, expected, actual)
            if actual is None:
                conn.execute(f"INSERT INTO {table} (id, version, doc) VALUES (?, 1, ?)", (id, text))
                return 1
            conn.execute(
                f"UPDATE {table} SET version = ?, doc = ? WHERE id = ?", (actual + 1, text, id)
            )
            return actual + 1

    def put_many(self, writes: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Upsert every ``(collection, doc)`` in order, in one transaction (one commit)."""
        prepared = []
        for collection, doc in writes:
            id, body = split_document(doc)
            text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            prepared.append((collection, id, text))
        if not prepared:
            return
        with self._locked() as conn:
            tables = {c: self._table(conn, c) for c, _id, _text in prepared}
            conn.execute("BEGIN IMMEDIATE")
            try:
                for collection, id, text in prepared:
                    conn.execute(
                        f"INSERT INTO {tables[collection]} (id, version, doc) VALUES (?, 1, ?) "
                        "ON CONFLICT(id) DO UPDATE SET version = version + 1, doc = excluded.doc",
                        (id, text),
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def delete(self, collection: str, id: str, expected_version: int | None = None) -> bool:
        """Delete a document, optionally only at ``expected_version``."""
        validate_id(id)
        expected = validate_expected(expected_version, allow_create=False)
        with self._write(collection) as (conn, table):
            if expected is not None:
                row = conn.execute(f"SELECT version FROM {table} WHERE id = ?", (id,)).fetchone()
                actual = None if row is None else int(row[0])
                if actual != expected:
                    raise VersionConflict(collection, id, expected, actual)
            cur = conn.execute(f"DELETE FROM {table} WHERE id = ?", (id,))
            return cur.rowcount > 0

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
        conditions, params = _conditions(where, after)
        order_expr = _field_expr(validate_field(order_by)) if order_by else "id"
        direction = "DESC" if descending else "ASC"
        order = f"{order_expr} {direction}"
        if order_expr != "id":
            order += f", id {direction}"
        n = validate_limit(limit)
        if n == 0:
            return []
        with self._locked() as conn:
            table = self._table(conn, collection)
            sql = f"SELECT id, version, doc FROM {table}{conditions} ORDER BY {order}"
            if n is not None:
                sql += " LIMIT ?"
                params.append(n)
            rows = conn.execute(sql, params).fetchall()
        return [self._row_to_doc(row) for row in rows]

    def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int:
        """Count matching documents."""
        conditions, params = _conditions(where, None)
        with self._locked() as conn:
            table = self._table(conn, collection)
            row = conn.execute(f"SELECT COUNT(*) FROM {table}{conditions}", params).fetchone()
        return int(row[0])

    def ensure_index(self, collection: str, field: str) -> None:
        """Create an index on ``(json_extract(doc, path), id)`` (idempotent).

        ``id`` is the second key so that ``ORDER BY field, id`` (find's order with its
        tie-break) and cursors are served from the index without a sort.
        """
        validate_field(field)
        if field == ID_FIELD:
            return  # the primary key
        with self._write(collection) as (conn, table):
            conn.execute(
                f'CREATE INDEX IF NOT EXISTS "ix_c_{collection}:{field}" '
                f"ON {table} ({_field_expr(field)}, id)"
            )

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _json_path(field: str) -> str:
    """'spec.name' -> '$."spec"."name"' (segments were validated: no quotes)."""
    return "$." + ".".join(f'"{segment}"' for segment in field.split("."))


def _field_expr(field: str) -> str:
    """The SQL expression for a validated field path.

    The path is a literal, not a bound parameter, so that it matches the expression
    indexes created by ensure_index (SQLite only uses an expression index when the
    query's expression is the same).
    """
    if field == ID_FIELD:
        return "id"
    if field == VERSION_FIELD:
        return "version"
    return f"json_extract(doc, '{_json_path(field)}')"


def _type_check(field: str, kind: ScalarKind) -> str | None:
    """A condition restricting a field to a JSON type family (None: no check needed).

    Without it SQLite would compare across types: json_extract returns 1 for true,
    and the JSON text of objects as strings.
    """
    if field == ID_FIELD:
        return None if kind == "string" else "0"
    if field == VERSION_FIELD:
        return None if kind == "number" else "0"
    return f"json_type(doc, '{_json_path(field)}') {_JSON_TYPES[kind]}"


def _conditions(
    where: Mapping[str, Any] | None, after: tuple[str, Any] | None
) -> tuple[str, list[Any]]:
    """Build ' WHERE ...' and its parameters from validated filters."""
    clauses: list[str] = []
    params: list[Any] = []
    for field, value, kind in validate_where(where):
        expr = _field_expr(field)
        if kind == "null":
            clauses.append(f"{expr} IS NULL")
            continue
        if kind == "bool":
            # json_extract gives 1/0 for true/false; json_type tells them from numbers.
            clauses.append(f"{expr} = ?")
            params.append(1 if value else 0)
            json_type = "true" if value else "false"
            if field in (ID_FIELD, VERSION_FIELD):
                clauses.append("0")
            else:
                clauses.append(f"json_type(doc, '{_json_path(field)}') = '{json_type}'")
            continue
        clauses.append(f"{expr} = ?")
        params.append(value)
        check = _type_check(field, kind)
        if check:
            clauses.append(check)
    cursor = validate_after(after)
    if cursor is not None:
        field, value, kind = cursor
        clauses.append(f"{_field_expr(field)} > ?")
        params.append(value)
        check = _type_check(field, kind)
        if check:
            clauses.append(check)
    if not clauses:
        return "", params
    return " WHERE " + " AND ".join(clauses), params
