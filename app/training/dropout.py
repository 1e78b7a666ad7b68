"""Dropout that costs little on CPU, for training there.

On CPU torch draws one random number per element for `nn.Dropout`: on 2 cores a 512 x 384 input took
2.0-2.4 ms, about 25 times the rank-8 LoRA matmul it feeds, and the frozen base's own dropouts (hidden states,
the head) took 13% of a MiniLM training step. `CheapDropout` draws the same Bernoulli keep-mask four elements
to a 64-bit random word: each element keeps with probability 1 - p, p rounded to 1/65536, and the kept
elements are scaled by 1 / (1 - p). It uses torch's seeded generator, so training stays reproducible and
resumes exactly. `cheap_dropout` puts it in place of every `nn.Dropout` of a model for a training run (peft's
LoRA input dropouts and the base's own) and puts the originals back after. On CUDA, torch's dropout is
already one fused kernel, so it is left in place there. (Attention-probability dropout is a function call
inside the attention, not a module: it stays torch's.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

LANES = 65536  # each element's draw: one int16 lane of a 64-bit random word


class CheapDropout(torch.nn.Module):
    def __init__(self, p: float, autocast_input: bool = False):
        super().__init__()
        self.p, self.autocast_input = p, autocast_input
        self.threshold = round(p * LANES) - LANES // 2  # an int16 lane at or above it keeps its element
        self.scale = 1.0 / (1.0 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        kind = x.device.type
        # A LoRA input: the LoRA matmul takes it in the autocast dtype anyway, so the mask is applied there.
        if self.autocast_input and torch.is_autocast_enabled(kind):
            x = x.to(torch.get_autocast_dtype(kind))
        n = x.numel()
        words = torch.empty(-(-n // 4), dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
        keep = words.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return x * keep.to(x.dtype).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


Swapped = list[tuple[torch.nn.Module, str, torch.nn.Module]]  # (parent, child name, the original module)


def swap_dropouts(model: torch.nn.Module, device: str, lora_only: bool = False) -> Swapped:
    """On CPU, put a `CheapDropout` in place of every `nn.Dropout` of `model` (only peft's LoRA input dropouts
    with `lora_only`); returns what was swapped, for `restore`. Elsewhere nothing changes."""
    swapped: Swapped = []
    if device == "cpu":
        for path, parent in list(model.named_modules()):
            lora = path.endswith("lora_dropout")  # peft's ModuleDict of each adapter's input dropout
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Dropout and child.p > 0 and (lora or not lora_only):
                    setattr(parent, name, CheapDropout(child.p, autocast_input=lora).train(child.training))
                    swapped.append((parent, name, child))
    return swapped


def restore(swapped: Swapped) -> None:
    for parent, name, child in swapped:
        setattr(parent, name, child)


@contextmanager
def cheap_dropout(model: torch.nn.Module, device: str, lora_only: bool = False) -> Iterator[int]:
    """`swap_dropouts` until the block ends; yields how many were swapped."""
    swapped = swap_dropouts(model, device, lora_only)
    try:
        yield len(swapped)
    finally:
        restore(swapped)
