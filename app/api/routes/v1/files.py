from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from app.api.deps import ServiceDep
from app.openai_compat import files
from app.openai_compat.schemas import FileDeleted, FileList, FileObject

router = APIRouter(prefix="/v1/files", tags=["openai: files"])


@router.post("")
async def create_file(
    *,
    svc: ServiceDep,
    file: Annotated[UploadFile, File(description="JSONL (or CSV): {text, label} rows or OpenAI chat rows")],
    purpose: Annotated[str, Form(description="fine-tune", json_schema_extra={"enum": ["fine-tune"]})],
) -> FileObject:
    """Upload a training or validation file: checked like POST /datasets (a bad row is refused naming its line)
    and stored as a dataset; its id is the dataset's."""
    content = await file.read(svc.settings.max_upload_bytes + 1)  # one byte over is enough to refuse
    return await run_in_threadpool(files.upload, svc, file.filename or "", content, purpose)


@router.get("")
def list_files(
    *,
    svc: ServiceDep,
    purpose: Annotated[Literal["fine-tune", "fine-tune-results"] | None, Query(description="which files")] = None,
    after: Annotated[str | None, Query(min_length=1, description="the last id of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    """Uploaded files and jobs' result files, newest first by default."""
    return files.list_files(svc, purpose, after, limit, order)


@router.get("/{file_id}")
def retrieve_file(*, svc: ServiceDep, file_id: str) -> FileObject:
    """One file."""
    return files.get(svc, file_id)


@router.get(
    "/{file_id}/content",
    response_class=Response,
    responses={200: {"content": {"application/jsonl": {}, "text/csv": {}}, "description": "the file's bytes"}},
)
def file_content(*, svc: ServiceDep, file_id: str) -> Response:
    """A training file's rows as stored (JSON lines of text and label), or a result file's metrics CSV."""
    data, media_type = files.content(svc, file_id)
    return Response(data, media_type=media_type)


@router.delete("/{file_id}")
def delete_file(*, svc: ServiceDep, file_id: str) -> FileDeleted:
    """Delete an uploaded file (409 while a queued, running or paused job uses it)."""
    return files.delete(svc, file_id)
