"""Refusals of the cluster core, mapped to HTTP answers by the routes.

`NotFound` (the node or instance does not exist) is the one `schemas.errors` shares
with the root orchestrator."""

from __future__ import annotations

from schemas.errors import NotFound

__all__ = ["Forbidden", "JoinUnauthorized", "NodeBusy", "NodeRemoved", "NotFound"]


class Forbidden(PermissionError):
    """A join presented a node id with a wrong or missing node secret."""

    reason = "node_secret_wrong"


class NodeRemoved(Forbidden):
    """A join presented the id (and secret) of a node the operator removed."""

    reason = "node_removed"


class JoinUnauthorized(PermissionError):
    """A join that needs an accepted join token came without one.

    `reason` is ``join_token`` for a new node and ``node_unknown`` for a node id this
    cluster does not know (it would be admitted under that id with a join token).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class NodeBusy(RuntimeError):
    """The node cannot be removed: instances are still assigned to it."""
