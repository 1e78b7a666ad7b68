"""Which slot each row of the running forward uses: set by `SlotBank.routed`, read by every slot layer."""

from __future__ import annotations

import torch


class Router:
    """`rows`: each row's slot, or None outside `SlotBank.routed`; `single`: set when every row uses one slot."""

    def __init__(self) -> None:
        self.rows: torch.Tensor | None = None
        self.single: int | None = None
