"""Many LoRA adapters on one frozen base, each row of a batch routed through its own adapter.

Every Linear that some adapter targets is wrapped in a `MultiLoRALinear` holding the LoRA weights of all
resident adapters stacked in slots (A: [slots, r, in], B·scale: [slots, out, r]). A forward gathers each row's
slot and adds `x @ A_rowᵀ @ B_rowᵀ` with two batched matmuls: the cost does not grow with the number of
adapters in the batch (peft's `adapter_names` loops over the adapters inside every layer, so its cost grows
with them). Loading an adapter is a copy into a free slot; unloading zeroes it.

An adapter that serves alone a lot (one text at a time) can also be merged: each layer keeps a copy of its
weight with that slot's LoRA added in, and a forward whose rows all use that slot is one plain GEMM per layer,
as fast as `merge_and_unload()` (the slot layers' two small GEMMs per layer cost about a quarter of a short
text's forward on CPU). Only for plain floating-point weights (a quantized base has no weight to copy).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from app.inference.heads import SlotHead, SlotLinear, slot_layer
from app.inference.router import Router

PREFIX = "base_model.model."  # how peft names the wrapped model in saved adapter weights


class UnsupportedAdapter(ValueError):
    pass


def linear_features(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a layer LoRA can wrap: a Linear (bitsandbytes' Linear4bit / Linear8bitLt are Linears too)
    or GPT-2's Conv1D (weight stored [in, out]; its LoRA pair is the same x·Aᵀ·Bᵀ); None for anything else."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, nn.Linear):
        return int(module.in_features), int(module.out_features)
    if isinstance(module, Conv1D):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    return None


class MultiLoRALinear(nn.Module):
    def __init__(self, base: nn.Module, router: Router, capacity: int, rank: int, dtype: torch.dtype):
        super().__init__()
        self.base, self.router = base, router
        self.in_features, self.out_features = linear_features(base)
        kw = {"device": base.weight.device, "dtype": dtype}
        self.register_buffer("A", torch.zeros(capacity, rank, self.in_features, **kw), persistent=False)
        self.register_buffer("B", torch.zeros(capacity, self.out_features, rank, **kw), persistent=False)
        # SlotBank.merge: the slot merged into `merged_weight` (None where that slot adds nothing to this layer)
        self.merged_slot: int | None = None
        self.merged_weight: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged_slot is not None and self.router.single == self.merged_slot:
            return self._merged(x)
        y = self.base(x)
        rows = self.router.rows
        if rows is None or self.A.shape[1] == 0 or y.dtype != self.A.dtype:
            return y if rows is None or self.A.shape[1] == 0 else y + self._delta(x.to(self.A.dtype), rows).to(y.dtype)
        if self.router.single is not None:  # one adapter: y += (x Aᵀ) Bᵀ as two plain GEMMs, the add fused
            s = self.router.single
            y2, x2 = y.view(-1, self.out_features), x.reshape(-1, self.in_features)
            y2.addmm_(x2 @ self.A[s].T, self.B[s].T)
            return y
        y3 = y.view(x.shape[0], -1, self.out_features)
        y3.baddbmm_(*self._factors(x, rows))
        return y

    def mergeable(self) -> bool:
        """Whether the base weight is a plain floating-point Linear/Conv1D weight in the slots' dtype."""
        from transformers.pytorch_utils import Conv1D

        return type(self.base) in (nn.Linear, Conv1D) and self.base.weight.dtype == self.A.dtype

    def merge(self, slot: int) -> None:
        """Keep a copy of the base weight with `slot`'s LoRA added in (summed in fp32, stored in the weight's
        dtype, in its layout: [out, in] for a Linear, [in, out] for a Conv1D)."""
        self.unmerge()
        if self.A[slot].any():
            delta = self.B[slot].float() @ self.A[slot].float()  # [out, in]
            if not isinstance(self.base, nn.Linear):
                delta = delta.T
            self.merged_weight = (self.base.weight.float() + delta).to(self.base.weight.dtype)
        self.merged_slot = slot

    def unmerge(self) -> None:
        self.merged_slot, self.merged_weight = None, None

    def _merged(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged_weight is None:  # the merged adapter does not target this layer
            return self.base(x)
        bias = self.base.bias
        if isinstance(self.base, nn.Linear):
            return F.linear(x, self.merged_weight, bias)
        flat = x.reshape(-1, self.in_features)
        y = torch.addmm(bias, flat, self.merged_weight) if bias is not None else flat @ self.merged_weight
        return y.view(*x.shape[:-1], self.out_features)

    def _factors(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's x·Aᵀ [b, seq, r] and Bᵀ [b, r, out], gathered from its slot."""
        a = self.A.index_select(0, rows)  # [b, r, in]
        b = self.B.index_select(0, rows)  # [b, out, r]
        x3 = x.reshape(x.shape[0], -1, self.in_features)
        return torch.bmm(x3, a.transpose(1, 2)), b.transpose(1, 2)

    def _delta(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.router.single is not None:
            s = self.router.single
            return (x @ self.A[s].T) @ self.B[s].T
        h, bt = self._factors(x, rows)
        return torch.bmm(h, bt).reshape(*x.shape[:-1], self.out_features)

    def resize(self, capacity: int, rank: int) -> None:
        """Grow the slot count and/or the rank (zero padded: a padded rank adds nothing)."""
        A = self.A.new_zeros(capacity, rank, self.in_features)
        B = self.B.new_zeros(capacity, self.out_features, rank)
        n, r = min(capacity, self.A.shape[0]), min(rank, self.A.shape[1])
        A[:n, :r] = self.A[:n, :r]
        B[:n, :, :r] = self.B[:n, :, :r]
        self.A, self.B = A, B


@dataclass
class LoraWeights:
    """One adapter's LoRA pairs by module path (relative to the *ForSequenceClassification model)."""

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # path -> (A [r, in], B·scale [out, r])
    rank: int

    def nbytes(self, dtype: torch.dtype) -> int:
        """Bytes once stored in slots of `dtype`."""
        size = torch.empty(0, dtype=dtype).element_size()
        return sum((a.numel() + b.numel()) * size for a, b in self.pairs.values())


def parse_lora(state: dict[str, torch.Tensor], config: dict) -> LoraWeights:
    """LoRA pairs out of a peft `adapter_model.safetensors` state (head weights already taken out)."""
    if config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise UnsupportedAdapter("DoRA and per-module rank/alpha patterns are not served")
    r, alpha = _rank_and_alpha(config)
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in state.items():
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise UnsupportedAdapter(f"unexpected weight {key}")
            if key.replace(".lora_B.weight", ".lora_A.weight") not in state:
                raise UnsupportedAdapter(f"{key}: a LoRA B without its A")
            continue
        path = key.removeprefix(PREFIX).removesuffix(".lora_A.weight")
        b = state.get(key.replace(".lora_A.weight", ".lora_B.weight"))
        if b is None or a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise UnsupportedAdapter(f"{path}: LoRA A/B shapes do not pair up")
        pairs[path] = (a.float(), b.float() * scale)
    if not pairs:
        raise UnsupportedAdapter("no LoRA weights")
    return LoraWeights(pairs, max(a.shape[0] for a, _ in pairs.values()))


def _rank_and_alpha(config: dict) -> tuple[int, float]:
    """`r` a positive integer, `lora_alpha` a number (default: r), else UnsupportedAdapter."""
    r, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise UnsupportedAdapter(f"adapter_config.json: r must be a positive integer, not {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise UnsupportedAdapter(f"adapter_config.json: lora_alpha must be a number, not {alpha!r}")
    return r, float(alpha)


class SlotBank:
    """The wrapped layers of one base model and which slot each resident adapter holds: its LoRA pairs in the
    targeted layers, and its task head in the head's slot layers (app/inference/heads.py)."""

    def __init__(self, model: nn.Module, max_slots: int, dtype: torch.dtype = torch.float32, heads: Sequence[str] = ()):
        self.model, self.max_slots, self.dtype = model, max_slots, dtype
        self.device = next(model.parameters()).device
        self.router = Router()
        self.layers: dict[str, MultiLoRALinear] = {}
        self.heads: dict[str, SlotHead] = {}  # path of each head module holding weights -> its slot layer
        self.capacity, self.rank = 0, 0
        self.free: list[int] = []
        self.merged: int | None = None  # the slot merged into a copy of each layer's weight (merge)
        for name in heads:
            self._wrap_head(name)
        # the layer giving the logits: the head's last Linear (each adapter's scores are its first n_labels)
        self.logits = next((p for p, h in reversed(self.heads.items()) if isinstance(h, SlotLinear)), None)

    def _wrap_head(self, name: str) -> None:
        """Every module of the head `name` that holds weights becomes a slot layer."""
        head = self.model.get_submodule(name)
        for path, module in list(head.named_modules(prefix=name)):
            if not any(True for _ in module.parameters(recurse=False)):
                continue
            layer = slot_layer(module, self.router, self.capacity, self.device)
            if layer is None:
                raise UnsupportedAdapter(f"head module {path} is a {type(module).__name__}: not served")
            parent, _, child = path.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, child, layer)
            self.heads[path] = layer

    def _linear(self, path: str) -> tuple[nn.Module, str, nn.Module]:
        """The frozen Linear (or Conv1D) at `path` (relative to the model), its parent and its attribute name."""
        parent_path, _, child = path.rpartition(".")
        try:
            parent = self.model.get_submodule(parent_path) if parent_path else self.model
            target = getattr(parent, child)
        except AttributeError:
            raise UnsupportedAdapter(f"the base has no module {path}") from None
        if isinstance(target, MultiLoRALinear):
            target = target.base
        if linear_features(target) is None:
            raise UnsupportedAdapter(f"{path} is a {type(target).__name__}, not a Linear")
        return parent, child, target

    def _wrap(self, path: str) -> MultiLoRALinear:
        layer = self.layers.get(path)
        if layer is None:
            parent, child, target = self._linear(path)
            layer = MultiLoRALinear(target, self.router, self.capacity, self.rank, self.dtype)
            setattr(parent, child, layer)
            self.layers[path] = layer
        return layer

    def add(self, lora: LoraWeights, head: dict[str, torch.Tensor] | None = None) -> int:
        """Copy an adapter (its LoRA pairs, and its head's weights by name, e.g. `classifier.dense.weight`)
        into a free slot; returns the slot. Every shape is checked before anything is touched."""
        head_parts = self.check(lora, head or {})
        if not self.free:
            if self.capacity >= self.max_slots:
                raise RuntimeError("no free slot")  # the engine evicts before it adds
            self._resize(min(self.max_slots, max(8, 2 * self.capacity)), self.rank)
        if lora.rank > self.rank:
            self._resize(self.capacity, lora.rank)
        for path in lora.pairs:
            self._wrap(path)
        slot = self.free.pop(0)
        for path, layer in self.layers.items():
            layer.A[slot].zero_()
            layer.B[slot].zero_()
            if path in lora.pairs:
                a, b = lora.pairs[path]
                layer.A[slot, : a.shape[0]] = a
                layer.B[slot, :, : a.shape[0]] = b
        for path, part in head_parts.items():
            self.heads[path].put(slot, part)
        return slot

    def check(self, lora: LoraWeights, head: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """LoRA pairs that fit their layers, and a head whose weights are exactly the head's slot layers';
        returns the head's weights by layer."""
        for path, (a, b) in lora.pairs.items():
            in_features, out_features = linear_features(self._linear(path)[2])
            if (b.shape[0], a.shape[1]) != (out_features, in_features):
                raise UnsupportedAdapter(f"{path}: LoRA shape {tuple(b.shape[:1]) + tuple(a.shape[1:])} does not fit")
        parts: dict[str, dict[str, torch.Tensor]] = {path: {} for path in self.heads}
        for key, value in head.items():
            path, _, name = key.rpartition(".")
            if path not in parts:
                raise UnsupportedAdapter(f"head weight {key} belongs to no head module of this base")
            parts[path][name] = value.float()
        for path, layer in self.heads.items():
            problem = layer.check(parts[path])
            if problem:
                raise UnsupportedAdapter(f"head module {path}: {problem}")
        return parts

    @contextmanager
    def routed(self, slots: list[int]) -> Iterator[None]:
        """Forwards inside this block send row i through the adapter in `slots[i]`."""
        self.router.rows = torch.tensor(slots, device=self.device)
        self.router.single = slots[0] if len(set(slots)) == 1 else None
        try:
            yield
        finally:
            self.router.rows = self.router.single = None

    def merge(self, slot: int, max_bytes: int) -> bool:
        """Merge `slot` into a copy of the weight of each layer it targets (replacing the slot merged before):
        forwards whose rows all use it then run as a merged model. False, and nothing merged, when one of
        those layers is not mergeable (quantized) or the copies would take more than `max_bytes`."""
        if not 0 <= slot < self.capacity or slot in self.free:
            raise ValueError(f"slot {slot} is not in use")
        targeted = [layer for layer in self.layers.values() if layer.A[slot].any()]
        size = sum(layer.base.weight.nbytes for layer in targeted)
        if size > max_bytes or not all(layer.mergeable() for layer in targeted):
            return False
        self.unmerge()
        for layer in self.layers.values():
            layer.merge(slot)
        self.merged = slot
        return True

    def unmerge(self) -> None:
        for layer in self.layers.values():
            layer.unmerge()
        self.merged = None

    def remove(self, slot: int) -> None:
        """Zero a slot and give it back; a slot that is not in use is refused (it would be handed out twice)."""
        if not 0 <= slot < self.capacity or slot in self.free:
            raise ValueError(f"slot {slot} is not in use")
        if slot == self.merged:
            self.unmerge()
        for layer in self.layers.values():
            layer.A[slot].zero_()
            layer.B[slot].zero_()
        for head in self.heads.values():
            head.clear(slot)
        self.free.append(slot)
        self.free.sort()

    def _resize(self, capacity: int, rank: int) -> None:
        for layer in self.layers.values():
            layer.resize(capacity, rank)
        if capacity != self.capacity:
            for head in self.heads.values():
                head.resize(capacity)
        self.free.extend(range(self.capacity, capacity))
        self.capacity, self.rank = capacity, rank
