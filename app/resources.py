"""SharedResources: what the API process and every worker process open alike, built once per process.

The job store (SQL), the dataset, adapter, checkpoint and epoch-checkpoint stores, the base-model registry, and the
device and quantization this process runs with. `PeftServe` (the API's core) and `Worker` each hold one.

Where the stores keep their files is one setting: by default this host's folders (`data_dir`, `adapters_dir`);
with `PEFTSERVE_STORAGE_URL` the shared storage every host reads (an object store), the adapter registry in
the database, and only caches and work in progress on this host.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.base_models.loading import pick_device, resolve_quantization
from app.base_models.registry import ModelRegistry
from app.config import Settings
from app.jobs.store import JobStore
from app.stores.adapters import AdapterStore, LocalAdapterStore
from app.stores.blobs import Blobs
from app.stores.datasets import DatasetStore
from app.stores.epochs import EpochStore
from app.stores.registry import RegistryAdapterStore


@dataclass
class SharedResources:
    settings: Settings
    store: JobStore
    datasets: DatasetStore
    adapters: AdapterStore
    epochs: EpochStore  # each job's adapter at its last epochs' ends
    checkpoints: Blobs  # each job's resume checkpoint, under its id
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
            datasets=DatasetStore(Blobs(settings.storage("datasets")), store),
            adapters=_adapter_store(settings, store),
            epochs=EpochStore(
                Blobs(settings.storage("epoch_checkpoints")),
                settings.epoch_checkpoints,
                settings.cache_dir / "epoch_checkpoints",
                settings.scratch_dir,
            ),
            checkpoints=Blobs(settings.storage("checkpoints")),
            registry=ModelRegistry(settings.models, settings.model_cache_dir),
            device=device,
            quantization=resolve_quantization(settings.quantization, device),
        )

    def close(self) -> None:
        self.store.close()


def _adapter_store(settings: Settings, store: JobStore) -> AdapterStore:
    """Today's folders by default; with shared storage, the registry in the database and the weights there."""
    if not settings.storage_url:
        return LocalAdapterStore(settings.adapters_dir)
    blobs = Blobs(settings.storage("adapters"))
    adapters = RegistryAdapterStore(store, blobs, settings.cache_dir / "adapters", settings.scratch_dir)
    adapters.prune_cache()  # versions deleted through other replicas while this process was away
    return adapters
