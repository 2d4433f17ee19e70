"""`/api/v1/jobs`: submit, list, get, update (scale, reprioritise, roll out a new spec),
plan an update (dry run), list versions, and delete jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Response, status
from fastapi.concurrency import run_in_threadpool

from root_orchestrator.auth import require_operator
from root_orchestrator.deps import ServiceDep, model_response
from root_orchestrator.replicas import JobState
from schemas.common import ID_PATTERN
from schemas.job import JobSpec
from schemas.root_api import JobList, JobPatch, JobView, UpdatePlan, VersionList

__all__ = ["router"]

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_operator)])

_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "missing or wrong bearer token"},
    404: {"description": "no such job"},
    409: {"description": "conflicts with the current state"},
    422: {"description": "a bad path, query, header or body value (the field is named)"},
}

#: A job id or name in a path: anything else is a 422 naming the parameter.
JobRef = Annotated[str, Path(pattern=ID_PATTERN, description="job id or name")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobView,
    responses={200: {"description": "repeated Idempotency-Key: the job it created"}, **_ERRORS},
)
async def submit_job(
    spec: JobSpec,
    service: ServiceDep,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=255, description="retries with the same key return the same job"),
    ] = None,
) -> Response:
    """Submit a job. 201 with the job; 200 with the same job for a repeated key."""
    view, created = await service.submit_job_async(spec, idempotency_key)
    return model_response(
        view,
        status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        {"Location": f"/api/v1/jobs/{view.id}"},
    )


@router.get("", responses=_ERRORS)
async def list_jobs(
    service: ServiceDep,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    name: Annotated[
        str | None, Query(max_length=63, description="only jobs with this name")
    ] = None,
    cluster: Annotated[
        str | None, Query(max_length=64, description="only jobs with instances on this cluster")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=64, description="`next_cursor` of the previous page")
    ] = None,
) -> JobList:
    """List jobs in submission order, one page at a time."""
    return await run_in_threadpool(
        lambda: service.list_jobs(
            state=state, name=name, cluster=cluster, limit=limit, cursor=cursor
        )
    )


@router.get("/{job}", responses=_ERRORS)
async def get_job(job: JobRef, service: ServiceDep) -> JobView:
    """One job (by id or name): spec, replicas, instances and the latest placement."""
    return await run_in_threadpool(service.get_job, job)


_UPDATE_ERRORS: dict[int | str, dict[str, str]] = {
    **_ERRORS,
    409: {"description": "the job is deleted"},
    422: {"description": "a field is invalid or cannot change (`name`); each one is named"},
}


@router.patch("/{job}", responses=_UPDATE_ERRORS)
async def patch_job(
    job: JobRef,
    patch: JobPatch,
    service: ServiceDep,
    dry_run: Annotated[
        bool, Query(description="only validate and return the plan (UpdatePlan); change nothing")
    ] = False,
) -> JobView | UpdatePlan:
    """Change a job: `replicas`, `priority`, `update` in place; any other spec field makes
    a new job version, rolled out under the job's update strategy (see docs/api.md)."""
    if dry_run:
        return await run_in_threadpool(service.plan_update, job, patch)
    return await run_in_threadpool(service.update_job, job, patch)


@router.post("/{job}/plan", responses=_UPDATE_ERRORS)
async def plan_job_update(job: JobRef, patch: JobPatch, service: ServiceDep) -> UpdatePlan:
    """Dry run of `PATCH /jobs/{job}` (same body): the version it would create, the
    rollout's batches and where each new replica would be placed now. Changes nothing."""
    return await run_in_threadpool(service.plan_update, job, patch)


@router.get("/{job}/versions", responses=_ERRORS)
async def job_versions(job: JobRef, service: ServiceDep) -> VersionList:
    """The kept versions of a job's spec (the latest ten), newest first, with specs."""
    return await run_in_threadpool(service.job_versions, job)


@router.delete("/{job}", status_code=status.HTTP_202_ACCEPTED, responses=_ERRORS)
async def delete_job(job: JobRef, service: ServiceDep) -> JobView:
    """Delete a job: every instance is terminated; the job ends TERMINATED."""
    return await service.delete_job_async(job)
