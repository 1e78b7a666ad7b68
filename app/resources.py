"""SharedResources: what the API process and every worker process open alike, built once per process.

The job store (SQL), the dataset, adapter and epoch-checkpoint stores, the base-model registry, and the device and
quantization this process runs with. `PeftServe` (the API's core) and `Worker` each hold one.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.base_models.loading import pick_device, resolve_quantization
from app.base_models.registry import ModelRegistry
from app.config import Settings
from app.jobs.store import JobStore
from app.stores.adapters import AdapterStore, LocalAdapterStore
from app.stores.datasets import DatasetStore, LocalDatasetStore
from app.stores.epochs import EpochStore


@dataclass
class SharedResources:
    settings: Settings
    store: JobStore
    datasets: DatasetStore
    adapters: AdapterStore
    epochs: EpochStore  # each job's adapter at its last epochs' ends
    registry: ModelRegistry
    device: str  # "cpu" | "cuda"
    quantization: str  # "none" | "nf4" | "int8"

    @classmethod
    def open(cls, settings: Settings, store_retry_seconds: float = 2.0) -> SharedResources:
        """`store_retry_seconds`: how long a job-store call waits out a database that is away (the API: a
        moment, then 503; a worker: its lease)."""
        settings.ensure_dirs()
        store = JobStore(settings.db_url, retry_seconds=store_retry_seconds)
        device = pick_device(settings.device)
        return cls(
            settings=settings,
            store=store,
            datasets=LocalDatasetStore(settings.datasets_dir, store),
            adapters=LocalAdapterStore(settings.adapters_dir),
            epochs=EpochStore(settings.epoch_checkpoints_dir, settings.epoch_checkpoints),
            registry=ModelRegistry(settings.models, settings.model_cache_dir),
            device=device,
            quantization=resolve_quantization(settings.quantization, device),
        )

    def close(self) -> None:
        self.store.close()
