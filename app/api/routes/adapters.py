import json
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from app.api.deps import ServiceDep
from app.errors import ValidationFailed
from app.schemas import AdapterPublic, AdaptersPublic, AdapterVersionPublic, DeletedPublic, LoadedAdapter
from app.stores.adapters import NAME_PATTERN, REF_PATTERN

AdapterRef = Annotated[str, Path(pattern=REF_PATTERN, description="`name` (newest version) or `name@vN`")]

router = APIRouter(prefix="/adapters", tags=["adapters"])


@router.get("")
def list_adapters(*, svc: ServiceDep) -> AdaptersPublic:
    """Every adapter with its versions, and which are resident in the engine."""
    return svc.list_adapters()


@router.post("", status_code=201)
async def import_adapter(
    *,
    svc: ServiceDep,
    name: Annotated[str, Form(pattern=NAME_PATTERN, description="adapter name: a new version if it exists")],
    base_model: Annotated[str, Form(min_length=1, description="the base it was trained on, as this server names it")],
    file: Annotated[UploadFile, File(description="a .tar.gz of a peft LoRA folder for sequence classification")],
    labels: Annotated[
        str | None, Form(description='label names in the head\'s order, a JSON list (["neg", "pos"]) or a,b,c')
    ] = None,
) -> AdapterVersionPublic:
    """Import an adapter trained elsewhere with peft (adapter_config.json + adapter_model.safetensors with the
    head as modules_to_save; labels from `labels`, peftserve.json or config.json's id2label): checked against
    the base, stored as the next version of `name` and served like the others."""
    content = await file.read(svc.settings.max_upload_bytes + 1)  # one byte over is enough to refuse
    names = _labels(labels)
    return await run_in_threadpool(svc.import_adapter, name, base_model, content, names)


def _labels(value: str | None) -> list[str] | None:
    """The `labels` form field: a JSON list of strings, or comma-separated names (checked by the service)."""
    if value is None or not value.strip():
        return None
    if not value.lstrip().startswith("["):
        return value.split(",")
    try:
        return json.loads(value)
    except ValueError as e:
        raise ValidationFailed(f"labels is not a JSON list ({e})", field="labels") from None


@router.get("/loaded")
def loaded_adapters(*, svc: ServiceDep) -> list[LoadedAdapter]:
    """Adapters resident in the inference engine, least recently used first."""
    return [LoadedAdapter(**r) for r in svc.engine.loaded()]


@router.get("/{name}")
def get_adapter(*, svc: ServiceDep, name: AdapterRef) -> AdapterPublic:
    """One adapter's versions with their labels, metrics and hyperparameters."""
    return svc.adapter(name)


@router.delete("/{name}")
def delete_adapter(*, svc: ServiceDep, name: AdapterRef) -> DeletedPublic:
    """Delete every version (`name`) or one (`name@vN`); it stops being served at once."""
    return DeletedPublic(deleted=svc.delete_adapter(name))


@router.get(
    "/{ref}/archive",
    response_class=Response,
    responses={200: {"content": {"application/gzip": {}}, "description": "a .tar.gz of the adapter's folder"}},
)
def download_adapter(*, svc: ServiceDep, ref: AdapterRef) -> Response:
    """`name` (newest version) or `name@vN` as a gzipped tarball of the standard peft folder
    (adapter_config.json, adapter_model.safetensors with the head, peftserve.json with the labels, a README):
    `PeftModel.from_pretrained` on the same base loads it and predicts what this server predicts."""
    filename, data = svc.adapter_archive(ref)
    return Response(
        data, media_type="application/gzip", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )
