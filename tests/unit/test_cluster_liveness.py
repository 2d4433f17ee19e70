"""Liveness state machine of the cluster orchestrator, driven by an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_orchestrator.liveness import SILENCE_FACTOR, LivenessTracker
from schemas.node import Liveness

INTERVAL = 1.0
GRACE = 3.0


def states(transitions) -> list[tuple[Liveness, Liveness]]:
    return [(t.previous, t.current) for t in transitions]


def test_new_node_is_not_ready_until_its_first_status() -> None:
    tracker = LivenessTracker.new(100.0)
    assert tracker.state is Liveness.NOT_READY
    tr = tracker.on_status(100.5)
    assert tr is not None and (tr.previous, tr.current) == (Liveness.NOT_READY, Liveness.READY)
    assert tracker.unhealthy_for(100.5) == 0.0


def test_silent_node_becomes_not_ready_after_three_intervals_then_lost_after_grace() -> None:
    tracker = LivenessTracker.new(0.0)
    tracker.on_status(0.0)
    assert tracker.tick(2.9, INTERVAL, GRACE) == []
    assert states(tracker.tick(3.0, INTERVAL, GRACE)) == [(Liveness.READY, Liveness.NOT_READY)]
    assert tracker.unhealthy_for(4.0) == pytest.approx(1.0)
    assert tracker.tick(5.9, INTERVAL, GRACE) == []
    assert states(tracker.tick(6.0, INTERVAL, GRACE)) == [(Liveness.NOT_READY, Liveness.LOST)]
    assert tracker.tick(100.0, INTERVAL, GRACE) == []


def test_late_tick_reports_both_transitions_in_order() -> None:
    tracker = LivenessTracker.new(0.0)
    tracker.on_status(0.0)
    got = states(tracker.tick(50.0, INTERVAL, GRACE))
    assert got == [(Liveness.READY, Liveness.NOT_READY), (Liveness.NOT_READY, Liveness.LOST)]


def test_presence_offline_is_immediate_and_grace_counts_from_it() -> None:
    tracker = LivenessTracker.new(0.0)
    tracker.on_status(10.0)
    tr = tracker.on_presence(False, 10.2, "connection lost")
    assert tr is not None and tr.current is Liveness.OFFLINE and tr.reason == "connection lost"
    assert tracker.tick(13.1, INTERVAL, GRACE) == []
    assert states(tracker.tick(13.2, INTERVAL, GRACE)) == [(Liveness.OFFLINE, Liveness.LOST)]


def test_offline_while_not_ready_keeps_the_earlier_start() -> None:
    tracker = LivenessTracker.new(0.0)
    tracker.on_status(0.0)
    tracker.tick(3.0, INTERVAL, GRACE)  # NOT_READY since 3.0
    tracker.on_presence(False, 4.0)
    assert tracker.state is Liveness.OFFLINE
    assert states(tracker.tick(6.0, INTERVAL, GRACE)) == [(Liveness.OFFLINE, Liveness.LOST)]


def test_presence_online_alone_does_not_make_ready() -> None:
    tracker = LivenessTracker.new(0.0)
    assert tracker.on_presence(True, 1.0) is None
    assert tracker.state is Liveness.NOT_READY


@pytest.mark.parametrize("start", [Liveness.NOT_READY, Liveness.OFFLINE, Liveness.LOST])
def test_status_brings_any_node_back(start: Liveness) -> None:
    tracker = LivenessTracker.new(0.0, start)
    tr = tracker.on_status(1.0)
    assert tr is not None and tr.current is Liveness.READY
    assert tracker.unhealthy_since is None


def test_offline_on_lost_node_changes_nothing() -> None:
    tracker = LivenessTracker.new(0.0, Liveness.LOST)
    assert tracker.on_presence(False, 1.0) is None
    assert tracker.state is Liveness.LOST


def test_zero_grace_loses_at_once() -> None:
    tracker = LivenessTracker.new(0.0)
    tracker.on_status(0.0)
    tracker.on_presence(False, 1.0)
    assert states(tracker.tick(1.0, INTERVAL, 0.0)) == [(Liveness.OFFLINE, Liveness.LOST)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["status", "offline", "online", "tick"]),
            st.floats(min_value=0.0, max_value=5.0),
        ),
        max_size=40,
    )
)
def test_invariants_under_any_sequence(events) -> None:
    """READY iff unhealthy_since is None; LOST only after grace; READY needs a recent
    status once time has been applied."""
    now = 0.0
    tracker = LivenessTracker.new(now)
    last_status: float | None = None
    for kind, delta in events:
        now += delta
        if kind == "status":
            tracker.on_status(now)
            last_status = now
        elif kind == "offline":
            tracker.on_presence(False, now)
        elif kind == "online":
            tracker.on_presence(True, now)
        else:
            for tr in tracker.tick(now, INTERVAL, GRACE):
                if tr.current is Liveness.LOST:
                    assert tracker.unhealthy_since is not None
                    assert now - tracker.unhealthy_since >= GRACE
        assert (tracker.state is Liveness.READY) == (tracker.unhealthy_since is None)
        if tracker.state is Liveness.READY:
            assert last_status is not None
            if kind == "tick":  # time only acts through ticks
                assert now - last_status < SILENCE_FACTOR * INTERVAL


def test_loaded_node_is_held_from_lost_until_the_restart_grace_ends() -> None:
    tracker = LivenessTracker.new(0.0, hold=30.0)
    assert tracker.state is Liveness.NOT_READY and tracker.held(29.9)
    tracker.on_presence(False, 0.1, "engine stopped")  # an old retained goodbye
    assert tracker.state is Liveness.OFFLINE
    assert tracker.tick(29.9, INTERVAL, GRACE) == []  # beyond GRACE, still held
    assert not tracker.held(30.0)
    assert states(tracker.tick(30.0, INTERVAL, GRACE)) == [(Liveness.OFFLINE, Liveness.LOST)]


def test_first_status_ends_the_hold_and_normal_rules_apply() -> None:
    tracker = LivenessTracker.new(0.0, hold=30.0)
    tracker.on_status(1.0)
    assert not tracker.held(2.0)
    tracker.tick(4.0, INTERVAL, GRACE)  # NOT_READY since 4.0
    assert states(tracker.tick(7.0, INTERVAL, GRACE)) == [(Liveness.NOT_READY, Liveness.LOST)]


def test_a_node_stored_lost_is_not_held() -> None:
    tracker = LivenessTracker.new(0.0, Liveness.LOST, hold=30.0)
    assert tracker.state is Liveness.LOST and not tracker.held(1.0)
