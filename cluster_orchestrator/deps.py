"""FastAPI dependencies: the services built by the lifespan, and bearer-token checks."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cluster_orchestrator.core import ClusterCore, JoinUnauthorized
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.settings import ClusterSettings, token_accepted

if TYPE_CHECKING:
    from cluster_orchestrator.broker import DynsecAdmin
    from cluster_orchestrator.logs import LogRequests
    from cluster_orchestrator.mqtt_adapter import MqttAdapter
    from cluster_orchestrator.reporter import Reporter
    from store import Store

__all__ = [
    "BearerDep",
    "CoreDep",
    "JoinOrRejoin",
    "OperatorAuth",
    "Services",
    "ServicesDep",
    "get_services",
    "join_token_state",
    "require_operator",
]


@dataclass
class Services:
    """Everything the lifespan built; handlers reach it through `ServicesDep`."""

    settings: ClusterSettings
    core: ClusterCore
    metrics: Metrics
    operator_token: str = field(repr=False)
    #: every accepted join token (``join_token`` + ``join_tokens``, or the generated one)
    join_tokens: list[str] = field(repr=False)
    dynsec: DynsecAdmin | None = None
    mqtt: MqttAdapter | None = None
    reporter: Reporter | None = None
    store: Store | None = None
    started_at: float = 0.0
    logs: LogRequests | None = None
    #: PEM of the broker's CA, sent to nodes in the join reply when they use TLS
    broker_ca_pem: str | None = None


# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in a worker thread, three thread hops per request for nothing.


async def get_services(request: Request) -> Services:
    """The services of this app (set by the lifespan)."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "starting up")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_core(services: ServicesDep) -> ClusterCore:
    """The core loop."""
    return services.core


CoreDep = Annotated[ClusterCore, Depends(get_core)]

_bearer = HTTPBearer(auto_error=False, description="bearer token")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _check(credentials: HTTPAuthorizationCredentials | None, expected: str, what: str) -> None:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            f"missing bearer {what}",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            f"invalid {what}",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_operator(services: ServicesDep, credentials: BearerDep) -> None:
    """The operator token (also the token the root uses on this API)."""
    _check(credentials, services.operator_token, "operator token")


JoinTokenState = Literal["ok", "missing", "invalid"]


def join_token_state(
    services: Services, credentials: HTTPAuthorizationCredentials | None
) -> JoinTokenState:
    """Whether the request carries one of the accepted join tokens (constant time)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        return "missing"
    if token_accepted(credentials.credentials, services.join_tokens):
        return "ok"
    return "invalid"


async def join_or_rejoin(
    request: Request, services: ServicesDep, credentials: BearerDep
) -> JoinTokenState:
    """Join-token state of a join request, checked before the body is validated.

    A request without an accepted join token goes on only when its body presents a
    node id and secret (a rejoin, judged by the core); anything else gets 401 here,
    so an unauthenticated caller never learns the body schema from a 422 (the app
    turns `JoinUnauthorized` into a 401 with ``detail`` and ``reason``).
    """
    state = join_token_state(services, credentials)
    if state == "ok":
        return state
    try:
        body = await request.json()
    except ValueError:
        body = None
    if (
        isinstance(body, dict)
        and isinstance(body.get("node_id"), str)
        and isinstance(body.get("node_secret"), str)
    ):
        return state
    raise JoinUnauthorized(
        "missing bearer join token" if state == "missing" else "invalid join token",
        f"join_token_{state}",
    )


JoinOrRejoin = Annotated[JoinTokenState, Depends(join_or_rejoin)]
OperatorAuth = Depends(require_operator)
