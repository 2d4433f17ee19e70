"""Who may register which cluster: registration grants and name-bound tokens.

Pure helpers for `RootService.register_cluster` (which owns the state and the lock):

* a *shared* registration token (settings) registers new names, and re-registers a
  cluster that proves its ``cluster_id`` and ``credential``. It never takes over the
  record of a known name: that needs an operator's approval;
* an operator's approval is an identity reset of the cluster (``POST
  /api/v1/clusters/{id}/reset-identity``: the old credential stops working, the next
  registration of the name takes the record with a new credential), or an unused
  *name-bound* token (``POST /api/v1/registration-tokens``), which registers its one
  name once and afterwards only re-registers the cluster it registered.

A name-bound token is ``<token id>.<secret>``; only its salted hash is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from root_orchestrator.records import ClusterRecord, RegistrationTokenRecord
from schemas.common import new_id
from schemas.root_api import RegistrationTokenView
from schemas.secrets import new_secret

__all__ = [
    "RegistrationGrant",
    "new_token",
    "takeover_refusal",
    "token_id_of",
    "token_view",
]


@dataclass(frozen=True, slots=True)
class RegistrationGrant:
    """The registration token a request presented: shared (`token_id` None) or bound."""

    token_id: str | None = None


def new_token() -> tuple[str, str]:
    """(token id, token) for a new name-bound registration token."""
    token_id = new_id("rt")
    return token_id, f"{token_id}.{new_secret()}"


def token_id_of(token: str) -> str | None:
    """The token id a name-bound token starts with (None if it has no such shape)."""
    token_id, sep, secret = token.partition(".")
    if not sep or not secret or not token_id.startswith("rt") or len(token_id) > 64:
        return None
    return token_id


def token_view(rec: RegistrationTokenRecord, now: float) -> RegistrationTokenView:
    """What the operator API shows of a token (never the token or its hash)."""
    return RegistrationTokenView(
        id=rec.id,
        name=rec.name,
        created_at=rec.created_at,
        expires_at=rec.expires_at,
        used_by=rec.used_by,
        used_at=rec.used_at,
        expired=rec.used_by is None and rec.expires_at is not None and now > rec.expires_at,
    )


def takeover_refusal(name: str, holder: ClusterRecord) -> str:
    """The 409 text for a registration that would take over a known cluster's record."""
    return (
        f"cluster name {name!r} is registered as cluster {holder.id} "
        f"({holder.liveness.value}); that cluster re-registers with its cluster_id and "
        "credential. A new identity for the name needs an operator: `edgectl clusters "
        f"reset-identity {name}` (POST /api/v1/clusters/{holder.id}/reset-identity), or "
        f"register with a token bound to the name (POST /api/v1/registration-tokens)"
    )
