"""`/api/v1/registration-tokens`: registration tokens bound to one cluster name.

An operator creates one for a cluster that is to register under that name (a new
site, or a known name whose cluster lost its identity); the token is shown once and
only its hash is kept. See `root_orchestrator.registration` and docs/api.md.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status
from fastapi.concurrency import run_in_threadpool

from root_orchestrator.auth import require_operator
from root_orchestrator.deps import ServiceDep
from schemas.common import ID_PATTERN
from schemas.root_api import (
    RegistrationTokenCreated,
    RegistrationTokenList,
    RegistrationTokenRequest,
    RegistrationTokenView,
)

__all__ = ["router"]

router = APIRouter(
    prefix="/registration-tokens",
    tags=["clusters"],
    dependencies=[Depends(require_operator)],
)

_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "missing or wrong operator token"},
    422: {"description": "a bad path or body value (the field is named)"},
}

TokenId = Annotated[str, Path(pattern=ID_PATTERN, description="registration token id")]


@router.post("", status_code=status.HTTP_201_CREATED, responses=_ERRORS)
async def create_token(
    body: RegistrationTokenRequest, service: ServiceDep
) -> RegistrationTokenCreated:
    """A token that registers only `name` (once; then it only re-registers the cluster
    it registered). `token` is in this answer only."""
    return await run_in_threadpool(service.create_registration_token, body.name, body.ttl_s)


@router.get("", responses=_ERRORS)
async def list_tokens(service: ServiceDep) -> RegistrationTokenList:
    """Every name-bound registration token: name, expiry, the cluster it registered."""
    return await run_in_threadpool(service.list_registration_tokens)


@router.delete(
    "/{token_id}", responses={**_ERRORS, 404: {"description": "no such registration token"}}
)
async def delete_token(token_id: TokenId, service: ServiceDep) -> RegistrationTokenView:
    """Revoke a name-bound registration token."""
    return await run_in_threadpool(service.delete_registration_token, token_id)
