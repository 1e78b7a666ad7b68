"""/v1/files over peftserve's datasets: an uploaded training or validation file is a dataset (the same id, the
same checks, stored as canonical JSON lines), and a succeeded job's result file is its metrics as CSV, made
from the job store when read."""

from __future__ import annotations

import csv
import io
from datetime import datetime

from app.errors import Conflict, NotFound, ValidationFailed
from app.jobs.tables import DatasetRow, Job, JobStatus, MetricPoint
from app.openai_compat import schemas as oa
from app.openai_compat.names import RESULT_PREFIX, job_of_result_file, result_file_id, unix
from app.service import PeftServe

PURPOSES = ("fine-tune", "fine-tune-results")
RESULT_COLUMNS = (
    "step",
    "epoch",
    "train_loss",
    "train_learning_rate",
    "valid_loss",
    "valid_accuracy",
    "valid_f1_macro",
)


def upload(svc: PeftServe, filename: str, content: bytes, purpose: str) -> oa.FileObject:
    if purpose != "fine-tune":
        raise ValidationFailed(
            f"purpose must be 'fine-tune' (training and validation files), got {purpose!r}", "purpose"
        )
    return _dataset_file(svc, svc.upload_dataset(filename, content))


def get(svc: PeftServe, file_id: str) -> oa.FileObject:
    if file_id.startswith(RESULT_PREFIX):
        job = _result_job(svc, file_id)
        return _result_file(job, svc.store.metrics(job.id))
    return _dataset_file(svc, _dataset(svc, file_id))


def content(svc: PeftServe, file_id: str) -> tuple[bytes, str]:
    """The file's bytes and media type: a dataset's JSON lines, or a result file's CSV."""
    if file_id.startswith(RESULT_PREFIX):
        job = _result_job(svc, file_id)
        return results_csv(svc.store.metrics(job.id)), "text/csv"
    _dataset(svc, file_id)
    return svc.datasets.content(file_id), "application/jsonl"


def delete(svc: PeftServe, file_id: str) -> oa.FileDeleted:
    if file_id.startswith(RESULT_PREFIX):
        _result_job(svc, file_id)
        raise Conflict("a result file is made from its job's metrics and goes with the job's model", "file_id")
    try:
        svc.datasets.delete(file_id)
    except NotFound:
        raise NotFound(f"no file {file_id!r}", "file_id") from None
    return oa.FileDeleted(id=file_id, deleted=True)


def list_files(svc: PeftServe, purpose: str | None, after: str | None, limit: int, order: str = "desc") -> oa.FileList:
    """Datasets and result files in one list by creation time (a result file's: its job's end), paged by id."""
    if purpose is not None and purpose not in PURPOSES:
        raise ValidationFailed(f"purpose must be one of {', '.join(PURPOSES)}", "purpose")
    ascending = order == "asc"
    anchor = _anchor(svc, after) if after else None
    found: list[tuple[datetime, str, oa.FileObject]] = []
    if purpose in (None, "fine-tune"):
        since = (anchor[0], anchor[1] if anchor[1].startswith("ds_") else None) if anchor else None
        for row in svc.store.page_datasets(since, limit + 1, ascending):
            found.append((row.created_at, row.id, _dataset_file(svc, row)))
    if purpose in (None, "fine-tune-results"):
        since = (
            (anchor[0], job_of_result_file(anchor[1]) if anchor[1].startswith(RESULT_PREFIX) else None)
            if anchor
            else None
        )
        jobs = svc.store.page_succeeded(since, limit + 1, ascending)
        points = svc.store.metrics_by_job([j.id for j in jobs])  # one query for the page's CSV sizes
        for job in jobs:
            assert job.finished_at is not None
            found.append((job.finished_at, result_file_id(job.id), _result_file(job, points[job.id])))
    found.sort(key=lambda f: (f[0], f[1]), reverse=not ascending)
    page = [f for _, _, f in found[:limit]]
    return oa.FileList(
        data=page,
        has_more=len(found) > limit,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
    )


def results_csv(points: list[MetricPoint]) -> bytes:
    """A job's metric points as one row per logged step: the training loss and learning rate, and at each
    epoch's end the validation figures (OpenAI's result file, with peftserve's metric names)."""
    rows: dict[int, dict] = {}
    for p in points:
        row = rows.setdefault(p.step, {"step": p.step, "epoch": p.epoch})
        prefix = "train_" if p.kind == "train" else "valid_"
        for key in ("loss", "learning_rate", "accuracy", "f1_macro"):
            if isinstance(p.values.get(key), int | float):
                row[f"{prefix}{key}"] = p.values[key]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[step] for step in sorted(rows))
    return out.getvalue().encode()


# ---- helpers -------------------------------------------------------------------------------------------------------
def _dataset(svc: PeftServe, file_id: str) -> DatasetRow:
    try:
        return svc.datasets.get(file_id, field="file_id")
    except NotFound:
        raise NotFound(f"no file {file_id!r}", "file_id") from None


def _result_job(svc: PeftServe, file_id: str) -> Job:
    try:
        job = svc.store.get_job(job_of_result_file(file_id))
    except NotFound:
        job = None
    if job is None or job.status != JobStatus.succeeded.value:
        raise NotFound(f"no file {file_id!r}", "file_id")
    return job


def _anchor(svc: PeftServe, after: str) -> tuple[datetime, str]:
    """The time and id a page starts after."""
    try:
        if after.startswith(RESULT_PREFIX):
            at = _result_job(svc, after).finished_at
        else:
            at = _dataset(svc, after).created_at
    except NotFound:
        raise NotFound(f"no file {after!r} to page after", "after") from None
    assert at is not None
    return at, after


def _dataset_file(svc: PeftServe, row: DatasetRow) -> oa.FileObject:
    size = row.size_bytes if row.size_bytes is not None else len(svc.datasets.content(row.id))
    return oa.FileObject(
        id=row.id,
        bytes=size,
        created_at=unix(row.created_at) or 0,
        filename=row.filename or f"{row.id}.jsonl",
        purpose="fine-tune",
    )


def _result_file(job: Job, points: list[MetricPoint]) -> oa.FileObject:
    return oa.FileObject(
        id=result_file_id(job.id),
        bytes=len(results_csv(points)),
        created_at=unix(job.finished_at) or 0,
        filename=f"{job.id}_results.csv",
        purpose="fine-tune-results",
    )
