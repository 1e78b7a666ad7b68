"""/v1/fine_tuning/jobs over peftserve's jobs: create maps OpenAI's request onto a JobCreate (files are datasets,
`model` a base, or a fine-tuned model to continue: init_from), and every job, native or not, reads back as a
`fine_tuning.job`. Events and epoch checkpoints page newest first, as OpenAI's do."""

from __future__ import annotations

import re
from typing import Any

from app import schemas
from app.errors import NotFound, PeftServeError, ValidationFailed
from app.jobs.tables import Job, JobStatus
from app.openai_compat import schemas as oa
from app.openai_compat.names import checkpoint_id, model_id, parse_fine_tuned, result_file_id, unix
from app.service import PeftServe
from app.training.config import Hyperparameters

DEFAULT_LR = Hyperparameters.model_fields["learning_rate"].default
# Our field names in errors raised by the core, as an OpenAI client knows them (longest prefix first).
PARAMS = {
    "train.dataset": "training_file",
    "train": "training_file",
    "validation_split": "training_file",
    "validation.dataset": "validation_file",
    "validation": "validation_file",
    "base_model": "model",
    "init_from": "model",
    "adapter": "suffix",
    "hyperparameters.epochs": "hyperparameters.n_epochs",
    "hyperparameters.learning_rate": "hyperparameters.learning_rate_multiplier",
}
EVENT_PREFIX = "ftevent-"
CHECKPOINT_PREFIX = "ftckpt-"
MAX_METADATA = 16


def create(svc: PeftServe, body: oa.FineTuningJobCreate) -> oa.FineTuningJob:
    base, parent = _model(svc, body.model)
    _check_metadata(body.metadata)
    if body.integrations:
        raise ValidationFailed("integrations are not supported here", "integrations")
    request = schemas.JobCreate(
        adapter=body.suffix or _adapter_name(base),
        base_model=base,
        train=schemas.DataSource(dataset=body.training_file),
        validation=schemas.DataSource(dataset=body.validation_file) if body.validation_file else None,
        hyperparameters=_hyperparameters(body),
        init_from=parent,
    )
    try:
        job = svc.submit_job(request, suffix=body.suffix or "", user_metadata=body.metadata)
    except PeftServeError as e:
        e.field = _param(e.field)
        raise
    return job_object(job)


def get(svc: PeftServe, job_id: str) -> oa.FineTuningJob:
    return job_object(_job(svc, job_id))


def list_jobs(svc: PeftServe, after: str | None, limit: int, metadata: dict[str, str] | None) -> oa.FineTuningJobList:
    """Newest first; `metadata`: only jobs whose metadata holds every pair ({} of None: jobs with none)."""
    found: list[Job] = []
    cursor = after
    while len(found) <= limit:
        page, more = svc.store.list_jobs(None, 100, cursor)
        found += [j for j in page if _matches(j, metadata)]
        if not more or not page:
            break
        cursor = page[-1].id
    return oa.FineTuningJobList(data=[job_object(j) for j in found[:limit]], has_more=len(found) > limit)


def cancel(svc: PeftServe, job_id: str) -> oa.FineTuningJob:
    _job(svc, job_id)
    return job_object(svc.store.request_cancel(job_id))


def pause(svc: PeftServe, job_id: str) -> oa.FineTuningJob:
    _job(svc, job_id)
    return job_object(svc.store.request_pause(job_id))


def resume(svc: PeftServe, job_id: str) -> oa.FineTuningJob:
    _job(svc, job_id)
    return job_object(svc.store.resume(job_id))


def events(svc: PeftServe, job_id: str, after: str | None, limit: int) -> oa.FineTuningJobEventList:
    """Newest first; `after` = the last event id of the previous page (older events follow)."""
    _job(svc, job_id)
    before = _number(after, EVENT_PREFIX, "after") if after else None
    rows = svc.store.latest_events(job_id, before, limit + 1)
    data = [
        oa.FineTuningJobEvent(
            id=f"{EVENT_PREFIX}{e.id}",
            created_at=unix(e.created_at) or 0,
            level="warn" if e.level == "warning" else e.level if e.level in ("info", "error") else "info",
            message=e.message,
            type="metrics" if e.type == "metrics" else "message",
            data=e.data,
        )
        for e in rows[:limit]
    ]
    return oa.FineTuningJobEventList(data=data, has_more=len(rows) > limit)


def checkpoints(svc: PeftServe, job_id: str, after: str | None, limit: int) -> oa.FineTuningJobCheckpointList:
    """The job's kept epoch checkpoints, newest first; each servable by its `fine_tuned_model_checkpoint`."""
    job = _job(svc, job_id)
    kept = list(reversed(svc.resources.epochs.list(job.id)))
    if after:
        step = _number(after.rsplit("-", 1)[-1], "", "after")  # ftckpt-<job id>-<step>
        kept = [v for v in kept if v.version < step]
    data = []
    for v in kept[:limit]:
        m = v.meta.get("metrics", {})
        metrics = oa.CheckpointMetrics(
            step=v.version,
            train_loss=m.get("train_loss"),
            valid_loss=m.get("valid_loss"),
            valid_mean_token_accuracy=m.get("valid_accuracy"),
            full_valid_loss=m.get("valid_loss"),
            full_valid_mean_token_accuracy=m.get("valid_accuracy"),
        )
        data.append(
            oa.FineTuningJobCheckpoint(
                id=f"{CHECKPOINT_PREFIX}{job.id}-{v.version}",
                created_at=_timestamp(v.meta.get("created_at")),
                fine_tuned_model_checkpoint=checkpoint_id(job, v.version),
                fine_tuning_job_id=job.id,
                metrics=metrics,
                step_number=v.version,
            )
        )
    return oa.FineTuningJobCheckpointList(
        data=data,
        has_more=len(kept) > limit,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


def job_object(job: Job) -> oa.FineTuningJob:
    """A peftserve job as OpenAI's `fine_tuning.job` (hyperparameters as resolved)."""
    status = JobStatus(job.status)
    hp = Hyperparameters(**job.hyperparameters)
    resolved = oa.HyperparametersOut(
        n_epochs=hp.epochs, batch_size=hp.batch_size, learning_rate_multiplier=round(hp.learning_rate / DEFAULT_LR, 6)
    )
    succeeded = status is JobStatus.succeeded
    error = None
    if job.error_code:
        error = oa.JobError(code=job.error_code, message=job.error_message or "", param=_error_param(job.error_code))
    return oa.FineTuningJob(
        id=job.id,
        created_at=unix(job.created_at) or 0,
        finished_at=unix(job.finished_at),
        model=job.base_model,
        fine_tuned_model=model_id(job) if succeeded and job.result_adapter else None,
        status=status.value,
        training_file=job.train_dataset,
        validation_file=job.validation_dataset,
        hyperparameters=resolved,
        method=oa.MethodOut(supervised=oa.SupervisedOut(hyperparameters=resolved)),
        result_files=[result_file_id(job.id)] if succeeded else [],
        trained_tokens=(job.result_metrics or {}).get("train_tokens") if succeeded else None,
        estimated_finish=unix(job.estimated_finish) if status is JobStatus.running else None,
        error=error,
        seed=hp.seed,
        metadata=job.user_metadata,
        user_provided_suffix=job.suffix or None,
    )


# ---- create, step by step --------------------------------------------------------------------------------------
def _model(svc: PeftServe, model: str) -> tuple[str, str | None]:
    """(base, init_from): a base model by name, or a fine-tuned model (its job's base; continue its adapter)."""
    if model in svc.registry.sources:
        return model, None
    name = parse_fine_tuned(model)
    if name is not None and name.step is None:
        try:
            job = svc.store.get_job(name.job_id)
        except NotFound:
            job = None
        if job is not None and model_id(job) == model and job.result_adapter:
            return job.base_model, job.result_adapter
    known = ", ".join(svc.registry.names())
    raise NotFound(f"model {model!r} is neither a base model ({known}) nor a fine-tuned model here", "model")


def _hyperparameters(body: oa.FineTuningJobCreate) -> Hyperparameters:
    """OpenAI's three knobs onto ours ("auto" or absent: peftserve's defaults); `method.supervised` wins."""
    method = body.method
    if method is not None and method.type != "supervised":
        raise ValidationFailed(f"method {method.type!r} is not supported: peftserve trains classifiers", "method.type")
    given = body.hyperparameters
    nested = method.supervised.hyperparameters if method and method.supervised else None
    if given is not None and nested is not None and given != nested:
        raise ValidationFailed("give hyperparameters once: at the top or under method.supervised", "hyperparameters")
    hp = nested or given or oa.HyperparametersIn()
    values: dict[str, Any] = {}
    if hp.n_epochs not in (None, "auto"):
        values["epochs"] = hp.n_epochs
    if hp.batch_size not in (None, "auto"):
        values["batch_size"] = hp.batch_size
    if hp.learning_rate_multiplier not in (None, "auto"):
        values["learning_rate"] = DEFAULT_LR * float(hp.learning_rate_multiplier)
    if body.seed is not None:
        values["seed"] = body.seed
    try:
        return Hyperparameters(**values)
    except ValueError as e:  # pydantic's ValidationError: the first problem, under OpenAI's name
        err = e.errors()[0]  # type: ignore[attr-defined]
        param = _param(f"hyperparameters.{err['loc'][0]}") if err["loc"][0] != "seed" else "seed"
        raise ValidationFailed(f"{param}: {err['msg']}", param) from None


def _adapter_name(base: str) -> str:
    """The adapter a job without a suffix trains: one per base (`ft-<base>`), each job a new version."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"ft-{base}")[:64]


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA:
        raise ValidationFailed(f"metadata holds at most {MAX_METADATA} pairs", "metadata")
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise ValidationFailed("metadata keys are at most 64 characters, values 512", f"metadata.{key[:64]}")


# ---- helpers ---------------------------------------------------------------------------------------------------
def _job(svc: PeftServe, job_id: str) -> Job:
    try:
        return svc.store.get_job(job_id)
    except NotFound:
        raise NotFound(f"no fine-tuning job {job_id!r}", "fine_tuning_job_id") from None


def _matches(job: Job, metadata: dict[str, str] | None) -> bool:
    if metadata is None:
        return True
    if not metadata:
        return not job.user_metadata
    return all((job.user_metadata or {}).get(k) == v for k, v in metadata.items())


def _param(field: str | None) -> str | None:
    if field is None:
        return None
    for ours in sorted(PARAMS, key=len, reverse=True):
        if field == ours or field.startswith(ours + ".") or field.startswith(ours + "["):
            return PARAMS[ours] + field[len(ours) :] if ours.startswith("hyperparameters") else PARAMS[ours]
    return field


def _error_param(code: str) -> str | None:
    return {
        "init_from_missing": "model",
        "init_from_mismatch": "model",
        "invalid_hyperparameters": "hyperparameters",
    }.get(code)


def _number(value: str, prefix: str, param: str) -> int:
    digits = value.removeprefix(prefix)
    if not digits.isdigit() or len(digits) > 18:
        raise ValidationFailed(f"{param} must be an id from a previous page", param)
    return int(digits)


def _timestamp(iso: str | None) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso).timestamp()) if iso else 0
