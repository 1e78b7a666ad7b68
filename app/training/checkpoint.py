"""Training checkpoints: everything a run needs to go on from where it stopped, in one file per job.

LoRA and head weights, optimizer and scheduler state, RNG states and the data position (epoch, next batch,
and the shuffling RNG's state at that epoch's start, so the same batch order is rebuilt). Written to a
temporary file, fsynced and renamed over the last one: a kill at any moment leaves the previous checkpoint
or the new one, never half of one. Read back with `torch.load(weights_only=True)`: tensors and plain
containers only, no arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

FORMAT = 1
FILE = "checkpoint.pt"


class Checkpoints:
    def __init__(self, folder: Path, every_steps: int):
        self.folder = folder
        self.every_steps = every_steps

    @property
    def path(self) -> Path:
        return self.folder / FILE

    def load(self, fingerprint: str) -> dict[str, Any] | None:
        """The last checkpoint of this run, or None (none yet, unreadable, or from other settings)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a checkpoint we can't read means starting over, not failing
            log.warning("checkpoint %s is unreadable; training starts over", self.path, exc_info=True)
            return None
        if state.get("format") != FORMAT or state.get("fingerprint") != fingerprint:
            log.warning("checkpoint %s belongs to another configuration; training starts over", self.path)
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{FILE}.{os.getpid()}.tmp"
        with tmp.open("wb") as f:
            torch.save({**state, "format": FORMAT}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def fingerprint(**key: Any) -> str:
    """A digest of what a checkpoint must match to be resumed (JSON-serialisable values)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def restore_rngs(saved: dict[str, Any], device: str) -> None:
    """Put the torch RNGs back as they were (dropout masks), on the CPU and, for a CUDA run, the GPU."""
    torch.set_rng_state(saved["torch_rng"])
    if device == "cuda" and saved.get("cuda_rng"):
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
