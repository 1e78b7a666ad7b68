from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from app.api.deps import ServiceDep
from app.schemas import DatasetDetailsPublic, DatasetPublic, DatasetsPublic, DeletedPublic

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post("", status_code=201)
async def upload_dataset(
    *, svc: ServiceDep, file: Annotated[UploadFile, File(description="the data", json_schema_extra={"minLength": 1})]
) -> DatasetPublic:
    """Upload JSONL or CSV with `text`, `label` and optional `text_pair` columns."""
    content = await file.read(svc.settings.max_upload_bytes + 1)  # one byte over is enough to refuse
    row = await run_in_threadpool(svc.upload_dataset, file.filename or "", content)
    return DatasetPublic.model_validate(row, from_attributes=True)


@router.get("")
def list_datasets(
    *,
    svc: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(min_length=1, description="the last id of the previous page")] = None,
) -> DatasetsPublic:
    """Uploaded datasets, newest first; page with `after` = the last id of the previous page."""
    rows, has_more = svc.datasets.page(limit, after)
    return DatasetsPublic(data=[DatasetPublic.model_validate(r, from_attributes=True) for r in rows], has_more=has_more)


@router.get("/{dataset_id}")
def get_dataset(*, svc: ServiceDep, dataset_id: str) -> DatasetDetailsPublic:
    """An uploaded dataset: rows per label, length percentiles, and its first rows."""
    return DatasetDetailsPublic.from_details(svc.datasets.details(dataset_id))


@router.delete("/{dataset_id}")
def delete_dataset(*, svc: ServiceDep, dataset_id: str) -> DeletedPublic:
    """Delete a dataset; refused (409) while a queued, running or paused job trains or validates on it."""
    return DeletedPublic(deleted=[svc.datasets.delete(dataset_id).id])
