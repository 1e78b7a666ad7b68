from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api import events as sse
from app.api.deps import ServiceDep
from app.jobs.tables import JobStatus
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
    after: Annotated[str | None, Query(min_length=1, description="the last id of the previous page")] = None,
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


@router.post("/{job_id}/pause")
def pause_job(*, svc: ServiceDep, job_id: str) -> JobPublic:
    """Pause a queued job now, or ask a running one's worker to checkpoint and free itself (`status: paused`)."""
    return JobPublic.from_job(svc.store.request_pause(job_id))


@router.post("/{job_id}/resume")
def resume_job(*, svc: ServiceDep, job_id: str) -> JobPublic:
    """Queue a paused job again: it continues from its checkpoint."""
    return JobPublic.from_job(svc.store.resume(job_id))


@router.get("/{job_id}/metrics")
def job_metrics(*, svc: ServiceDep, job_id: str) -> JobMetrics:
    """Training loss and learning rate per logged step, validation metrics per evaluation."""
    return svc.job_metrics(job_id)


_STREAM_DOC = {
    "description": "`stream=true` (or `Accept: text/event-stream`): a Server-Sent Events stream, one message per"
    " event (`id: <event id>`, `event: message|metrics`, `data: <EventPublic JSON>`), a `: keep-alive` comment"
    ' every ~15 s, and a last `event: end` with `data: {"job_id", "status"}` once the job has ended and'
    " every event is sent.",
    # Before OpenAPI 3.2 (itemSchema), an event stream's `schema` describes one event as a client parses it.
    "content": {
        sse.MEDIA_TYPE: {
            "schema": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the event's id"},
                    "event": {"type": "string", "description": "`message`, `metrics`, or `end` (the last one)"},
                    "data": {"type": "string", "description": "EventPublic as JSON; `end`: {job_id, status}"},
                    "retry": {"type": "integer", "description": "reconnection delay, ms"},
                },
                "required": ["event", "data"],
            }
        }
    },
}


@router.get("/{job_id}/events", response_model=EventsPublic, responses={200: _STREAM_DOC})
async def job_events(
    *,
    svc: ServiceDep,
    job_id: str,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    stream: Annotated[
        bool, Query(description="live Server-Sent Events until the job ends (`Last-Event-ID` resumes)")
    ] = False,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            description="the last event id the client saw (SSE reconnect)",
            json_schema_extra={"pattern": r"^[0-9]{1,18}$"},
        ),
    ] = None,
) -> Any:
    """The job's events in order; page with `after` = the last event id seen, or follow them live (`stream`)."""
    if stream or sse.MEDIA_TYPE in (accept or ""):
        await run_in_threadpool(svc.store.get_job, job_id)  # 404 before the stream starts
        events = sse.job_event_stream(svc.store, job_id, sse.resume_after(after, sse.last_event_id(last_event_id)))
        return StreamingResponse(events, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
    events = await run_in_threadpool(svc.store.events, job_id, after, limit + 1)
    return EventsPublic(
        data=[EventPublic.model_validate(e, from_attributes=True) for e in events[:limit]], has_more=len(events) > limit
    )
