from fastapi import APIRouter

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
