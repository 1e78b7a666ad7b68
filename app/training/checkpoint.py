"""Training checkpoints: everything a run needs to go on from where it stopped, in one file per job.

LoRA and head weights, optimizer and scheduler state, RNG states and the data position (epoch, next batch,
and the shuffling RNG's state at that epoch's start, so the same batch order is rebuilt). Kept in the shared
storage (app/stores/blobs.py: a local folder, or an object store that a worker on another host resumes
from), published atomically over the last one: a kill at any moment leaves the previous checkpoint or the
new one, never half of one. Read back with `torch.load(weights_only=True)`: tensors and plain containers
only, no arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any

import torch

from app.stores.blobs import Blobs

log = logging.getLogger(__name__)

FORMAT = 1
FILE = "checkpoint.pt"


class Checkpoints:
    """One job's checkpoint: `blobs` holds that job's keys alone (the checkpoints area's child named by its id)."""

    def __init__(self, blobs: Blobs, every_steps: int):
        self.blobs = blobs
        self.every_steps = every_steps

    def exists(self) -> bool:
        return self.blobs.exists(FILE)

    def load(self, fingerprint: str) -> dict[str, Any] | None:
        """The last checkpoint of this run, or None (none yet, unreadable, or from other settings)."""
        data = self.blobs.get(FILE)
        if data is None:
            return None
        where = f"{self.blobs.url}/{FILE}"
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a checkpoint we can't read means starting over, not failing
            log.warning("checkpoint %s is unreadable; training starts over", where, exc_info=True)
            return None
        if state.get("format") != FORMAT or state.get("fingerprint") != fingerprint:
            log.warning("checkpoint %s belongs to another configuration; training starts over", where)
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save({**state, "format": FORMAT}, buffer)
        self.blobs.put(FILE, buffer.getvalue())

    def clear(self) -> None:
        self.blobs.delete()


def fingerprint(**key: Any) -> str:
    """A digest of what a checkpoint must match to be resumed (JSON-serialisable values)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def restore_rngs(saved: dict[str, Any], device: str) -> None:
    """Put the torch RNGs back as they were (dropout masks), on the CPU and, for a CUDA run, the GPU."""
    torch.set_rng_state(saved["torch_rng"])
    if device == "cuda" and saved.get("cuda_rng"):
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
