"""The one shared way secrets are stored and checked (schemas/secrets.py)."""

from __future__ import annotations

import hashlib

from cluster_orchestrator import records
from schemas.secrets import digest, hash_secret, new_secret, verify_secret


def test_salted_hash_round_trip() -> None:
    secret = new_secret()
    stored = hash_secret(secret)
    assert secret not in stored and "$" in stored
    assert verify_secret(secret, stored)
    assert not verify_secret(secret + "x", stored)
    # salted: the same secret stores differently each time, and both verify
    again = hash_secret(secret)
    assert again != stored and verify_secret(secret, again)


def test_legacy_bare_digest_still_verifies() -> None:
    """Credentials an older root stored as bare SHA-256 hex keep working."""
    secret = new_secret()
    legacy = hashlib.sha256(secret.encode()).hexdigest()
    assert verify_secret(secret, legacy)
    assert not verify_secret("other", legacy)


def test_empty_or_malformed_stored_value_matches_nothing() -> None:
    for stored in ("", "nohash", "ABC" * 21 + "D", "$"):
        assert not verify_secret("", stored)
        assert not verify_secret("anything", stored)


def test_digest_is_stable_and_the_cluster_uses_the_shared_copy() -> None:
    assert digest("idem:k") == hashlib.sha256(b"idem:k").hexdigest()
    assert records.hash_secret is hash_secret and records.verify_secret is verify_secret
    assert len(new_secret()) == 43
