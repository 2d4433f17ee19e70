"""The errors the root's service functions raise; the API maps each to an HTTP status."""

from __future__ import annotations

from typing import Any

from schemas.errors import Conflict, NotFound, ServiceError

__all__ = ["Conflict", "IdentityRefused", "Invalid", "NotFound", "ServiceError", "Unauthorized"]


class Invalid(ServiceError):
    """A request whose fields do not validate (422); `errors` name each field."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__(
            "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        )


class Unauthorized(ServiceError):
    """Unknown cluster or wrong credential on a report (401)."""


class IdentityRefused(ServiceError):
    """A registration named a known cluster id with a wrong credential (403).

    Distinct from a wrong registration token (401, checked before the service): the
    cluster then knows its stored identity is no longer valid and registers afresh,
    instead of dropping its identity because of a token typo.
    """
