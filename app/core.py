"""What the API process and every worker open alike: the stores, the model registry, the device."""

from __future__ import annotations

from app.adapters import AdapterStore
from app.config import Settings
from app.datasets import DatasetStore
from app.jobs.store import JobStore
from app.models.loading import pick_device, resolve_quantization
from app.models.registry import ModelRegistry


class Core:
    def __init__(self, settings: Settings):
        settings.ensure_dirs()
        self.settings = settings
        self.store = JobStore(settings.db_url)
        self.datasets = DatasetStore(settings.datasets_dir, self.store)
        self.adapters = AdapterStore(settings.adapters_dir)
        self.registry = ModelRegistry(settings.models, settings.model_cache_dir)
        self.device = pick_device(settings.device)
        self.quantization = resolve_quantization(settings.quantization, self.device)

    def close(self) -> None:
        self.store.close()
