import re
from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.api.deps import ServiceDep
from app.errors import ValidationFailed
from app.openai_compat import jobs
from app.openai_compat.schemas import (
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobCreate,
    FineTuningJobEventList,
    FineTuningJobList,
)

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["openai: fine-tuning"])
_METADATA_KEY = re.compile(r"^metadata\[(.{1,64})\]$")


@router.post("")
def create_job(*, svc: ServiceDep, body: FineTuningJobCreate) -> FineTuningJob:
    """Queue a fine-tuning job: a peftserve job whose adapter is `suffix` (or `ft-<base>`), named as a model
    `ft:<base>:<suffix>:<job id>`."""
    return jobs.create(svc, body)


@router.get("")
def list_jobs(
    *,
    request: Request,
    svc: ServiceDep,
    after: Annotated[str | None, Query(min_length=1, description="the last job id of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> FineTuningJobList:
    """Every job (native ones too), newest first. Filter by metadata with `metadata[key]=value` (each pair must
    match), or `metadata=null` for jobs without any."""
    return jobs.list_jobs(svc, after, limit, _metadata_filter(request))


@router.get("/{fine_tuning_job_id}")
def retrieve_job(*, svc: ServiceDep, fine_tuning_job_id: str) -> FineTuningJob:
    """One job."""
    return jobs.get(svc, fine_tuning_job_id)


@router.post("/{fine_tuning_job_id}/cancel")
def cancel_job(*, svc: ServiceDep, fine_tuning_job_id: str) -> FineTuningJob:
    """Cancel a queued or paused job now, or ask a running one's worker to stop."""
    return jobs.cancel(svc, fine_tuning_job_id)


@router.post("/{fine_tuning_job_id}/pause")
def pause_job(*, svc: ServiceDep, fine_tuning_job_id: str) -> FineTuningJob:
    """Pause: a running job checkpoints and frees its worker; resume continues from there."""
    return jobs.pause(svc, fine_tuning_job_id)


@router.post("/{fine_tuning_job_id}/resume")
def resume_job(*, svc: ServiceDep, fine_tuning_job_id: str) -> FineTuningJob:
    """Queue a paused job again."""
    return jobs.resume(svc, fine_tuning_job_id)


@router.get("/{fine_tuning_job_id}/events")
def list_events(
    *,
    svc: ServiceDep,
    fine_tuning_job_id: str,
    after: Annotated[
        str | None, Query(pattern=r"^ftevent-[0-9]{1,18}$", description="the last event id of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> FineTuningJobEventList:
    """The job's events, newest first."""
    return jobs.events(svc, fine_tuning_job_id, after, limit)


@router.get("/{fine_tuning_job_id}/checkpoints")
def list_checkpoints(
    *,
    svc: ServiceDep,
    fine_tuning_job_id: str,
    after: Annotated[
        str | None,
        Query(pattern=r"^ftckpt-[A-Za-z0-9_]+-[0-9]{1,9}$", description="the last checkpoint id of the previous page"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> FineTuningJobCheckpointList:
    """The adapters kept at the job's last epochs' ends, newest first; chat completions take their
    `fine_tuned_model_checkpoint` as a model."""
    return jobs.checkpoints(svc, fine_tuning_job_id, after, limit)


def _metadata_filter(request: Request) -> dict[str, str] | None:
    """`metadata[k]=v` pairs (OpenAI's deep-object query), `metadata=null`: jobs with none; else no filter."""
    pairs: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key == "metadata":
            if value != "null":
                raise ValidationFailed("metadata filters are metadata[key]=value, or metadata=null", "metadata")
            return {}
        m = _METADATA_KEY.fullmatch(key)
        if m:
            pairs[m.group(1)] = value
    return pairs or None
