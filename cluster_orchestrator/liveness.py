"""Node liveness as a pure state machine over an injected clock (DESIGN.md section 5).

Rules, with ``interval`` = the status interval and ``grace`` = the lost grace:

* a status message makes a node READY (it is alive and told us its capacity);
* presence ``offline`` (the node's last will, or its orderly goodbye) makes it OFFLINE
  at once;
* no status for ``3 x interval`` makes a READY node NOT_READY; the node has been
  unhealthy since the moment its status became overdue;
* a node unhealthy (NOT_READY or OFFLINE) for ``grace`` seconds is LOST;
* presence ``online`` alone does not make a node READY: capacity is only known from a
  status, which follows within one interval;
* a node loaded from the store by a restarted orchestrator is *held* until
  ``lost_not_before`` (the restart grace): it is unhealthy and not schedulable, but it
  cannot become LOST, and its instances are not moved, before it had a fair chance to
  report (Nomad gives nodes a fresh, longer heartbeat TTL after a leader failover for
  the same reason). Its first status ends the hold.

Times are monotonic seconds of the orchestrator's clock (receipt times), never the
node's own timestamps, so skewed device clocks cannot confuse liveness.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.node import Liveness

__all__ = ["SILENCE_FACTOR", "LivenessTracker", "Transition"]

#: A node is NOT_READY after this many status intervals without a status.
SILENCE_FACTOR = 3.0


@dataclass(frozen=True, slots=True)
class Transition:
    """A liveness change: from, to, when (monotonic) and why."""

    previous: Liveness
    current: Liveness
    at: float
    reason: str


@dataclass(slots=True)
class LivenessTracker:
    """The liveness of one node. All methods take ``now`` (monotonic seconds)."""

    state: Liveness = Liveness.NOT_READY
    last_status_at: float | None = None
    unhealthy_since: float | None = None
    #: no LOST (and no rescheduling of its instances) before this time; None: no hold
    lost_not_before: float | None = None
    #: when the node last became READY (None: not READY)
    ready_since: float | None = None

    @classmethod
    def new(
        cls, now: float, state: Liveness = Liveness.NOT_READY, *, hold: float = 0.0
    ) -> LivenessTracker:
        """A tracker for a node that was just created or loaded (unhealthy from ``now``).

        `hold` > 0 holds a node that is not LOST for that many seconds (see the module
        docstring: the restart grace of a loaded node).
        """
        if state is Liveness.READY:
            return cls(state=state, last_status_at=now, unhealthy_since=None, ready_since=now)
        held = now + hold if hold > 0 and state is not Liveness.LOST else None
        return cls(state=state, last_status_at=None, unhealthy_since=now, lost_not_before=held)

    def held(self, now: float) -> bool:
        """True while the node may not become LOST nor lose its instances (restart grace)."""
        return self.lost_not_before is not None and now < self.lost_not_before

    def _move(self, new: Liveness, now: float, reason: str) -> Transition | None:
        if new is self.state:
            return None
        previous = self.state
        self.state = new
        if new is Liveness.READY:
            self.unhealthy_since = None
            self.ready_since = now
        else:
            self.ready_since = None
            if previous is Liveness.READY:
                self.unhealthy_since = now
        return Transition(previous, new, now, reason)

    def on_status(self, now: float) -> Transition | None:
        """A status arrived: the node is alive and READY."""
        self.last_status_at = now
        self.lost_not_before = None
        return self._move(Liveness.READY, now, "status received")

    def on_presence(self, online: bool, now: float, reason: str = "") -> Transition | None:
        """Presence changed. Offline is immediate; online waits for the next status."""
        if online:
            return None
        if self.state in (Liveness.OFFLINE, Liveness.LOST):
            return None
        # NOT_READY -> OFFLINE keeps the start of the unhealthy period (see _move)
        return self._move(Liveness.OFFLINE, now, reason or "presence offline")

    def tick(self, now: float, interval: float, grace: float) -> list[Transition]:
        """Advance time: READY -> NOT_READY when silent, NOT_READY/OFFLINE -> LOST after grace.

        Returns the transitions in order (both, when a late tick crosses both limits).
        """
        out: list[Transition] = []
        if self.state is Liveness.READY:
            last = self.last_status_at if self.last_status_at is not None else now
            overdue_at = last + SILENCE_FACTOR * interval
            if now < overdue_at:
                return out
            self.state = Liveness.NOT_READY
            self.unhealthy_since = overdue_at
            self.ready_since = None
            out.append(
                Transition(
                    Liveness.READY, Liveness.NOT_READY, now, f"no status for {now - last:.1f}s"
                )
            )
        if self.state in (Liveness.NOT_READY, Liveness.OFFLINE):
            if self.unhealthy_since is None:
                self.unhealthy_since = now
            since = self.unhealthy_since
            if now - since >= grace and not self.held(now):
                previous = self.state
                self.state = Liveness.LOST
                out.append(
                    Transition(previous, Liveness.LOST, now, f"unhealthy for {now - since:.1f}s")
                )
        return out

    def unhealthy_for(self, now: float) -> float:
        """Seconds the node has been unhealthy (0 when READY)."""
        if self.state is Liveness.READY or self.unhealthy_since is None:
            return 0.0
        return max(0.0, now - self.unhealthy_since)
