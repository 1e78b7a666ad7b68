"""Several processes training one job together: data parallel, one process per GPU, launched by `torchrun`
(or `accelerate launch`, which sets the same RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR variables).

Rank 0 is the worker the job store sees: it claims jobs, reports progress, writes checkpoints and commits the
adapter. It tells the other ranks what to do at each poll (`announce` / `receive`: a job id, idle, or stop).
Every rank then trains the same job from the same seed on its share of each batch (`shard`), and after each
backward pass the trainable gradients are summed in one flat all-reduce (`reduce_step`), each rank's loss
weighted by its share of the batch, so the step equals one process's step on the whole batch. The same
buffer carries rank 0's stop request (cancel, pause, shutdown, lost lease), so every rank stops at the same
step; `agree` does the same at an epoch's end. Validation runs whole on every rank (identical weights give
identical figures and the same early-stopping decision).

A collective that fails (a rank died, or timed out) raises `GroupBroken`: rank 0 hands its job back to the
queue and the group exits; the launcher's restart (torchrun --max-restarts) or lease expiry brings the job
back, resumed from its checkpoint. Knows nothing of HTTP or the database.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from app.errors import JobInterrupted

log = logging.getLogger(__name__)

# A stop travels as its index here (0: go on). Only rank 0 ever asks for one; the others send 0.
STOPS: tuple[str | None, ...] = (None, "cancelled", "lost", "shutdown", "paused")
IDLE, STOP = "", None  # what rank 0 announces besides a job id


class GroupBroken(JobInterrupted):
    """A collective failed: a rank is gone. The job goes back to the queue and this process stops."""

    def __init__(self, cause: Exception):
        super().__init__("shutdown")
        self.cause = cause


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Group:
    rank: int
    world: int

    @classmethod
    def from_env(cls, backend: str = "auto", timeout_seconds: float = 600.0) -> Group | None:
        """The process group this process was launched into (None when launched alone). Pins this rank to its
        GPU (LOCAL_RANK) before anything touches CUDA."""
        if world_size() <= 1:
            return None
        import torch.distributed as dist

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        if backend == "auto":
            backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_seconds))
        group = cls(rank=dist.get_rank(), world=dist.get_world_size())
        log.info("rank %d of %d (%s)", group.rank, group.world, backend)
        return group

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: list[int]) -> list[int]:
        """This rank's rows of a batch: every world-th one, from its rank on."""
        return idx[self.rank :: self.world]

    # ---- collectives ----------------------------------------------------------------------------
    def reduce_step(
        self, params: list[torch.nn.Parameter], loss: torch.Tensor, stop: str | None
    ) -> tuple[torch.Tensor, str | None]:
        """Sum the (share-weighted) gradients and losses of every rank, in place, and agree on rank 0's stop.
        Returns the batch's loss and the stop every rank takes."""
        device = params[0].device
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        extra = torch.stack([loss.to(device, torch.float32), self._code(stop, device)])
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [extra])
        self._all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()
        return flat[-2], STOPS[int(flat[-1].item())]

    def agree(self, stop: str | None, device: str) -> str | None:
        """Rank 0's stop request, known to every rank."""
        code = self._code(stop, device).reshape(1)
        self._all_reduce(code)
        return STOPS[int(code.item())]

    def announce(self, order: str | None) -> None:
        """Rank 0: tell the others the job to train (its id), IDLE (poll again) or STOP."""
        self._broadcast(order)

    def receive(self) -> str | None:
        """The other ranks: what rank 0 announced."""
        return self._broadcast(None)

    def close(self) -> None:
        """Leave the group once every rank is done with it: a barrier first, so that no rank tears down its
        connections while another still reads the last announcement (gloo then aborted that rank: "terminate
        called without an active exception", seen in about 1 of 10 runs of tests/test_distributed.py)."""
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                dist.barrier()
            except RuntimeError as e:
                raise GroupBroken(e) from e
            dist.destroy_process_group()

    # ---- helpers --------------------------------------------------------------------------------
    def _code(self, stop: str | None, device: str | torch.device) -> torch.Tensor:
        return torch.tensor(float(STOPS.index(stop) if self.main else 0), device=device)

    def _all_reduce(self, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        try:
            dist.all_reduce(tensor)
        except RuntimeError as e:  # DistBackendError and timeouts are RuntimeErrors
            raise GroupBroken(e) from e

    def _broadcast(self, order: str | None) -> str | None:
        import torch.distributed as dist

        box = [order]
        try:
            dist.broadcast_object_list(box, src=0)
        except RuntimeError as e:
            raise GroupBroken(e) from e
        return box[0]
