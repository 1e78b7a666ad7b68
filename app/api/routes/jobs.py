from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import ServiceDep
from app.jobs.models import JobStatus
from app.schemas import EventPublic, EventsPublic, JobCreate, JobMetrics, JobPublic, JobsPublic

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=202)
def create_job(*, svc: ServiceDep, body: JobCreate) -> JobPublic:
    """Validate the data and queue a training job."""
    return JobPublic.from_job(svc.submit_job(body))


@router.get("")
def list_jobs(
    *,
    svc: ServiceDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> JobsPublic:
    """Jobs, newest first; page with `after` = the last id of the previous page."""
    jobs, has_more = svc.store.list_jobs(status, limit, after)
    return JobsPublic(data=[JobPublic.from_job(j) for j in jobs], has_more=has_more)


@router.get("/{job_id}")
def get_job(*, svc: ServiceDep, job_id: str) -> JobPublic:
    """One job."""
    return JobPublic.from_job(svc.store.get_job(job_id))


@router.post("/{job_id}/cancel")
def cancel_job(*, svc: ServiceDep, job_id: str) -> JobPublic:
    """Cancel a queued job now, or ask a running one's worker to stop."""
    return JobPublic.from_job(svc.store.request_cancel(job_id))


@router.get("/{job_id}/metrics")
def job_metrics(*, svc: ServiceDep, job_id: str) -> JobMetrics:
    """Training loss and learning rate per logged step, validation metrics per evaluation."""
    return svc.job_metrics(job_id)


@router.get("/{job_id}/events")
def job_events(
    *,
    svc: ServiceDep,
    job_id: str,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> EventsPublic:
    """The job's events in order; page with `after` = the last event id seen."""
    events = svc.store.events(job_id, after, limit + 1)
    return EventsPublic(
        data=[EventPublic.model_validate(e, from_attributes=True) for e in events[:limit]], has_more=len(events) > limit
    )
