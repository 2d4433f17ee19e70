"""Refusals both orchestrators raise and their APIs map to HTTP statuses.

One copy for root (`root_orchestrator.errors`) and cluster
(`cluster_orchestrator.errors`): `NotFound` (404) and `Conflict` (409) under the common
base `ServiceError`. Refusals only one side has (the root's `Invalid`, `Unauthorized`,
`IdentityRefused`; the cluster's join refusals, `NodeBusy`) stay with that side.
"""

from __future__ import annotations

__all__ = ["Conflict", "NotFound", "ServiceError"]


class ServiceError(Exception):
    """Base of the errors the APIs map to HTTP statuses."""


class NotFound(ServiceError, LookupError):
    """The named object (job, cluster, node, instance, token) does not exist (404).

    A `LookupError` too, as the cluster's `NotFound` always was."""


class Conflict(ServiceError):
    """The request contradicts the current state (409)."""
