"""/v1/models: the base models and every adapter version, by the names app/openai_compat/names.py gives them;
and `resolve`, which turns a model id into the adapter version that answers for it (chat completions)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from app.errors import Conflict, NotFound, ValidationFailed
from app.jobs.tables import JobStatus
from app.openai_compat import schemas as oa
from app.openai_compat.names import model_id, parse_fine_tuned
from app.service import PeftServe
from app.stores.adapters import AdapterVersion

OWNER = "peftserve"


def list_models(svc: PeftServe) -> oa.ModelList:
    versions = [v for name in svc.adapters.names() for v in _versions(svc, name)]
    jobs = svc.store.jobs_by_id([v.meta["job_id"] for v in versions if v.meta.get("job_id")])
    data = [oa.Model(id=name, created=0, owned_by=OWNER) for name in svc.registry.names()]
    for v in versions:
        job = jobs.get(v.meta.get("job_id") or "")
        data.append(oa.Model(id=model_id(job) if job else v.ref, created=_created(v), owned_by=OWNER))
    return oa.ModelList(data=data)


def get(svc: PeftServe, model: str) -> oa.Model:
    if model in svc.registry.sources:
        return oa.Model(id=model, created=0, owned_by=OWNER)
    return oa.Model(id=model, created=_created(resolve(svc, model)), owned_by=OWNER)


def delete(svc: PeftServe, model: str) -> oa.ModelDeleted:
    """A fine-tuned model (its adapter version, with its job's epoch checkpoints); not a base or a checkpoint."""
    if model in svc.registry.sources:
        raise Conflict(f"{model!r} is a base model of this server's configuration; it can't be deleted", "model")
    version = resolve(svc, model)
    if version.alias is not None:
        raise ValidationFailed("an epoch checkpoint goes with its job's model: delete that", "model")
    svc.delete_adapter(version.ref)
    return oa.ModelDeleted(id=model, deleted=True)


def resolve(svc: PeftServe, model: str) -> AdapterVersion:
    """The adapter version a model id names: `ft:...` (a job's model, or `...:ckpt-step-N` an epoch checkpoint
    of it), or an adapter's own `name` / `name@vN`. Anything else: 404 naming `model`."""
    name = parse_fine_tuned(model)
    missing = NotFound(f"the model {model!r} does not exist", "model")
    if name is None:
        try:
            return svc.adapters.resolve(model, field="model")
        except (NotFound, ValidationFailed):
            raise missing from None
    try:
        job = svc.store.get_job(name.job_id)
    except NotFound:
        raise missing from None
    if name.step is not None:
        kept = (
            svc.resources.epochs.get(job.id, name.step) if f"{model_id(job)}:ckpt-step-{name.step}" == model else None
        )
        if kept is None:
            raise missing
        return replace(kept, alias=model)
    if model_id(job) != model or job.status != JobStatus.succeeded.value or not job.result_adapter:
        raise missing
    try:
        return svc.adapters.resolve(job.result_adapter, field="model")
    except NotFound:
        raise missing from None


def _versions(svc: PeftServe, name: str) -> list[AdapterVersion]:
    try:
        return svc.adapters.versions(name)
    except NotFound:  # deleted while we listed
        return []


def _created(version: AdapterVersion) -> int:
    at = version.meta.get("created_at")
    return int(datetime.fromisoformat(at).timestamp()) if at else 0
