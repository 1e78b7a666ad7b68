"""What training a claimed job takes, read from the stores: its hyperparameters, rows (with the validation
set or split), the adapter it continues, its labels; and the metadata its adapter will be saved with. Read the
same way by every rank of a training group and by every job of a fused one (app/jobs/worker.py)."""

from __future__ import annotations

from dataclasses import dataclass

from app.base_models.loading import LoadedBase
from app.errors import NotFound, TrainingError
from app.jobs.tables import Job
from app.resources import SharedResources
from app.stores.adapters import AdapterVersion
from app.training.config import Hyperparameters
from app.training.data import is_multilabel, label_names, split_validation


@dataclass
class JobInputs:
    hp: Hyperparameters
    train: list[dict]
    val: list[dict]
    parent: AdapterVersion | None  # the adapter version it continues (init_from)
    labels: list[str]
    multi_label: bool


def read_inputs(resources: SharedResources, job: Job) -> JobInputs:
    """The job's hyperparameters, rows, parent adapter and labels."""
    hp = Hyperparameters(**job.hyperparameters)
    train, val = _rows(resources, job, hp.seed)
    parent = _parent(resources, job)
    labels = parent.labels if parent else sorted({name for r in train + val for name in label_names(r)})
    return JobInputs(hp, train, val, parent, labels, is_multilabel(train))


def _parent(resources: SharedResources, job: Job) -> AdapterVersion | None:
    """The adapter version the job continues (`init_from`), if any; gone since the job was queued: the job
    fails saying so."""
    if not job.init_from:
        return None
    try:
        return resources.adapters.resolve(job.init_from, field="init_from")
    except NotFound as e:
        raise TrainingError("init_from_missing", f"init_from: {e.message}") from None


def _rows(resources: SharedResources, job: Job, seed: int) -> tuple[list[dict], list[dict]]:
    """The job's training and validation rows: its own validation set, or a seeded split of train."""
    train = resources.datasets.load(job.train_dataset)
    if job.validation_dataset:
        return train, resources.datasets.load(job.validation_dataset)
    if job.validation_split > 0:
        return split_validation(train, job.validation_split, seed)
    return train, []


def adapter_meta(job: Job, inputs: JobInputs, base: LoadedBase) -> dict:
    """What a saved adapter (and each epoch checkpoint) records beside its weights; metrics come at the end."""
    return {
        "base_model": job.base_model,
        "labels": inputs.labels,
        "hyperparameters": inputs.hp.model_dump(),
        "job_id": job.id,
        "quantization": base.quantization,
        "heads": base.heads,
        "base_revision": base.revision,
        "parent": inputs.parent.ref if inputs.parent else None,
        **({"multi_label": True, "thresholds": [0.5] * len(inputs.labels)} if inputs.multi_label else {}),
    }
