"""A small document store with two backends: SQLite (embedded default) and MongoDB.

Use :func:`open_store` with a URL and program against :class:`Store`. See
``docs/store.md`` for the contract, the URL forms and the durability choices.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from store.base import InvalidInput, Store, StoreError, VersionConflict
from store.sqlite import SYNCHRONOUS_MODES, SQLiteStore

__all__ = [
    "InvalidInput",
    "SQLiteStore",
    "Store",
    "StoreError",
    "VersionConflict",
    "check_store_url",
    "open_store",
]

# "scheme:" at the start; two letters at least so that "C:\\data\\x.db" stays a path.
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_SQLITE_FORMS = (
    "sqlite:///abs/path.db, sqlite:relative/path.db, sqlite://:memory:, or a plain file path"
)


def open_store(url: str) -> Store:
    """Open the store named by ``url``.

    Accepted: ``sqlite:///abs/path.db``, ``sqlite:relative.db``, a plain file path,
    ``sqlite://:memory:`` (or ``:memory:``), each optionally followed by
    ``?synchronous=normal`` (default full); and ``mongodb://...`` or
    ``mongodb+srv://...`` (database from the URL path, default "edge").
    """
    kind, target, synchronous = _parse_url(url)
    if kind == "mongodb":
        from store.mongo import MongoStore  # imported lazily: SQLite-only boxes skip pymongo

        return MongoStore(target)
    return SQLiteStore(target, synchronous=synchronous)


def check_store_url(url: str) -> None:
    """Raise StoreError when `url` is not a store URL `open_store` accepts, without
    opening anything (for settings validation: nothing is created on disk)."""
    _parse_url(url)


def _parse_url(url: str) -> tuple[str, str, str]:
    """(``sqlite`` or ``mongodb``, the path or URL, the SQLite synchronous mode)."""
    if not isinstance(url, str) or not url.strip():
        raise StoreError("empty store URL: expected " + _SQLITE_FORMS + " or mongodb://...")
    url = url.strip()
    match = _SCHEME_RE.match(url)
    scheme = match.group(1).lower() if match else None
    if scheme in ("mongodb", "mongodb+srv"):
        return "mongodb", url, ""
    if scheme is None:
        path, options = _split_query(url, url)
    elif scheme == "sqlite":
        rest, options = _split_query(url[len("sqlite:") :], url)
        path = _sqlite_path(rest, url)
    else:
        raise StoreError(
            f"unsupported store URL scheme {scheme!r} in {url!r}: use sqlite "
            f"({_SQLITE_FORMS}) or mongodb://host[:port]/database"
        )
    unknown = set(options) - {"synchronous"}
    if unknown:
        raise StoreError(
            f"unknown SQLite store option(s) {sorted(unknown)} in {url!r}: only 'synchronous' "
            f"({'|'.join(SYNCHRONOUS_MODES)})"
        )
    synchronous = options.get("synchronous", "full")
    if synchronous.lower() not in SYNCHRONOUS_MODES:
        raise StoreError(
            f"invalid synchronous mode {synchronous!r} in {url!r}: use one of "
            f"{'|'.join(SYNCHRONOUS_MODES)}"
        )
    return "sqlite", path, synchronous


def _split_query(text: str, url: str) -> tuple[str, dict[str, str]]:
    """Split 'path?a=b' into the path and its options."""
    path, _, query = text.partition("?")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError as exc:
        raise StoreError(f"invalid options in store URL {url!r}: {exc}") from exc
    if not path:
        raise StoreError(f"no database path in store URL {url!r}: expected {_SQLITE_FORMS}")
    return path, options


def _sqlite_path(rest: str, url: str) -> str:
    """Map what follows 'sqlite:' to a filesystem path or ':memory:'."""
    if rest in ("//:memory:", ":memory:"):
        return ":memory:"
    if rest.startswith("///"):
        return rest[2:]  # sqlite:///abs/path.db -> /abs/path.db
    if rest.startswith("//"):
        raise StoreError(
            f"unsupported SQLite URL {url!r}: a host part is not allowed; expected {_SQLITE_FORMS}"
        )
    return rest  # sqlite:relative.db (or sqlite:/abs/path.db)
