"""Who a cluster is: registration (with registration tokens bound to a name), identity
resets, the operator's registration tokens, and the authentication of reports.

Functions over the shared `state.RootState`; `service.RootService` is their facade.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace

from pydantic import SecretStr

from root_orchestrator import events as event_log
from root_orchestrator import lookups, texts, views, writes
from root_orchestrator.errors import Conflict, IdentityRefused, NotFound, Unauthorized
from root_orchestrator.records import (
    REGISTRATION_TOKENS,
    ClusterRecord,
    RegistrationTokenRecord,
)
from root_orchestrator.registration import (
    RegistrationGrant,
    new_token,
    takeover_refusal,
    token_id_of,
    token_view,
)
from root_orchestrator.state import RootState
from schemas.cluster import (
    ClusterLiveness,
    ClusterRegistration,
    ClusterRegistrationResponse,
)
from schemas.root_api import (
    ClusterView,
    RegistrationTokenCreated,
    RegistrationTokenList,
    RegistrationTokenView,
)
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
