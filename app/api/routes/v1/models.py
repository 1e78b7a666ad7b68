from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.openai_compat import models
from app.openai_compat.schemas import Model, ModelDeleted, ModelList

router = APIRouter(prefix="/v1/models", tags=["openai: models"])


@router.get("")
def list_models(*, svc: ServiceDep) -> ModelList:
    """Base models and every fine-tuned model (adapter version)."""
    return models.list_models(svc)


@router.get("/{model}")
def retrieve_model(*, svc: ServiceDep, model: str) -> Model:
    """A base, a fine-tuned model (`ft:...`, or an adapter's `name@vN`), or an epoch checkpoint."""
    return models.get(svc, model)


@router.delete("/{model}")
def delete_model(*, svc: ServiceDep, model: str) -> ModelDeleted:
    """Delete a fine-tuned model: its adapter version and its job's epoch checkpoints."""
    return models.delete(svc, model)
