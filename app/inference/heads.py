"""Each resident adapter's own task head, inside the shared base: every row of a batch goes through its slot's.

A task head is every module of a *ForSequenceClassification model outside its backbone (BERT's `classifier`;
RoBERTa's `classifier.dense` + `classifier.out_proj`; DistilBERT's `pre_classifier` + `classifier`; DeBERTa-v2's
`pooler` + `classifier`; GPT-2's and Llama's `score`; see app/base_models/heads.py). Serving replaces each of
its parameter-holding modules (Linear, LayerNorm) by a slot layer that holds one copy of the weights per slot
and reads which slot each row uses from the bank's router. The model's own forward runs unchanged around them
(pooling, activations, dropout), so each architecture's head works as it does in transformers and in peft.

Heads stay fp32 (they are trained and saved in fp32) whatever the base's dtype. The logits layer is as wide
as the widest resident adapter's label set; an adapter's logits are its first `n_labels` columns.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from app.inference.router import Router


class SlotLinear(nn.Module):
    """A head Linear with one weight (and bias) per slot."""

    def __init__(self, base: nn.Linear, router: Router, capacity: int, device: torch.device):
        super().__init__()
        self.router, self.in_features = router, int(base.in_features)
        self.has_bias = base.bias is not None
        kw = {"device": device, "dtype": torch.float32}
        self.register_buffer("weight", torch.zeros(capacity, 0, self.in_features, **kw), persistent=False)
        self.register_buffer("bias", torch.zeros(capacity, 0, **kw), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.router.single is not None:
            s = self.router.single
            return F.linear(x, self.weight[s], self.bias[s] if self.has_bias else None)
        rows = self.router.rows
        if rows is None:
            raise RuntimeError("a slot head runs only inside SlotBank.routed()")
        w = self.weight.index_select(0, rows)  # [b, out, in]
        y = torch.bmm(x.reshape(x.shape[0], -1, self.in_features), w.transpose(1, 2))  # [b, ..., out]
        if self.has_bias:
            y = y + self.bias.index_select(0, rows).unsqueeze(1)
        return y.reshape(*x.shape[:-1], w.shape[1])

    def check(self, state: dict[str, torch.Tensor]) -> str | None:
        wanted = {"weight", "bias"} if self.has_bias else {"weight"}
        if set(state) != wanted:
            return f"{sorted(wanted)} expected, not {sorted(state)}"
        w = state["weight"]
        if w.dim() != 2 or w.shape[1] != self.in_features:
            return f"weight of shape [out, {self.in_features}] expected"
        if self.has_bias and state["bias"].shape != (w.shape[0],):
            return "bias does not match"
        return None

    def put(self, slot: int, state: dict[str, torch.Tensor]) -> None:
        out = state["weight"].shape[0]
        if out > self.weight.shape[1]:
            self._resize(self.weight.shape[0], out)
        self.weight[slot].zero_()
        self.bias[slot].zero_()
        self.weight[slot, :out] = state["weight"]
        if self.has_bias:
            self.bias[slot, :out] = state["bias"]

    def clear(self, slot: int) -> None:
        self.weight[slot].zero_()
        self.bias[slot].zero_()

    def resize(self, capacity: int) -> None:
        self._resize(capacity, self.weight.shape[1])

    def _resize(self, capacity: int, out: int) -> None:
        weight = self.weight.new_zeros(capacity, out, self.in_features)
        bias = self.bias.new_zeros(capacity, out)
        n, o = min(capacity, self.weight.shape[0]), self.weight.shape[1]
        weight[:n, :o], bias[:n, :o] = self.weight[:n], self.bias[:n]
        self.weight, self.bias = weight, bias


class SlotLayerNorm(nn.Module):
    """A head LayerNorm with one scale (and shift) per slot."""

    def __init__(self, base: nn.LayerNorm, router: Router, capacity: int, device: torch.device):
        super().__init__()
        self.router, self.shape, self.eps = router, tuple(base.normalized_shape), base.eps
        self.affine = base.weight is not None
        self.has_bias = base.bias is not None
        kw = {"device": device, "dtype": torch.float32}
        self.register_buffer("weight", torch.zeros(capacity, *self.shape, **kw), persistent=False)
        self.register_buffer("bias", torch.zeros(capacity, *self.shape, **kw), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.router.single is not None:
            s = self.router.single
            w = self.weight[s] if self.affine else None
            return F.layer_norm(x, self.shape, w, self.bias[s] if self.has_bias else None, self.eps)
        rows = self.router.rows
        if rows is None:
            raise RuntimeError("a slot head runs only inside SlotBank.routed()")
        y = F.layer_norm(x, self.shape, None, None, self.eps)
        view = (x.shape[0],) + (1,) * (x.dim() - 1 - len(self.shape)) + self.shape
        if self.affine:
            y = y * self.weight.index_select(0, rows).view(view)
        if self.has_bias:
            y = y + self.bias.index_select(0, rows).view(view)
        return y

    def check(self, state: dict[str, torch.Tensor]) -> str | None:
        wanted = {"weight"} if self.affine else set()
        wanted |= {"bias"} if self.has_bias else set()
        if set(state) != wanted or any(tuple(v.shape) != self.shape for v in state.values()):
            return f"{sorted(wanted)} of shape {list(self.shape)} expected"
        return None

    def put(self, slot: int, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            getattr(self, name)[slot] = value

    def clear(self, slot: int) -> None:
        self.weight[slot].zero_()
        self.bias[slot].zero_()

    def resize(self, capacity: int) -> None:
        for name in ("weight", "bias"):
            old = getattr(self, name)
            new = old.new_zeros(capacity, *self.shape)
            n = min(capacity, old.shape[0])
            new[:n] = old[:n]
            setattr(self, name, new)


SlotHead = SlotLinear | SlotLayerNorm
SLOT_TYPES: tuple[tuple[type[nn.Module], type[nn.Module]], ...] = (
    (nn.Linear, SlotLinear),
    (nn.LayerNorm, SlotLayerNorm),
)


def slot_layer(module: nn.Module, router: Router, capacity: int, device: torch.device) -> SlotHead | None:
    """The slot layer standing in for a head module (None for a module of a type heads are not served with)."""
    for plain, slotted in SLOT_TYPES:
        if type(module) is plain:
            return slotted(module, router, capacity, device)
    return None
