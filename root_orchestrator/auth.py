"""Bearer-token authentication of the operator API and the cluster API.

Every failure is a 401 with ``WWW-Authenticate: Bearer``; the body never says
whether the token was missing, unknown or belonged to someone else.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from root_orchestrator.deps import Deps, get_deps
from root_orchestrator.registration import RegistrationGrant
from schemas.settings_file import token_accepted

__all__ = [
    "ClusterCredential",
    "Registration",
    "bearer",
    "registration_grant",
    "require_operator",
    "unauthorized",
]

REALM = "edge-root"

bearer = HTTPBearer(auto_error=False, description="operator token (see docs/api.md)")
_cluster_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ClusterBearer",
    description="registration token (register) or the cluster's credential (report)",
)

BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
ClusterCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_cluster_bearer)]


def unauthorized(detail: str = "missing or invalid bearer token") -> HTTPException:
    """A 401 with the challenge header RFC 6750 asks for."""
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
    )


async def require_operator(
    deps: Annotated[Deps, Depends(get_deps)], credentials: BearerCredentials
) -> None:
    """Dependency: the request carries one of the operator tokens (on the event loop:
    a constant-time comparison per token, no worker thread)."""
    if credentials is None or not token_accepted(credentials.credentials, deps.operator_tokens):
        raise unauthorized()


def registration_grant(
    deps: Annotated[Deps, Depends(get_deps)], credentials: ClusterCredentials
) -> RegistrationGrant:
    """Dependency: the request carries a shared registration token or a name-bound one
    (which one decides what it may register: `root_orchestrator.registration`)."""
    grant = None
    if credentials is not None:
        grant = deps.service.registration_grant(credentials.credentials)
    if grant is None:
        raise unauthorized()
    return grant


Registration = Annotated[RegistrationGrant, Depends(registration_grant)]


async def cluster_credential(request: Request, credentials: ClusterCredentials) -> str:
    """Dependency: the bearer token a cluster presents (checked by the route)."""
    if credentials is None:
        raise unauthorized()
    return credentials.credentials


ClusterCredential = Annotated[str, Depends(cluster_credential)]
