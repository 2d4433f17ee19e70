"""The clusters' answers, applied: to a placement (`finish_placement(s)`: ASSIGNED, or
PENDING with the refusal kept so the next cluster is tried) and to a DELETE
(`finish_termination`).

Functions over the shared `state.RootState`; `service.RootService` is their facade
(through `placing`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Literal

from root_orchestrator import events as event_log
from root_orchestrator import lifecycle, texts, writes
from root_orchestrator.state import RootState
from root_orchestrator.steps import PlacementStep, TerminateStep
from schemas.cluster import PlaceInstanceResponse
from schemas.job import InstanceState
from schemas.root_api import ClusterRejection

__all__ = ["finish_placement", "finish_placements", "finish_termination"]

log = logging.getLogger(__name__)


def finish_placements(
    st: RootState,
    answers: list[tuple[PlacementStep, PlaceInstanceResponse | None, str | None]],
) -> list[tuple[Literal["accepted", "rejected", "gone"], ClusterRejection | None]]:
    """`finish_placement` for each (step, answer, error), under one hold of the lock."""
    with st.lock:
        return [finish_placement(st, step, resp, err) for step, resp, err in answers]


def finish_placement(
    st: RootState,
    step: PlacementStep,
    response: PlaceInstanceResponse | None,
    error: str | None = None,
) -> tuple[Literal["accepted", "rejected", "gone"], ClusterRejection | None]:
    """Record a cluster's answer to a placement (or the error that replaced it).

    Returns the outcome and, for a refusal, what the next attempt must know.
    """
    with st.lock:
        st.in_flight.discard(step.instance_id)
        inst = st.instances.get(step.instance_id)
        accepted = response is not None and response.accepted
        if inst is None or inst.state.terminal or inst.cluster_id != step.cluster_id:
            if accepted:
                st.strays.setdefault((step.cluster_id, step.instance_id), st.clock())
                writes.kick(st)
            return "gone", None
        if accepted:
            assert response is not None
            st.metrics.placements.inc("accepted")
            node = response.node_name or response.node_id or "?"
            changes: dict[str, Any] = {"assigned_at": st.clock()}
            if response.node_id:
                changes["node_id"] = response.node_id
            if response.node_name:
                changes["node_name"] = response.node_name
            if inst.pending_since is not None:
                st.metrics.scheduling_seconds.observe(max(0.0, st.clock() - inst.pending_since))
            if inst.state is InstanceState.SCHEDULED:
                lifecycle.transition(
                    st,
                    inst,
                    InstanceState.ASSIGNED,
                    f"accepted by cluster {step.cluster_name} on node {node}",
                    **changes,
                )
            else:
                writes.save_instance(st, replace(inst, **changes), inst)
            lifecycle.settle(st)
            if inst.terminate:
                writes.kick(st)
            return "accepted", None
        st.metrics.placements.inc("error" if response is None else "rejected")
        if response is not None:
            rejection = ClusterRejection(
                cluster_id=step.cluster_id,
                cluster_name=step.cluster_name,
                reasons=dict(response.reasons),
                explanation=response.explanation or texts.format_reasons(response.reasons),
            )
        else:
            rejection = ClusterRejection(
                cluster_id=step.cluster_id,
                cluster_name=step.cluster_name,
                reasons={"cluster unavailable": 1},
                explanation=texts.short(error or "no answer"),
            )
        event_log.emit(
            st,
            "scheduling.rejected",
            inst.id,
            job_id=inst.job_id,
            instance_id=inst.id,
            cluster_id=step.cluster_id,
            reason=f"cluster {step.cluster_name} refused: {rejection.explanation}",
            data={"reasons": rejection.reasons, "error": response is None},
        )
        if response is None:
            # The cluster may have taken it before the error: if it reports it
            # later, the report marks it a stray and the root deletes it there.
            log.warning("placement of %s on %s failed: %s", inst.id, step.cluster_name, error)
        if inst.terminate:
            lifecycle.transition(
                st,
                inst,
                InstanceState.TERMINATED,
                inst.terminate_reason or "terminated",
                cluster_id=None,
            )
        else:
            lifecycle.transition(
                st,
                inst,
                InstanceState.PENDING,
                f"cluster {step.cluster_name} refused: {rejection.explanation}",
                cluster_id=None,
                node_id=None,
                node_name=None,
            )
        st.refusals.setdefault(inst.id, {})[step.cluster_id] = (
            rejection,
            st.clock(),
            st.capacity_version.get(step.cluster_id, 0),
        )
        lifecycle.settle(st)
        return "rejected", rejection


def finish_termination(
    st: RootState, step: TerminateStep, ok: bool, error: str | None = None
) -> None:
    """Record the answer to a DELETE (ok: the cluster no longer runs it)."""
    with st.lock:
        if step.stray:
            if ok:
                st.strays.pop((step.cluster_id, step.instance_id), None)
                event_log.emit(
                    st,
                    "cluster.stray_deleted",
                    step.cluster_id,
                    cluster_id=step.cluster_id,
                    instance_id=step.instance_id,
                    reason=f"cluster {step.cluster_name} ran an instance the root placed "
                    "elsewhere or ended; deleted there",
                )
            return
        inst = st.instances.get(step.instance_id)
        if inst is None or inst.state.terminal or inst.cluster_id != step.cluster_id:
            return
        if ok:
            lifecycle.transition(
                st,
                inst,
                InstanceState.TERMINATED,
                inst.terminate_reason or "terminated by the root",
            )
            lifecycle.settle(st)
        else:
            log.warning("terminating %s on %s failed: %s", inst.id, step.cluster_name, error)
