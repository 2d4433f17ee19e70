"""FastAPI dependencies: the services built by the lifespan, and bearer-token checks."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cluster_orchestrator.core import ClusterCore
from cluster_orchestrator.metrics import Metrics
from cluster_orchestrator.settings import ClusterSettings

if TYPE_CHECKING:
    from cluster_orchestrator.broker import DynsecAdmin
    from cluster_orchestrator.mqtt_adapter import MqttAdapter
    from cluster_orchestrator.reporter import Reporter
    from store import Store

__all__ = [
    "CoreDep",
    "JoinAuth",
    "OperatorAuth",
    "Services",
    "ServicesDep",
    "get_services",
]


@dataclass
class Services:
    """Everything the lifespan built; handlers reach it through `ServicesDep`."""

    settings: ClusterSettings
    core: ClusterCore
    metrics: Metrics
    operator_token: str = field(repr=False)
    join_token: str = field(repr=False)
    dynsec: DynsecAdmin | None = None
    mqtt: MqttAdapter | None = None
    reporter: Reporter | None = None
    store: Store | None = None
    started_at: float = 0.0


def get_services(request: Request) -> Services:
    """The services of this app (set by the lifespan)."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "starting up")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_core(services: ServicesDep) -> ClusterCore:
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


def require_operator(services: ServicesDep, credentials: BearerDep) -> None:
    """The operator token (also the token the root uses on this API)."""
    _check(credentials, services.operator_token, "operator token")


def require_join(services: ServicesDep, credentials: BearerDep) -> None:
    """The join token of this cluster."""
    _check(credentials, services.join_token, "join token")


OperatorAuth = Depends(require_operator)
JoinAuth = Depends(require_join)
