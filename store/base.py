"""The document-store contract shared by every backend.

A store holds JSON documents in named collections. Every document has a string
``_id`` and an integer ``_version`` that the store maintains: 1 on create, +1 on
every replace. Writers pass the version they read as ``expected_version`` to get
optimistic concurrency (compare-and-set) without locks; a stale write raises
:class:`VersionConflict` instead of silently overwriting someone else's change.

The validation helpers at the bottom are shared by the backends so that both
accept and reject exactly the same inputs.
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self

__all__ = [
    "ID_FIELD",
    "VERSION_FIELD",
    "InvalidInput",
    "Scalar",
    "Store",
    "StoreError",
    "VersionConflict",
]

ID_FIELD = "_id"
VERSION_FIELD = "_version"

Scalar = str | int | float | bool | None
"""Values allowed in ``where`` filters (equality)."""

ScalarKind = Literal["null", "bool", "number", "string"]

_COLLECTION_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# A field path is dot-separated segments. Letters, digits, "_" and "-" only, so that
# paths can be embedded in SQL/JSON-path literals safely; no all-digit segments,
# because MongoDB reads "a.0" as an array index and SQLite's JSON path does not.
_SEGMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_MAX_PATH_LEN = 256
_MAX_ID_LEN = 512
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_MAX_DEPTH = 64


class StoreError(Exception):
    """Any failure of the store: bad input, conflicts, backend or connection errors."""


class InvalidInput(StoreError, ValueError):
    """An argument or document the store cannot accept (a programming error)."""


class VersionConflict(StoreError):
    """A conditional write found a different version than the caller expected.

    ``expected`` is what the caller passed (0 means "must not exist"); ``actual`` is
    the version the store holds (``None`` when the document does not exist).
    """

    def __init__(self, collection: str, id: str, expected: int | None, actual: int | None) -> None:
        self.collection = collection
        self.id = id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"version conflict on {collection}/{id}: expected {_describe(expected)}, "
            f"found {_describe(actual)}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Keep the exception picklable (its __init__ takes four arguments)."""
        return (type(self), (self.collection, self.id, self.expected, self.actual))


def _describe(version: int | None) -> str:
    if version is None or version == 0:
        return "no document"
    return f"version {version}"


class Store(abc.ABC):
    """A small document store: JSON documents with optimistic versioning.

    Implementations must be safe to call from several threads of one process.
    Documents returned are fresh dicts owned by the caller.
    """

    @abc.abstractmethod
    def get(self, collection: str, id: str) -> dict[str, Any] | None:
        """Return the document with ``_id`` == id (with ``_id`` and ``_version``), or None."""

    @abc.abstractmethod
    def put(
        self, collection: str, doc: Mapping[str, Any], expected_version: int | None = None
    ) -> int:
        """Write ``doc`` (``doc["_id"]`` required) and return its new version.

        ``expected_version``: 0 = create (must not exist), n > 0 = replace only if the
        stored version is n, None = unconditional upsert. A mismatch raises
        :class:`VersionConflict`. A ``_version`` key in ``doc`` is ignored.
        """

    def put_many(self, writes: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Upsert several documents, ``(collection, doc)`` pairs, in order.

        Each write is an unconditional upsert (as ``put`` without
        ``expected_version``). This default writes them one by one; a backend may
        apply them in one transaction (SQLite: one commit, so one fsync, for all), in
        which case a failure writes none of them. For a single writer that has a
        queue of writes (the cluster's store writer).
        """
        for collection, doc in writes:
            self.put(collection, doc)

    @abc.abstractmethod
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
        """Return documents whose fields equal the ``where`` values.

        Keys of ``where`` are field paths ("spec.name"); values are scalars, compared
        with their JSON type (1 matches 1 and 1.0, never True or "1"; None matches
        null or missing). ``after=(field, value)`` keeps documents whose field is
        strictly greater than value (same type family only), for cursors. Ordered by
        ``order_by`` (default ``_id``), ties broken by ``_id`` in the same direction.
        """

    @abc.abstractmethod
    def count(self, collection: str, where: Mapping[str, Any] | None = None) -> int:
        """Return how many documents ``find(collection, where)`` would return."""

    @abc.abstractmethod
    def delete(self, collection: str, id: str, expected_version: int | None = None) -> bool:
        """Delete a document; True if one was deleted, False if there was none.

        With ``expected_version`` (>= 1) the delete only happens at that version;
        otherwise (including a missing document) it raises :class:`VersionConflict`.
        """

    @abc.abstractmethod
    def ensure_index(self, collection: str, field: str) -> None:
        """Create an index on a field path if it does not exist yet (idempotent)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""

    def __enter__(self) -> Self:
        """Use the store as a context manager that closes it on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Validation shared by the backends.
# ---------------------------------------------------------------------------


def validate_collection(name: str) -> str:
    """Check a collection name (``^[a-z][a-z0-9_]{0,62}$``): it is used in SQL."""
    if not isinstance(name, str) or not _COLLECTION_RE.match(name):
        raise InvalidInput(
            f"invalid collection name {name!r}: use 1-63 characters a-z, 0-9 and '_', "
            "starting with a letter"
        )
    return name


def validate_field(path: str) -> str:
    """Check a field path for queries, ordering and indexes ("spec.name", "_id")."""
    if path in (ID_FIELD, VERSION_FIELD):
        return path
    if not isinstance(path, str) or not path or len(path) > _MAX_PATH_LEN:
        raise InvalidInput(f"invalid field path {path!r}")
    segments = path.split(".")
    if segments[0].startswith("_"):
        raise InvalidInput(
            f"invalid field path {path!r}: top-level names starting with '_' are reserved "
            "(only _id and _version can be queried)"
        )
    for segment in segments:
        if not _SEGMENT_RE.match(segment):
            raise InvalidInput(
                f"invalid field path {path!r}: segment {segment!r} must be letters, digits, "
                "'_' or '-', not starting with a digit or '-'"
            )
    return path


def validate_id(id: Any) -> str:
    """Check a document id: a non-empty string without NUL, at most 512 characters."""
    if not isinstance(id, str) or not id or len(id) > _MAX_ID_LEN or "\x00" in id:
        raise InvalidInput(
            f"invalid document id {id!r}: need a non-empty string of at most "
            f"{_MAX_ID_LEN} characters"
        )
    return id


def validate_expected(expected: Any, *, allow_create: bool) -> int | None:
    """Check an ``expected_version`` argument (None, 0 when creating, or n >= 1)."""
    if expected is None:
        return None
    lowest = 0 if allow_create else 1
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < lowest:
        raise InvalidInput(f"invalid expected_version {expected!r}: need None or int >= {lowest}")
    return expected


def split_document(doc: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Validate a document; return its id and a deep, JSON-clean copy of its body.

    The body has no ``_id``/``_version`` (the store owns them); tuples become lists.
    Both backends store exactly this body, so they accept the same documents.
    """
    if not isinstance(doc, Mapping):
        raise InvalidInput(f"a document must be a mapping, not {type(doc).__name__}")
    if ID_FIELD not in doc:
        raise InvalidInput("document has no '_id'")
    id = validate_id(doc[ID_FIELD])
    try:
        return id, _fast_body(doc)
    except _Slow:
        pass  # something unusual (or invalid): the checks below name it
    body: dict[str, Any] = {}
    for key, value in doc.items():
        if key in (ID_FIELD, VERSION_FIELD):
            continue
        _check_key(key, ())
        if key.startswith("_"):
            raise InvalidInput(
                f"document {id!r}: field {key!r} is reserved (names starting with '_')"
            )
        body[key] = _clean_value(value, (key,))
    return id, body


class _Slow(Exception):
    """`_fast_body` met something it leaves to the full checks (`_clean_value`)."""


def _fast_key(key: Any) -> bool:
    return type(key) is str and key != "" and key[0] != "$" and "." not in key and "\x00" not in key


def _fast_body(doc: Mapping[str, Any]) -> dict[str, Any]:
    """`split_document`'s body for the common case, without tracking the path of
    each value (what only an error message needs): plain dicts, lists, tuples,
    str, bool, None, int and float of the exact types. Raises `_Slow` for anything
    else, or anything invalid, so that the full checks run and name the fault."""
    body: dict[str, Any] = {}
    for key, value in doc.items():
        if key in (ID_FIELD, VERSION_FIELD):
            continue
        if not _fast_key(key) or key[0] == "_":
            raise _Slow
        body[key] = _fast_value(value, 1)
    return body


def _fast_value(value: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise _Slow
    kind = type(value)
    if value is None or kind is str or kind is bool:
        return value
    if kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return value
        raise _Slow
    if kind is float:
        if math.isfinite(value):
            return value
        raise _Slow
    if kind is dict:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not _fast_key(key):
                raise _Slow
            out[key] = _fast_value(item, depth + 1)
        return out
    if kind is list or kind is tuple:
        return [_fast_value(item, depth + 1) for item in value]
    raise _Slow


def _check_key(key: Any, where: tuple[str, ...]) -> None:
    if not isinstance(key, str):
        raise InvalidInput(f"field names must be strings, got {key!r} at {_loc(where)}")
    if not key or key.startswith("$") or "." in key or "\x00" in key:
        raise InvalidInput(
            f"invalid field name {key!r} at {_loc(where)}: must be non-empty, "
            "without '.', NUL or a leading '$'"
        )


def _loc(where: tuple[str, ...]) -> str:
    return ".".join(where) or "top level"


def _clean_value(value: Any, where: tuple[str, ...]) -> Any:
    if len(where) > _MAX_DEPTH:
        raise InvalidInput(f"document nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidInput(f"integer at {_loc(where)} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"non-finite float at {_loc(where)} is not JSON")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            _check_key(key, where)
            out[key] = _clean_value(item, (*where, key))
        return out
    if isinstance(value, (list, tuple)):
        return [_clean_value(item, (*where, str(i))) for i, item in enumerate(value)]
    raise InvalidInput(f"value at {_loc(where)} has type {type(value).__name__}, which is not JSON")


def scalar_kind(value: Any, what: str) -> ScalarKind:
    """Classify a filter value; raise InvalidInput for non-scalars and NaN."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidInput(f"{what}: integer does not fit in 64 bits")
        return "number"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{what}: non-finite float")
        return "number"
    if isinstance(value, str):
        return "string"
    raise InvalidInput(
        f"{what}: only str, int, float, bool or None can be compared, not {type(value).__name__}"
    )


def validate_where(where: Mapping[str, Any] | None) -> list[tuple[str, Scalar, ScalarKind]]:
    """Check a ``where`` mapping; return (field, value, kind) triples."""
    if where is None:
        return []
    if not isinstance(where, Mapping):
        raise InvalidInput(f"where must be a mapping, not {type(where).__name__}")
    out: list[tuple[str, Scalar, ScalarKind]] = []
    for field, value in where.items():
        validate_field(field)
        out.append((field, value, scalar_kind(value, f"where[{field!r}]")))
    return out


def validate_after(after: tuple[str, Any] | None) -> tuple[str, Scalar, ScalarKind] | None:
    """Check an ``after=(field, value)`` cursor; the value must be a str or a number."""
    if after is None:
        return None
    if not isinstance(after, tuple) or len(after) != 2:
        raise InvalidInput(f"after must be a (field, value) tuple, not {after!r}")
    field, value = after
    validate_field(field)
    kind = scalar_kind(value, f"after[{field!r}]")
    if kind not in ("number", "string"):
        raise InvalidInput(f"after[{field!r}]: cursor value must be a string or a number")
    return field, value, kind


def validate_limit(limit: Any) -> int | None:
    """Check a ``limit`` argument (None or an int >= 0)."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidInput(f"invalid limit {limit!r}: need None or int >= 0")
    return limit
