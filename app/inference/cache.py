"""Which adapters are resident in the engine: load on first use, an LRU bounded by count and bytes.

Each base model is loaded once with a SlotBank: per-row LoRA slots in the layers adapters target, and per-row
copies of the task head (every adapter brings its own head). Loading an adapter reads its safetensors once
(hashed, then parsed; never pickle) and copies its LoRA pairs and its head into a free slot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as safetensors_load

from app.base_models.loading import LoadedBase, load_base
from app.base_models.registry import ModelRegistry
from app.errors import AdapterUnloadable, NotFound
from app.inference.multilora import PREFIX, LoraWeights, SlotBank, UnsupportedAdapter, parse_lora
from app.stores.adapters import AdapterStore, AdapterVersion

log = logging.getLogger(__name__)


@dataclass
class Resident:
    version: AdapterVersion
    slot: int
    nbytes: int
    loaded_at: float = field(default_factory=time.time)
    hits: int = 0


@dataclass
class ResidentBase:
    base: LoadedBase
    bank: SlotBank
    lone: int | None = None  # the slot of the last forward if all its rows used one slot
    streak: int = 0  # how many forwards in a row used `lone` alone (the engine merges it at MERGE_AFTER)


class AdapterCache:
    """Not thread-safe by itself: the engine calls it under its model lock."""

    def __init__(
        self,
        registry: ModelRegistry,
        adapters: AdapterStore,
        device: str,
        quantization: str,
        dtype: torch.dtype,
        max_loaded: int,
        max_loaded_bytes: int,
    ):
        self.registry, self.adapters = registry, adapters
        self.device, self.quantization, self.dtype = device, quantization, dtype
        self.max_loaded, self.max_loaded_bytes = max_loaded, max_loaded_bytes
        self.bases: dict[str, ResidentBase] = {}
        self.resident: OrderedDict[str, Resident] = OrderedDict()  # ref -> resident, least recent first
        self.stats = {"loads": 0, "evictions": 0, "hits": 0}

    def base(self, name: str) -> ResidentBase:
        slot = self.bases.get(name)
        if slot is None:
            base = load_base(self.registry.resolve(name), self.quantization, self.device, self.dtype)
            dtype = self.dtype if base.quantization == "none" else torch.float32  # LoRA slots match the base
            base.model.eval()
            bank = SlotBank(base.model, self.max_loaded, dtype, heads=base.heads)
            slot = self.bases[name] = ResidentBase(base, bank)
        return slot

    def ensure(self, version: AdapterVersion, pinned: set[str]) -> Resident:
        res = self.resident.get(version.ref)
        if res is not None and res.version.meta.get("sha256") == version.meta.get("sha256"):
            self.resident.move_to_end(version.ref)
            self.stats["hits"] += 1
            return res
        if res is not None:  # same ref, other weights on disk: never serve a stale head
            self.evict(version.ref)
        res = self.load(version, pinned)
        self.resident[version.ref] = res
        self.stats["loads"] += 1
        return res

    def make_room(self, nbytes: int, pinned: set[str]) -> None:
        """Evict least recently used adapters (never one the running batch needs) until one more fits."""
        used = sum(r.nbytes for r in self.resident.values())
        for ref in [ref for ref in self.resident if ref not in pinned]:
            if len(self.resident) < self.max_loaded and used + nbytes <= self.max_loaded_bytes:
                break
            used -= self.resident[ref].nbytes
            self.evict(ref)

    def load(self, version: AdapterVersion, pinned: set[str]) -> Resident:
        meta = version.meta
        try:
            data = version.weights.read_bytes()  # read once: hashed, then parsed (safetensors: no pickle)
            if meta.get("sha256") and hashlib.sha256(data).hexdigest() != meta["sha256"]:
                raise AdapterUnloadable(f"adapter {version.ref}: weights do not match their checksum")
            state = safetensors_load(data)  # load_file leaks ~50 small objects a call (safetensors 0.8)
            del data
            config = json.loads((version.path / "adapter_config.json").read_text())
        except FileNotFoundError:  # deleted meanwhile, or a store holding no safetensors weights
            raise NotFound(f"no adapter {version.ref} (no safetensors weights)", field="adapter") from None
        base = self.base(meta["base_model"])
        try:
            lora, head = self.parse(base, state, config, meta)
        except UnsupportedAdapter as e:
            raise AdapterUnloadable(f"adapter {version.ref} cannot be served: {e}") from e
        nbytes = lora.nbytes(base.bank.dtype) + sum(v.numel() * 4 for v in head.values())  # heads stay fp32
        self.make_room(nbytes, pinned)
        try:
            slot = base.bank.add(lora, head)
        except UnsupportedAdapter as e:
            raise AdapterUnloadable(f"adapter {version.ref} does not fit base {meta['base_model']}: {e}") from e
        log.info("loaded adapter %s (%d bytes) into slot %d", version.ref, nbytes, slot)
        return Resident(version, slot, nbytes)

    @staticmethod
    def parse(
        base: ResidentBase, state: dict[str, torch.Tensor], config: dict, meta: dict
    ) -> tuple[LoraWeights, dict[str, torch.Tensor]]:
        """An adapter's LoRA pairs and head weights, checked against the base they are for (its head modules,
        revision, label count, every layer's shape); anything else is UnsupportedAdapter, saying what."""
        head, rest = _split_head(state, meta)
        try:
            _check_base(meta, base.base)
            _check_labels(head, meta["labels"], base.bank.logits)
            lora = parse_lora(rest, config)
        except UnsupportedAdapter:
            raise
        except (KeyError, ValueError) as e:  # a config or metadata value missing or of the wrong kind
            raise UnsupportedAdapter(f"{type(e).__name__}: {e}") from e
        base.bank.check(lora, head)
        return lora, head

    def evict(self, ref: str) -> None:
        res = self.resident.pop(ref)
        self.bases[res.version.meta["base_model"]].bank.remove(res.slot)
        self.stats["evictions"] += 1
        log.info("unloaded adapter %s", ref)

    def loaded(self) -> list[dict]:
        return [
            {
                "adapter": ref,
                "base_model": r.version.meta["base_model"],
                "bytes": r.nbytes,
                "loaded_at": r.loaded_at,
                "requests": r.hits,
            }
            for ref, r in self.resident.items()
        ]

    def unload(self, refs: list[str]) -> None:
        for ref in refs:
            if ref in self.resident:
                self.evict(ref)


def _split_head(state: dict[str, torch.Tensor], meta: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The head's weights (by path in the model, e.g. `classifier.dense.weight`) and the LoRA weights."""
    heads = meta.get("heads") or [meta["head"]]  # adapters saved before multi-part heads name one module
    prefixes = tuple(f"{PREFIX}{h}." for h in heads)
    head = {k.removeprefix(PREFIX): v for k, v in state.items() if k.startswith(prefixes)}
    return head, {k: v for k, v in state.items() if not k.startswith(prefixes)}


def _check_base(meta: dict, base: LoadedBase) -> None:
    """The adapter was trained on this base: the same head modules, the same revision where it recorded one."""
    heads = meta.get("heads") or [meta["head"]]
    if list(heads) != base.heads:
        raise UnsupportedAdapter(f"its head {heads} is not this base's head {base.heads}")
    trained_on = meta.get("base_revision")
    if trained_on and base.revision and trained_on != base.revision:
        raise UnsupportedAdapter(
            f"it was trained on revision {trained_on} of {base.name}; this server has revision {base.revision}"
        )


def _check_labels(head: dict[str, torch.Tensor], labels: list[str], logits: str | None) -> None:
    """The head's logits layer has one output per label."""
    weight = head.get(f"{logits}.weight")
    if weight is None or weight.dim() != 2 or weight.shape[0] != len(labels):
        raise UnsupportedAdapter(f"its head does not give one score per label ({len(labels)} labels)")
