"""The clusters resource: registration and its tokens, identity resets, authentication,
reports (instance changes, missing instances), endpoints for logs and node actions.

Functions over the shared `state.RootState`; `service.RootService` is their facade.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace
from typing import Any

from pydantic import SecretStr, ValidationError

from root_orchestrator import events as event_log
from root_orchestrator import lifecycle, lookups, texts, views, writes
from root_orchestrator.errors import Conflict, IdentityRefused, NotFound, Unauthorized
from root_orchestrator.logs import LogTarget
from root_orchestrator.models import (
    ClusterView,
    RegistrationTokenCreated,
    RegistrationTokenList,
    RegistrationTokenView,
)
from root_orchestrator.records import (
    INSTANCES,
    REGISTRATION_TOKENS,
    ClusterRecord,
    InstanceRecord,
    RegistrationTokenRecord,
)
from root_orchestrator.registration import (
    RegistrationGrant,
    new_token,
    takeover_refusal,
    token_id_of,
    token_view,
)
from root_orchestrator.state import (
    MISSING_GRACE_S,
    RootState,
)
from schemas.cluster import (
    ClusterLiveness,
    ClusterRegistration,
    ClusterRegistrationResponse,
    ClusterReport,
    InstanceChange,
)
from schemas.job import InstanceState
from schemas.node import InferenceStats
from schemas.secrets import hash_secret, new_secret, verify_secret

log = logging.getLogger(__name__)


def registration_grant(st: RootState, token: str) -> RegistrationGrant | None:
    """What a presented registration token allows: a shared token (settings), a
    name-bound one, or None (unknown: 401). Unauthorized for a known bound token
    that expired unused, so the message can say so."""
    if st.settings.registration_token_ok(token):
        return RegistrationGrant()
    token_id = token_id_of(token)
    rec = st.reg_tokens.get(token_id) if token_id else None
    if rec is None or not verify_secret(token, rec.token_hash):
        return None
    if rec.used_by is None and rec.expires_at is not None and st.clock() > rec.expires_at:
        raise Unauthorized(
            f"registration token {rec.id} for cluster name {rec.name!r} expired unused; "
            "ask an operator for a new one (POST /api/v1/registration-tokens)"
        )
    return RegistrationGrant(token_id=rec.id)


def register_cluster(
    st: RootState, reg: ClusterRegistration, grant: RegistrationGrant | None = None
) -> ClusterRegistrationResponse:
    """Register a cluster, or re-register one that proves its id with its credential.

    A new name gets a new id and credential (only its hash is kept). A cluster that
    sends its `cluster_id` and `credential` keeps both. A known name is never taken
    over without an operator's approval (see `root_orchestrator.registration`):
    Conflict (409) otherwise. IdentityRefused (403) for a known id with a wrong
    credential; Unauthorized (401) for a name-bound token used for another name or,
    once used, for another cluster. `grant` None: a shared registration token.
    """
    grant = grant or RegistrationGrant()
    with st.lock:
        since = writes.mark(st)
        now = st.clock()
        bound = None
        if grant.token_id is not None:
            bound = _check_bound_token(st, grant.token_id, reg)
        old: ClusterRecord | None = None
        credential: str | None = None
        cluster_id = ""
        if reg.cluster_id is not None:
            old = st.clusters.get(reg.cluster_id)
            if old is not None:
                given = reg.credential.get_secret_value() if reg.credential else ""
                if not verify_secret(given, old.credential_hash):
                    st.metrics.registrations.inc("refused_identity")
                    raise IdentityRefused(
                        f"wrong credential for cluster id {reg.cluster_id}: register "
                        "afresh (without cluster_id)"
                    )
                credential = given
            cluster_id = reg.cluster_id
        same_name = next(
            (c for c in st.clusters.values() if c.name == reg.name and c.id != cluster_id),
            None,
        )
        took_over: str | None = None
        if same_name is not None:
            reset = same_name.identity_reset_until
            if old is None and reset is not None and now <= reset:
                took_over = "identity reset by an operator"
            elif old is None and bound is not None and bound.used_by is None:
                took_over = f"registration token {bound.id} bound to the name"
            elif old is not None:
                st.metrics.registrations.inc("refused_takeover")
                raise Conflict(f"cluster name {reg.name!r} is used by {same_name.id}")
            else:
                st.metrics.registrations.inc("refused_takeover")
                log.warning(
                    "refused a registration of cluster name %r from %s: the name belongs "
                    "to cluster %s (%s) and no operator approved a new identity",
                    reg.name,
                    reg.url,
                    same_name.id,
                    same_name.liveness.value,
                )
                raise Conflict(takeover_refusal(reg.name, same_name))
            old, cluster_id = same_name, same_name.id
        if not cluster_id:
            cluster_id = "c" + secrets.token_hex(8)
        if credential is None:
            credential = new_secret()
        token = reg.api_token.get_secret_value() if reg.api_token else None
        rec = ClusterRecord(
            id=cluster_id,
            name=reg.name,
            url=str(reg.url).rstrip("/"),
            credential_hash=hash_secret(credential),
            registered_at=old.registered_at if old else now,
            liveness=ClusterLiveness.READY,
            liveness_since=now
            if old is None or old.liveness is not ClusterLiveness.READY
            else old.liveness_since,
            location=reg.location,
            labels=dict(reg.labels),
            api_token=token,
            reason="registered",
            last_report_at=old.last_report_at if old else None,
            report=old.report if old else None,
            identity_reset_until=None if took_over or old is None else old.identity_reset_until,
            version=old.version if old else 0,
        )
        writes.save_cluster(st, rec, old)
        if bound is not None and bound.used_by is None:
            _save_reg_token(st, replace(bound, used_by=cluster_id, used_at=now), bound)
        st.seen_at[cluster_id] = now
        how = "re-registered" if old else "registered"
        if took_over:
            how = f"registered with a new identity ({took_over})"
        result = "new_identity" if took_over else ("reregistered" if old else "new")
        st.metrics.registrations.inc(result)
        event_log.emit(
            st,
            "cluster.registered",
            cluster_id,
            cluster_id=cluster_id,
            state=ClusterLiveness.READY.value,
            reason=f"{how} from {rec.url}",
            data={
                "name": rec.name,
                "url": rec.url,
                "labels": rec.labels,
                "new_identity": took_over is not None,
            },
        )
        if old is not None and old.liveness is not ClusterLiveness.READY:
            event_log.emit(
                st,
                "cluster.liveness",
                cluster_id,
                cluster_id=cluster_id,
                state=ClusterLiveness.READY.value,
                reason="re-registered",
                data={"from": old.liveness.value},
            )
        mark = writes.mark(st)
    writes.durable(st, since, mark)  # the credential is stored before it goes out
    writes.kick(st)
    return ClusterRegistrationResponse(
        cluster_id=cluster_id,
        credential=SecretStr(credential),
        report_interval_s=st.settings.report_interval,
    )


def _check_bound_token(
    st: RootState, token_id: str, reg: ClusterRegistration
) -> RegistrationTokenRecord:
    """The bound token of a registration, if it may register `reg` (else Unauthorized)."""
    bound = st.reg_tokens.get(token_id)
    if bound is None:
        st.metrics.registrations.inc("refused_token")
        raise Unauthorized("the registration token was deleted")
    if bound.name != reg.name:
        st.metrics.registrations.inc("refused_token")
        raise Unauthorized(
            f"this registration token only registers cluster name {bound.name!r}, not {reg.name!r}"
        )
    if bound.used_by is not None and reg.cluster_id != bound.used_by:
        st.metrics.registrations.inc("refused_token")
        raise Unauthorized(
            f"this registration token was used by cluster {bound.used_by}; it now only "
            "re-registers that cluster (with its cluster_id and credential)"
        )
    return bound


def _save_reg_token(
    st: RootState, new: RegistrationTokenRecord, old: RegistrationTokenRecord | None
) -> RegistrationTokenRecord:
    new = replace(new, version=(old.version if old else 0) + 1)
    st.persister.put(REGISTRATION_TOKENS, new.id, new)
    st.reg_tokens[new.id] = new
    return new


def reset_identity(st: RootState, ref: str, ttl_s: float) -> ClusterView:
    """An operator's approval of a new identity for a cluster (by id or name).

    The cluster's credential stops working now, and the next registration of its
    name within `ttl_s` takes the record over (same id, jobs and history) with a
    new credential. For a cluster that lost its stored identity (new disk), or
    whose credential may have leaked.
    """
    with st.lock:
        since = writes.mark(st)
        rec = lookups.cluster_by_ref(st, ref)
        if rec is None:
            raise NotFound(f"no cluster {texts.shown(ref)}")
        now = st.clock()
        new = replace(rec, credential_hash="", identity_reset_until=now + ttl_s)
        new = writes.save_cluster(st, new, rec)
        event_log.emit(
            st,
            "cluster.identity_reset",
            rec.id,
            cluster_id=rec.id,
            state=rec.liveness.value,
            reason=f"identity of cluster {rec.name} reset by an operator: the next "
            f"registration of the name within {ttl_s:g} s takes it over",
            data={"name": rec.name, "until": now + ttl_s},
        )
        view = views.cluster_view(st, new)
        mark = writes.mark(st)
    writes.durable(st, since, mark)
    return view


def create_registration_token(
    st: RootState, name: str, ttl_s: float | None
) -> RegistrationTokenCreated:
    """A registration token bound to one cluster name; the token is returned once."""
    with st.lock:
        since = writes.mark(st)
        now = st.clock()
        token_id, token = new_token()
        rec = RegistrationTokenRecord(
            id=token_id,
            name=name,
            token_hash=hash_secret(token),
            created_at=now,
            expires_at=now + ttl_s if ttl_s is not None else None,
        )
        rec = _save_reg_token(st, rec, None)
        event_log.emit(
            st,
            "cluster.registration_token",
            token_id,
            reason=f"registration token {token_id} created for cluster name {name}",
            data={"name": name, "expires_at": rec.expires_at},
        )
        mark = writes.mark(st)
    writes.durable(st, since, mark)
    return RegistrationTokenCreated(**token_view(rec, now).model_dump(), token=token)


def list_registration_tokens(st: RootState) -> RegistrationTokenList:
    """Every name-bound registration token (without the tokens)."""
    with st.lock:
        now = st.clock()
        recs = sorted(st.reg_tokens.values(), key=lambda r: (r.created_at, r.id))
        return RegistrationTokenList(tokens=[token_view(r, now) for r in recs])


def delete_registration_token(st: RootState, token_id: str) -> RegistrationTokenView:
    """Revoke a name-bound registration token (the cluster it registered keeps its
    credential, but can no longer re-register with this token)."""
    with st.lock:
        since = writes.mark(st)
        rec = st.reg_tokens.get(token_id)
        if rec is None:
            raise NotFound(f"no registration token {texts.shown(token_id)}")
        st.persister.delete(REGISTRATION_TOKENS, token_id)
        del st.reg_tokens[token_id]
        event_log.emit(
            st,
            "cluster.registration_token",
            token_id,
            reason=f"registration token {token_id} for cluster name {rec.name} deleted",
            data={"name": rec.name, "deleted": True},
        )
        view = token_view(rec, st.clock())
        mark = writes.mark(st)
    writes.durable(st, since, mark)
    return view


def authenticate_cluster(st: RootState, cluster_id: str, credential: str) -> bool:
    """True if `credential` is the one issued to `cluster_id`.

    Without the lock: records are immutable and replaced whole, and reading one
    from the dict is atomic, so a report does not queue for the lock twice.
    """
    rec = st.clusters.get(cluster_id)
    expected = rec.credential_hash if rec else hash_secret(new_secret())
    return verify_secret(credential, expected) and rec is not None


def apply_report(st: RootState, cluster_id: str, report: ClusterReport) -> ClusterLiveness:
    """Take a cluster's aggregated capacity and instance changes."""
    with st.lock:
        since = writes.mark(st)
        old = st.clusters.get(cluster_id)
        if old is None:
            raise Unauthorized("unknown cluster")
        now = st.clock()
        st.metrics.reports.inc("true" if report.full else "false")
        st.seen_at[cluster_id] = now
        newer = old.report is None or report.ts >= old.report.ts or report.seq == 0
        rec = replace(
            old,
            last_report_at=now,
            report=report if newer else old.report,
            liveness=ClusterLiveness.READY,
            liveness_since=now if old.liveness is not ClusterLiveness.READY else old.liveness_since,
            reason="reporting",
        )
        # The capacity part of a report is volatile (the next report replaces it,
        # and a restarted root gives every cluster a fresh grace period), so the
        # record is written when its liveness or reason changes and otherwise at
        # most once per report_interval, not on every report (reports come with
        # every change of an instance). Instance changes are written as always.
        saved = st.cluster_saved_at.get(cluster_id)
        if (
            old.liveness is not ClusterLiveness.READY
            or old.reason != rec.reason
            or saved is None
            or now - saved >= st.settings.report_interval
        ):
            rec = writes.save_cluster(st, rec, old)
        else:
            rec = replace(rec, version=old.version)
            st.clusters[cluster_id] = rec
        if old.liveness is not ClusterLiveness.READY:
            event_log.emit(
                st,
                "cluster.liveness",
                cluster_id,
                cluster_id=cluster_id,
                state=ClusterLiveness.READY.value,
                reason="reporting again",
                data={"from": old.liveness.value},
            )
        reserved = st.reservations.get(cluster_id, {})
        for change in report.instances:
            reserved.pop(change.instance_id, None)
            _apply_change(st, rec, change)
        if report.full:
            _check_missing(st, rec, report, now)
        lifecycle.settle(st)
        wake = bool(st.strays or st.pending_ids or st.to_terminate)
        grew = old.report is None or texts.capacity_grew(old.report, report)
        if grew:
            st.capacity_version[cluster_id] = st.capacity_version.get(cluster_id, 0) + 1
        mark = writes.mark(st)
    writes.durable(st, since, mark)  # the cluster drops what it reported once we answer
    if wake and (grew or old.liveness is not ClusterLiveness.READY or st.strays):
        writes.kick(st)
    return ClusterLiveness.READY


def _apply_change(st: RootState, cluster: ClusterRecord, change: InstanceChange) -> None:
    inst = st.instances.get(change.instance_id)
    key = (cluster.id, change.instance_id)
    wanted_here = inst is not None and inst.cluster_id == cluster.id and not inst.state.terminal
    if not wanted_here:
        if not change.state.terminal:
            st.strays.setdefault(key, st.clock())
        else:
            st.strays.pop(key, None)
        return
    assert inst is not None
    take_inference(st, change)
    if change.ts < inst.cluster_ts:
        return  # older than what we already applied
    state = change.state
    if state is InstanceState.PENDING:
        state = InstanceState.SCHEDULED  # the cluster has it but no node yet
    changes: dict[str, Any] = {"cluster_ts": change.ts}
    if change.node_id is not None:
        changes["node_id"] = change.node_id
        node_name = change.data.get("node_name")
        if isinstance(node_name, str):
            changes["node_name"] = node_name
    if change.exit_code is not None:
        changes["exit_code"] = change.exit_code
    node_restarts = change.data.get("restarts")
    if isinstance(node_restarts, int) and node_restarts > inst.node_restarts:
        changes["node_restarts"] = node_restarts
    if inst.assigned_at is None:
        changes["assigned_at"] = st.clock()
    reason = change.reason or f"reported by cluster {cluster.name}"
    if state is inst.state and all(
        getattr(inst, k) == v for k, v in changes.items() if k != "cluster_ts"
    ):
        if change.ts > inst.cluster_ts:
            writes.save_instance(st, replace(inst, cluster_ts=change.ts), inst)
        return
    if state is inst.state:
        writes.save_instance(st, replace(inst, updated_at=st.clock(), **changes), inst)
        return
    lifecycle.transition(st, inst, state, reason, **changes)


def take_inference(st: RootState, change: InstanceChange) -> None:
    """Keep the inference figures a change carries (any report of the owning cluster
    has the latest ones; they are not persisted)."""
    raw = change.data.get("inference")
    stats = None
    if isinstance(raw, dict) and not change.state.terminal:
        try:
            stats = InferenceStats.model_validate(raw)
        except ValidationError:
            stats = None
    if stats is None:
        st.inference.pop(change.instance_id, None)
    else:
        st.inference[change.instance_id] = stats


def _check_missing(
    st: RootState, cluster: ClusterRecord, report: ClusterReport, now: float
) -> None:
    listed = {c.instance_id for c in report.instances}
    for inst in lookups.cluster_instances(st, cluster.id):
        if (
            inst.id not in listed
            and inst.id not in st.in_flight
            and inst.assigned_at is not None
            and inst.assigned_at < now - MISSING_GRACE_S
        ):
            if inst.terminate:
                lifecycle.transition(
                    st, inst, InstanceState.TERMINATED, inst.terminate_reason or "terminated"
                )
            else:
                lifecycle.transition(
                    st,
                    inst,
                    InstanceState.LOST,
                    f"cluster {cluster.name} no longer reports this instance",
                )


def cluster_endpoint(st: RootState, ref: str) -> tuple[ClusterRecord, str | None]:
    """(cluster, API token) for calling a cluster's API."""
    with st.lock:
        rec = lookups.cluster_by_ref(st, ref)
        if rec is None:
            raise NotFound(f"no cluster {texts.shown(ref)}")
        return rec, rec.api_token


def log_target(st: RootState, job_ref: str, instance_id: str) -> LogTarget:
    """Where an instance of a job (by id or name) runs, to read its logs there.

    NotFound for an unknown job, or an instance that is not one of the job's.
    """
    with st.lock:
        job = lookups.resolve_job(st, job_ref)
        inst = st.instances.get(instance_id)
        if inst is None:
            doc = st.persister.get(INSTANCES, instance_id)
            inst = InstanceRecord.from_doc(doc) if doc else None
        if inst is None or inst.job_id != job.id:
            raise NotFound(f"job {job.name} has no instance {instance_id!r}")
        cluster = st.clusters.get(inst.cluster_id) if inst.cluster_id else None
        return LogTarget(
            job_id=job.id,
            job_name=job.name,
            instance_id=inst.id,
            replica=inst.replica,
            state=inst.state,
            cluster_id=cluster.id if cluster else None,
            cluster_name=cluster.name if cluster else "",
            cluster_url=cluster.url if cluster else "",
            token=cluster.api_token if cluster else None,
            liveness=cluster.liveness if cluster else None,
        )


def record_node_action(
    st: RootState,
    cluster: ClusterRecord,
    node_id: str,
    node_name: str,
    action: str,
    *,
    moved: int = 0,
    stuck: int = 0,
) -> None:
    """Record an operator's drain, cordon or uncordon of a node (event ``node.<action>``)."""
    reason = f"{action} of node {node_name} on cluster {cluster.name} by an operator"
    if action == "drain":
        reason += f": {moved} instance(s) moved, {stuck} stuck"
    with st.lock:
        since = writes.mark(st)
        event_log.emit(
            st,
            f"node.{action}",
            node_id,
            reason=reason,
            cluster_id=cluster.id,
            node_id=node_id,
            data={"node_name": node_name, "moved": moved, "stuck": stuck},
        )
        mark = writes.mark(st)
    writes.durable(st, since, mark)
