"""The typed work the root hands its reconciler: cluster calls to make and when to look again."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.cluster import PlaceInstanceRequest

__all__ = ["PassWork", "PlacementStep", "TerminateStep"]


@dataclass(frozen=True, slots=True)
class PlacementStep:
    """A decided placement the reconciler must send: POST `request` to `url`."""

    instance_id: str
    cluster_id: str
    cluster_name: str
    url: str
    token: str | None
    request: PlaceInstanceRequest
    pinned: bool


@dataclass(frozen=True, slots=True)
class PassWork:
    """What a reconcile pass found to do: DELETEs to send, instances to place (ids,
    highest priority first), and in how many seconds the state needs another look
    (a rollout's health window or progress deadline ends, or a cluster's silence
    crosses a liveness threshold; None: nothing is due)."""

    terminations: list[TerminateStep]
    placements: list[str]
    wake_in: float | None = None


@dataclass(frozen=True, slots=True)
class TerminateStep:
    """An instance to DELETE on a cluster (`stray`: the root does not want it there)."""

    instance_id: str
    cluster_id: str
    cluster_name: str
    url: str
    token: str | None
    stray: bool
