from fastapi import APIRouter, Response

from app.api.deps import ServiceDep
from app.schemas import AdapterPublic, AdaptersPublic, DeletedPublic, LoadedAdapter

router = APIRouter(prefix="/adapters", tags=["adapters"])


@router.get("")
def list_adapters(*, svc: ServiceDep) -> AdaptersPublic:
    """Every adapter with its versions, and which are resident in the engine."""
    return svc.list_adapters()


@router.get("/loaded")
def loaded_adapters(*, svc: ServiceDep) -> list[LoadedAdapter]:
    """Adapters resident in the inference engine, least recently used first."""
    return [LoadedAdapter(**r) for r in svc.engine.loaded()]


@router.get("/{name}")
def get_adapter(*, svc: ServiceDep, name: str) -> AdapterPublic:
    """One adapter's versions with their labels, metrics and hyperparameters."""
    return svc.adapter(name)


@router.delete("/{name}")
def delete_adapter(*, svc: ServiceDep, name: str) -> DeletedPublic:
    """Delete every version (`name`) or one (`name@vN`); it stops being served at once."""
    return DeletedPublic(deleted=svc.delete_adapter(name))


@router.get(
    "/{ref}/archive",
    response_class=Response,
    responses={200: {"content": {"application/gzip": {}}, "description": "a .tar.gz of the adapter's folder"}},
)
def download_adapter(*, svc: ServiceDep, ref: str) -> Response:
    """`name` (newest version) or `name@vN` as a gzipped tarball of the standard peft folder
    (adapter_config.json, adapter_model.safetensors with the head, peftserve.json with the labels, a README):
    `PeftModel.from_pretrained` on the same base loads it and predicts what this server predicts."""
    filename, data = svc.adapter_archive(ref)
    return Response(
        data, media_type="application/gzip", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )
