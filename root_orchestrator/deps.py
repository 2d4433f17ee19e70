"""The dependencies the lifespan builds, and how routes get them (`Annotated` aliases)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from root_orchestrator.cluster_client import ClusterClient
from root_orchestrator.metrics import RootMetrics
from root_orchestrator.reconciler import Reconciler
from root_orchestrator.service import RootService
from root_orchestrator.settings import RootSettings

__all__ = ["Deps", "DepsDep", "ServiceDep", "get_deps", "get_service"]


@dataclass(frozen=True, slots=True)
class Deps:
    """Everything the routes use, built once per application by the lifespan."""

    settings: RootSettings
    service: RootService
    client: ClusterClient
    reconciler: Reconciler
    metrics: RootMetrics
    operator_tokens: list[str]


def get_deps(request: Request) -> Deps:
    """The application's dependencies (set by the lifespan)."""
    deps: Deps = request.app.state.deps
    return deps


def get_service(request: Request) -> RootService:
    """The application's service layer."""
    return get_deps(request).service


DepsDep = Annotated[Deps, Depends(get_deps)]
ServiceDep = Annotated[RootService, Depends(get_service)]
