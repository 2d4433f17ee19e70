"""The dependencies the lifespan builds, and how routes get them (`Annotated` aliases)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response
from pydantic import BaseModel

from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.metrics import RootMetrics
from root_orchestrator.reconciler import Reconciler
from root_orchestrator.service import RootService
from root_orchestrator.settings import RootSettings

__all__ = ["Deps", "DepsDep", "ServiceDep", "get_deps", "get_service", "model_response"]


@dataclass(frozen=True, slots=True)
class Deps:
    """Everything the routes use, built once per application by the lifespan."""

    settings: RootSettings
    service: RootService
    client: ClusterClient
    reconciler: Reconciler
    metrics: RootMetrics
    operator_tokens: list[str]


async def get_deps(request: Request) -> Deps:
    """The application's dependencies (set by the lifespan).

    Every dependency of the routes is `async def`: FastAPI runs a plain `def`
    dependency in a worker thread, a hand-off that cost more than the lookup."""
    deps: Deps = request.app.state.deps
    return deps


async def get_service(request: Request) -> RootService:
    """The application's service layer."""
    service: RootService = request.app.state.deps.service
    return service


DepsDep = Annotated[Deps, Depends(get_deps)]
ServiceDep = Annotated[RootService, Depends(get_service)]


def model_response(
    model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """`model` as a JSON response, serialized once by pydantic.

    For the routes called for every deploy and report: returning the model would
    make FastAPI validate it again against the route's `response_model` and then
    serialize it; the route still declares `response_model` for the API schema."""
    return Response(
        model.model_dump_json(),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )
