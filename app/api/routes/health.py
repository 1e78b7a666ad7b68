from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health")
def health(*, svc: ServiceDep) -> Health:
    """Liveness, queue length and what this server runs on."""
    return svc.health()
