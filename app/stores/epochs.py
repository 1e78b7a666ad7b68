"""Epoch checkpoints: the adapter as it stood at the end of each epoch of a job, servable like any version.

Not the resume checkpoint (app/training/checkpoint.py: optimizer, RNGs, data position, the latest only), but
peft's adapter folder, one per epoch, under `<job id>/step-<N>/` in the storage (a local folder, or the shared
object store), and one index per job, `<job id>/index.json`, listing the kept steps with their metadata: the
index is the commit point (a step's files are written before it names them) and what a listing reads, so the
storage is never listed on a request path. What an OpenAI client lists as a job's checkpoints and can call by
their `fine_tuned_model_checkpoint` name. The newest `keep` of a job are kept; a job's are removed with it
(cancelled, failed, or its adapter deleted). Only the job's worker writes its index (it holds the job's lease).
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from app.stores.adapters import CONFIG, WEIGHTS, AdapterVersion, sha256_file
from app.stores.blobs import Blobs
from app.stores.registry import WeightCache

log = logging.getLogger(__name__)
INDEX = "index.json"


class EpochStore:
    def __init__(self, blobs: Blobs, keep: int, cache_dir: Path, scratch_dir: Path):
        self.blobs, self.keep = blobs, keep
        self.cache = WeightCache(cache_dir)
        self.scratch = scratch_dir

    def save(self, job_id: str, step: int, write: Callable[[Path], None], meta: dict[str, Any]) -> None:
        """Write the adapter (`write(folder)` puts peft's files there), then name it in the job's index, then drop
        the job's oldest beyond `keep`. A step already kept (a resumed run's same epoch) stays."""
        kept = self._index(job_id)
        if self.keep <= 0 or any(e["step"] == step for e in kept):
            return
        staging = self.scratch / f"epoch-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            write(staging)
            (staging / "README.md").unlink(missing_ok=True)  # peft's model-card stub
            meta = {
                **meta,
                "step": step,
                "sha256": sha256_file(staging / WEIGHTS),
                "created_at": datetime.now(timezone.utc).isoformat(),
            }
            for name in (CONFIG, WEIGHTS):
                # unseen until the index names it (a step re-written after a crash is the same epoch's adapter)
                self.blobs.put(f"{job_id}/step-{step}/{name}", (staging / name).read_bytes(), fresh=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        kept = sorted([*kept, {"step": step, "meta": meta}], key=lambda e: e["step"])
        doomed, kept = kept[: -self.keep], kept[-self.keep :]
        self.blobs.put(f"{job_id}/{INDEX}", json.dumps(kept, sort_keys=True).encode())
        for entry in doomed:
            self.blobs.delete(f"{job_id}/step-{entry['step']}")

    def list(self, job_id: str) -> list[AdapterVersion]:
        """The job's kept epoch checkpoints, oldest first (`version` is the step), from its index alone."""
        return [self._version(job_id, e["step"], e["meta"]) for e in self._index(job_id)]

    def get(self, job_id: str, step: int) -> AdapterVersion | None:
        """One kept checkpoint, its files on this host (fetched from the storage and checked on first use)."""
        found = next((v for v in self.list(job_id) if v.version == step), None)
        if found is not None and not self.blobs.local:
            self.cache.fetch(self.blobs, f"{job_id}/step-{step}", found.path, found.meta)
        return found

    def job_ids(self) -> list[str]:
        """Every job with checkpoints here (for sweeps: this lists the storage)."""
        return [name for name in self.blobs.children() if name.startswith("job_")]

    def delete(self, job_id: str) -> None:
        self._check(job_id)
        self.blobs.delete(job_id)
        self.cache.drop(self.cache.root / job_id)

    def _index(self, job_id: str) -> list[dict[str, Any]]:
        data = self.blobs.get(f"{self._check(job_id)}/{INDEX}")
        return json.loads(data) if data else []

    def _version(self, job_id: str, step: int, meta: dict[str, Any]) -> AdapterVersion:
        key = f"{job_id}/step-{step}"
        path = self.blobs.local_path(key) or self.cache.root / key
        return AdapterVersion(job_id, step, path, meta)

    @staticmethod
    def _check(job_id: str) -> str:
        """Job ids are ours (`job_` + hex); anything else names no key (and never a path outside the root)."""
        if not job_id.startswith("job_") or not job_id[4:].isalnum():
            raise ValueError(f"not a job id: {job_id!r}")
        return job_id
