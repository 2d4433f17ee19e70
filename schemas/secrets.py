"""One way to make, store and check secrets, shared by the root and the clusters.

A secret that is only ever *verified* (a cluster's credential at the root, a node's
identity secret at its cluster, a name-bound registration token) is stored as
``salt$sha256(salt + secret)``: a stolen store file gives nothing to present. The
secrets are 256-bit random (`new_secret`), so one salted SHA-256 is enough; a slow
password hash would only cost CPU on every report.

`verify_secret` also accepts a bare 64-hex SHA-256 digest, the form the root stored
cluster credentials in before this module existed, so an upgraded root keeps
accepting the clusters it registered.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

__all__ = ["digest", "hash_secret", "new_secret", "verify_secret"]

_LEGACY_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def new_secret() -> str:
    """A fresh random secret: 32 bytes (256 bits), URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def digest(text: str) -> str:
    """Unsalted SHA-256 hex of `text`: a stable key for lookups (e.g. idempotency keys),
    not a way to store a secret (use `hash_secret`)."""
    return hashlib.sha256(text.encode()).hexdigest()


def hash_secret(secret: str) -> str:
    """The stored form of a secret that is only verified: ``salt$hex`` (salted SHA-256)."""
    salt = secrets.token_hex(8)
    return f"{salt}${hashlib.sha256((salt + secret).encode()).hexdigest()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Constant-time check of a presented secret against `hash_secret` output (or a
    legacy bare SHA-256 digest). An empty or malformed `stored` never matches."""
    salt, sep, expected = stored.partition("$")
    if sep:
        candidate = hashlib.sha256((salt + secret).encode()).hexdigest()
        return hmac.compare_digest(candidate, expected)
    if _LEGACY_DIGEST.match(stored):
        return hmac.compare_digest(digest(secret), stored)
    return False
