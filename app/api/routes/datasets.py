from fastapi import APIRouter, UploadFile
from starlette.concurrency import run_in_threadpool

from app.api.deps import ServiceDep
from app.schemas import DatasetPublic

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post("", status_code=201)
async def upload_dataset(*, svc: ServiceDep, file: UploadFile) -> DatasetPublic:
    """Upload JSONL or CSV with `text`, `label` and optional `text_pair` columns."""
    content = await file.read(svc.settings.max_upload_bytes + 1)  # one byte over is enough to refuse
    row = await run_in_threadpool(svc.upload_dataset, file.filename or "", content)
    return DatasetPublic.model_validate(row, from_attributes=True)


@router.get("/{dataset_id}")
def get_dataset(*, svc: ServiceDep, dataset_id: str) -> DatasetPublic:
    """An uploaded dataset's size and label counts."""
    return DatasetPublic.model_validate(svc.datasets.get(dataset_id, field="dataset_id"), from_attributes=True)
