"""Epoch checkpoints: the adapter as it stood at the end of each epoch of a job, servable like any version.

Not the resume checkpoint (app/training/checkpoint.py: optimizer, RNGs, data position, the latest only), but
peft's adapter folder and its metadata, one per epoch, `<root>/<job id>/step-<N>/`: what an OpenAI client
lists as a job's checkpoints and can call by their `fine_tuned_model_checkpoint` name. The newest `keep` of a
job are kept; a job's are removed with it (cancelled, failed, or its adapter deleted).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from app.stores.adapters import CONFIG, METADATA, WEIGHTS, AdapterVersion, sha256_file

log = logging.getLogger(__name__)
STEP_RE = re.compile(r"^step-([0-9]{1,9})$")


class EpochStore:
    def __init__(self, root: Path, keep: int):
        self.root, self.keep = root, keep
        root.mkdir(parents=True, exist_ok=True)

    def save(self, job_id: str, step: int, write: Callable[[Path], None], meta: dict[str, Any]) -> None:
        """Write the adapter (`write(folder)` puts peft's files there) with its metadata, published by a rename,
        then drop the job's oldest beyond `keep`. A step already kept (a resumed run's same epoch) stays."""
        folder = self._folder(job_id)
        target = folder / f"step-{step}"
        if self.keep <= 0 or (target / METADATA).exists():
            return
        staging = folder / f".staging-{uuid.uuid4().hex}"
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
            (staging / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True))
            try:
                staging.rename(target)
            except OSError:  # another attempt at the same job (a worker that lost its lease) published it first
                log.info("epoch checkpoint %s exists already", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for old in self.list(job_id)[: -self.keep]:
            shutil.rmtree(old.path, ignore_errors=True)

    def list(self, job_id: str) -> list[AdapterVersion]:
        """The job's kept epoch checkpoints, oldest first (`version` is the step)."""
        folder = self._folder(job_id)
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            m = STEP_RE.fullmatch(path.name)
            if m and (path / METADATA).exists() and (path / CONFIG).exists():
                try:
                    meta = json.loads((path / METADATA).read_text())
                except FileNotFoundError:  # pruned meanwhile
                    continue
                found.append(AdapterVersion(job_id, int(m.group(1)), path, meta))
        return sorted(found, key=lambda v: v.version)

    def get(self, job_id: str, step: int) -> AdapterVersion | None:
        return next((v for v in self.list(job_id) if v.version == step), None)

    def job_ids(self) -> list[str]:
        """Every job with a folder here."""
        return sorted(p.name for p in self.root.glob("job_*") if p.is_dir())

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self._folder(job_id), ignore_errors=True)

    def _folder(self, job_id: str) -> Path:
        """Job ids are ours (`job_` + hex); anything else names no folder (and never a path outside the root)."""
        if not job_id.startswith("job_") or not job_id[4:].isalnum():
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id
