"""The inference engine: one copy of each base, many LoRA adapters, each with its own head.

peft cannot hold heads of different label counts in one model (modules_to_save copies are shaped by the
base's head), so the engine keeps heads outside peft: the base's head is replaced by Identity, peft routes
each row through its adapter's LoRA weights (`adapter_names=[...]`), and each row's features then go
through that adapter's own head. Adapters load on first use into an LRU cache.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from app.adapters import AdapterStore, AdapterVersion, sha256_file
from app.errors import AdapterUnloadable, NotFound
from app.models.loading import LoadedBase, load_base
from app.models.registry import ModelRegistry

log = logging.getLogger(__name__)


@dataclass
class _Resident:
    version: AdapterVersion
    key: str  # peft adapter name (peft names are module keys: no dots, so not the ref itself)
    head: nn.Linear
    nbytes: int
    loaded_at: float = field(default_factory=time.time)
    hits: int = 0


@dataclass
class _Slot:
    base: LoadedBase
    peft: Any = None  # PeftModel once the first adapter is in


class InferenceEngine:
    def __init__(
        self,
        registry: ModelRegistry,
        adapters: AdapterStore,
        device: str,
        quantization: str,
        max_loaded: int = 32,
        batch_size: int = 32,
    ):
        self.registry, self.adapters = registry, adapters
        self.device, self.quantization = device, quantization
        self.max_loaded, self.batch_size = max_loaded, batch_size
        self._slots: dict[str, _Slot] = {}
        self._resident: OrderedDict[str, _Resident] = OrderedDict()  # ref -> resident, oldest first
        self._keys = itertools.count()
        self._lock = threading.RLock()  # one owner of the models: forward passes and (un)loading serialise

    # ---- public ---------------------------------------------------------------------------------
    def predict(
        self, ref: str, texts: list[str], text_pairs: list[str | None] | None = None, field: str = "adapter"
    ) -> tuple[AdapterVersion, torch.Tensor]:
        """Probabilities [n, n_labels] of the adapter `ref` (newest version unless pinned)."""
        version = self.adapters.resolve(ref, field=field)
        with self._lock:
            res = self._ensure(version)
            res.hits += 1
            slot = self._slots[version.meta["base_model"]]
            wanted = int(version.meta.get("hyperparameters", {}).get("max_length", 512))
            return res.version, self._forward(slot, res, texts, text_pairs, slot.base.max_tokens(wanted))

    def loaded(self) -> list[dict]:
        with self._lock:
            return [
                {
                    "adapter": ref,
                    "base_model": r.version.meta["base_model"],
                    "bytes": r.nbytes,
                    "loaded_at": r.loaded_at,
                    "requests": r.hits,
                }
                for ref, r in self._resident.items()
            ]

    def unload(self, refs: list[str]) -> None:
        """Drop these versions if resident (after a delete)."""
        with self._lock:
            for ref in refs:
                if ref in self._resident:
                    self._evict(ref)

    # ---- internals ------------------------------------------------------------------------------
    def _slot(self, base_name: str) -> _Slot:
        slot = self._slots.get(base_name)
        if slot is None:
            base = load_base(self.registry.resolve(base_name), self.quantization, self.device)
            setattr(base.model, base.head_name, nn.Identity())  # features out; adapters bring heads
            base.model.eval()
            slot = self._slots[base_name] = _Slot(base)
        return slot

    def _ensure(self, version: AdapterVersion) -> _Resident:
        res = self._resident.get(version.ref)
        if res is not None and res.version.meta.get("sha256") == version.meta.get("sha256"):
            self._resident.move_to_end(version.ref)
            return res
        if res is not None:  # same ref, other weights on disk: never serve a stale head
            self._evict(version.ref)
        res = self._load(version)
        self._resident[version.ref] = res
        while len(self._resident) > self.max_loaded:
            self._evict(next(iter(self._resident)))
        return res

    def _load(self, version: AdapterVersion) -> _Resident:
        from safetensors.torch import load_file

        meta = version.meta
        try:
            if meta.get("sha256") and sha256_file(version.weights) != meta["sha256"]:
                raise AdapterUnloadable(f"adapter {version.ref}: weights do not match their checksum")
            state = load_file(str(version.weights), device=self.device)
        except FileNotFoundError:  # deleted meanwhile, or a store holding no safetensors weights
            raise NotFound(f"no adapter {version.ref} (no safetensors weights)", field="adapter") from None
        slot = self._slot(meta["base_model"])
        prefix = f"base_model.model.{meta['head']}."
        head_state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if "weight" not in head_state or head_state["weight"].shape[0] != len(meta["labels"]):
            raise AdapterUnloadable(f"adapter {version.ref}: its head does not fit its {len(meta['labels'])} labels")
        head = nn.Linear(head_state["weight"].shape[1], head_state["weight"].shape[0], bias="bias" in head_state)
        head.load_state_dict(head_state)
        head.to(self.device).eval()
        key = f"a{next(self._keys)}"
        try:
            self._add_lora(slot, key, version, {k: v for k, v in state.items() if not k.startswith(prefix)})
        except Exception as e:
            if slot.peft is not None and key in slot.peft.peft_config:
                slot.peft.delete_adapter(key)
                _keep_active_valid(slot.peft)
            raise AdapterUnloadable(f"adapter {version.ref} does not fit base {meta['base_model']}: {e}") from e
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        log.info("loaded adapter %s (%d bytes) as %s", version.ref, nbytes, key)
        return _Resident(version, key, head, nbytes)

    @staticmethod
    def _add_lora(slot: _Slot, key: str, version: AdapterVersion, lora_state: dict[str, torch.Tensor]) -> None:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        config = LoraConfig.from_pretrained(str(version.path))
        config.task_type, config.modules_to_save, config.inference_mode = None, None, True
        if slot.peft is None:
            slot.peft = get_peft_model(slot.base.model, config, adapter_name=key)
        else:
            slot.peft.add_adapter(key, config)
        result = set_peft_model_state_dict(slot.peft, lora_state, adapter_name=key)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            raise ValueError(f"unexpected weights {unexpected[:3]}")
        _keep_active_valid(slot.peft)
        slot.peft.eval()

    def _evict(self, ref: str) -> None:
        res = self._resident.pop(ref)
        peft_model = self._slots[res.version.meta["base_model"]].peft
        peft_model.delete_adapter(res.key)
        _keep_active_valid(peft_model)
        log.info("unloaded adapter %s", ref)

    def _forward(
        self, slot: _Slot, res: _Resident, texts: list[str], pairs: list[str | None] | None, max_length: int
    ) -> torch.Tensor:
        tok = slot.base.tokenizer
        # Sort by length so each chunk pads little; put results back in request order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + len((pairs or [None] * len(texts))[i] or ""))
        out = torch.empty(len(texts), res.head.out_features)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch_texts = [texts[i] for i in idx]
                batch_pairs = [pairs[i] or "" for i in idx] if pairs and any(pairs) else None
                enc = tok(
                    batch_texts, batch_pairs, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
                ).to(self.device)
                feats = slot.peft(**enc, adapter_names=[res.key] * len(idx)).logits
                probs = torch.softmax(res.head(feats.to(res.head.weight.dtype)).float(), dim=-1)
                out[idx] = probs.cpu()
        return out


def _keep_active_valid(peft_model: Any) -> None:
    """Rows pick their adapter through `adapter_names`, but peft still checks its *active* adapter on every
    forward: keep it pointing at one that exists after adds and deletes."""
    configs = peft_model.peft_config
    active = peft_model.active_adapter  # PeftModel's own copy, which can go stale apart from the tuner's
    names = [active] if isinstance(active, str) else list(active or [])
    if configs and not all(a in configs for a in [*names, *peft_model.active_adapters]):
        peft_model.set_adapter(next(iter(configs)))
