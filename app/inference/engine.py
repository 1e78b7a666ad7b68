"""The inference engine: one copy of each base, many LoRA adapters with their own heads, micro-batches.

Callers (`predict`, from any thread) put their texts on a queue and wait. One model-owning thread takes
whatever is queued (waiting up to `batch_wait_ms` only for callers already on their way in), up to
`batch_size` rows, loads any adapter that is not resident yet, and runs one forward pass for the whole batch
even when its rows name different adapters: each row goes through its own adapter's LoRA weights
(`multilora`), then through its own adapter's head, so adapters with different label sets share one batch.
Adapters stay resident in an LRU bounded by count and bytes; deleting one unloads it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from app.adapters import AdapterStore, AdapterVersion, sha256_file
from app.errors import AdapterUnloadable, NotFound, PeftServeError
from app.inference.multilora import PREFIX, SlotBank, UnsupportedAdapter, parse_lora
from app.models.loading import LoadedBase, load_base
from app.models.registry import ModelRegistry

log = logging.getLogger(__name__)


@dataclass
class _Resident:
    version: AdapterVersion
    slot: int
    head: nn.Linear
    nbytes: int
    loaded_at: float = field(default_factory=time.time)
    hits: int = 0


@dataclass
class _Base:
    base: LoadedBase
    bank: SlotBank


@dataclass
class _Request:
    """A slice (at most one batch) of one caller's texts for one adapter version."""

    version: AdapterVersion
    texts: list[str]
    pairs: list[str] | None
    future: Future = field(default_factory=Future)


class InferenceEngine:
    def __init__(
        self,
        registry: ModelRegistry,
        adapters: AdapterStore,
        device: str,
        quantization: str,
        max_loaded: int = 32,
        batch_size: int = 32,
        max_loaded_bytes: int = 1 << 30,
        batch_wait_ms: float = 2.0,
    ):
        self.registry, self.adapters = registry, adapters
        self.device, self.quantization = device, quantization
        self.max_loaded, self.max_loaded_bytes = max_loaded, max_loaded_bytes
        self.batch_size, self.batch_wait = batch_size, batch_wait_ms / 1000
        self._bases: dict[str, _Base] = {}
        self._resident: OrderedDict[str, _Resident] = OrderedDict()  # ref -> resident, least recent first
        self._lock = threading.RLock()  # models and the LRU: held by the batch thread and by (un)load calls
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._carry: list[_Request] = []  # taken from the queue but left for the next batch
        self._arriving = 0  # callers between entering predict() and queueing their requests
        self._arriving_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.stats = {"batches": 0, "rows": 0, "loads": 0, "evictions": 0, "hits": 0}

    # ---- public ---------------------------------------------------------------------------------
    def predict(
        self, ref: str, texts: list[str], text_pairs: list[str | None] | None = None, field: str = "adapter"
    ) -> tuple[AdapterVersion, torch.Tensor]:
        """Probabilities [n, n_labels] of the adapter `ref` (newest version unless pinned)."""
        with self._arriving_lock:
            self._arriving += 1
        try:
            version = self.adapters.resolve(ref, field=field)
            pairs = [p or "" for p in text_pairs] if text_pairs and any(text_pairs) else None
            # Long requests go in length-sorted slices, so each forward pads little and other callers interleave.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + (len(pairs[i]) if pairs else 0))
            slices = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            requests = [
                _Request(version, [texts[i] for i in idx], [pairs[i] for i in idx] if pairs else None) for idx in slices
            ]
            self._start()
            for r in requests:
                self._queue.put(r)
        finally:
            with self._arriving_lock:
                self._arriving -= 1
        out = torch.empty(len(texts), len(version.labels))
        for idx, r in zip(slices, requests, strict=True):
            out[idx] = r.future.result()
        return version, out

    def preload(self, refs: list[str]) -> None:
        for ref in refs:
            try:
                with self._lock:
                    self._ensure(self.adapters.resolve(ref), pinned=set())
            except PeftServeError as e:
                log.warning("preload of %s failed: %s", ref, e.message)

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

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    # ---- the batch thread -----------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)
                    self._thread.start()

    def _next(self, timeout: float | None) -> _Request | None:
        if self._carry:
            return self._carry.pop(0)
        if timeout is None:
            return self._queue.get()
        try:
            return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch, rows = [first], len(first.texts)
            adapters = {first.version.ref}
            deadline = time.monotonic() + self.batch_wait
            while rows < self.batch_size:
                # Wait only for callers already inside predict(); an idle engine answers a lone request at once.
                wait = deadline - time.monotonic() if self._arriving > 0 else 0.0
                item = self._next(max(0.0, wait))
                if item is None:
                    if self._arriving > 0 and time.monotonic() < deadline:
                        continue
                    break
                if (
                    item is None
                    or rows + len(item.texts) > self.batch_size
                    or (item.version.ref not in adapters and len(adapters) >= self.max_loaded)
                ):
                    self._carry.append(item)
                    break
                batch.append(item)
                rows += len(item.texts)
                adapters.add(item.version.ref)
            try:
                results = self._run(batch)
            except Exception as e:  # a failed forward fails its batch, never the thread
                log.exception("inference batch failed")
                results = {id(r): e for r in batch}
            for r in batch:
                res = results[id(r)]
                if isinstance(res, BaseException):
                    r.future.set_exception(res)
                else:
                    r.future.set_result(res)

    def _run(self, batch: list[_Request]) -> dict[int, torch.Tensor | BaseException]:
        results: dict[int, torch.Tensor | BaseException] = {}
        with self._lock:
            pinned = {r.version.ref for r in batch}
            live: list[tuple[_Request, _Resident]] = []
            for r in batch:
                try:
                    res = self._ensure(r.version, pinned)
                except PeftServeError as e:
                    results[id(r)] = e
                    continue
                res.hits += 1
                live.append((r, res))
            by_base: dict[str, list[tuple[_Request, _Resident]]] = {}
            for r, res in live:
                by_base.setdefault(r.version.meta["base_model"], []).append((r, res))
            for name, items in by_base.items():
                results.update(self._forward(self._bases[name], items))
            self.stats["batches"] += 1
            self.stats["rows"] += sum(len(r.texts) for r, _ in live)
        return results

    def _forward(self, slot: _Base, items: list[tuple[_Request, _Resident]]) -> dict[int, torch.Tensor]:
        tok, base = slot.base.tokenizer, slot.base
        rows: list[tuple[int, int, dict[str, list[int]]]] = []  # (item, row in item, encoding)
        for n, (r, _) in enumerate(items):
            wanted = int(r.version.meta.get("hyperparameters", {}).get("max_length", 512))
            enc = tok(r.texts, r.pairs, truncation=True, max_length=base.max_tokens(wanted))
            keys = list(enc.keys())
            rows.extend((n, i, {k: enc[k][i] for k in keys}) for i in range(len(r.texts)))
        width = max(len(e["input_ids"]) for _, _, e in rows)
        pad = {"input_ids": tok.pad_token_id or 0}
        tensors = {
            k: torch.tensor([e[k] + [pad.get(k, 0)] * (width - len(e[k])) for _, _, e in rows], device=self.device)
            for k in rows[0][2]
        }
        slots = [items[n][1].slot for n, _, _ in rows]
        bank = slot.bank
        bank.router.rows = torch.tensor(slots, device=self.device)
        bank.router.single = slots[0] if len(set(slots)) == 1 else None
        try:
            with torch.inference_mode():
                feats = base.model(**tensors).logits
                out: dict[int, torch.Tensor] = {}
                start = 0
                for r, res in items:
                    f = feats[start : start + len(r.texts)]
                    start += len(r.texts)
                    out[id(r)] = torch.softmax(res.head(f.to(res.head.weight.dtype)).float(), dim=-1).cpu()
        finally:
            bank.router.rows = bank.router.single = None
        return out

    # ---- residency ------------------------------------------------------------------------------
    def _base(self, name: str) -> _Base:
        slot = self._bases.get(name)
        if slot is None:
            base = load_base(self.registry.resolve(name), self.quantization, self.device)
            setattr(base.model, base.head_name, nn.Identity())  # features out; adapters bring heads
            base.model.eval()
            slot = self._bases[name] = _Base(base, SlotBank(base.model, self.max_loaded))
        return slot

    def _ensure(self, version: AdapterVersion, pinned: set[str]) -> _Resident:
        res = self._resident.get(version.ref)
        if res is not None and res.version.meta.get("sha256") == version.meta.get("sha256"):
            self._resident.move_to_end(version.ref)
            self.stats["hits"] += 1
            return res
        if res is not None:  # same ref, other weights on disk: never serve a stale head
            self._evict(version.ref)
        res = self._load(version, pinned)
        self._resident[version.ref] = res
        self.stats["loads"] += 1
        return res

    def _make_room(self, nbytes: int, pinned: set[str]) -> None:
        """Evict least recently used adapters (never one the running batch needs) until one more fits."""
        used = sum(r.nbytes for r in self._resident.values())
        for ref in [ref for ref in self._resident if ref not in pinned]:
            if len(self._resident) < self.max_loaded and used + nbytes <= self.max_loaded_bytes:
                break
            used -= self._resident[ref].nbytes
            self._evict(ref)

    def _load(self, version: AdapterVersion, pinned: set[str]) -> _Resident:
        import json

        from safetensors.torch import load_file

        meta = version.meta
        try:
            if meta.get("sha256") and sha256_file(version.weights) != meta["sha256"]:
                raise AdapterUnloadable(f"adapter {version.ref}: weights do not match their checksum")
            state = load_file(str(version.weights), device="cpu")
            config = json.loads((version.path / "adapter_config.json").read_text())
        except FileNotFoundError:  # deleted meanwhile, or a store holding no safetensors weights
            raise NotFound(f"no adapter {version.ref} (no safetensors weights)", field="adapter") from None
        base = self._base(meta["base_model"])
        prefix = f"{PREFIX}{meta['head']}."
        head_state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if "weight" not in head_state or head_state["weight"].shape != (len(meta["labels"]), base.base.hidden_size):
            raise AdapterUnloadable(f"adapter {version.ref}: its head does not fit its labels and base")
        head = nn.Linear(head_state["weight"].shape[1], head_state["weight"].shape[0], bias="bias" in head_state)
        head.load_state_dict(head_state)
        head.to(self.device).eval()
        try:
            lora = parse_lora({k: v for k, v in state.items() if not k.startswith(prefix)}, config)
        except (UnsupportedAdapter, KeyError, ValueError) as e:
            raise AdapterUnloadable(f"adapter {version.ref} cannot be served: {e}") from e
        nbytes = lora.nbytes + sum(p.numel() * p.element_size() for p in head.parameters())
        self._make_room(nbytes, pinned)
        try:
            slot = base.bank.add(lora)
        except UnsupportedAdapter as e:
            raise AdapterUnloadable(f"adapter {version.ref} does not fit base {meta['base_model']}: {e}") from e
        log.info("loaded adapter %s (%d bytes) into slot %d", version.ref, nbytes, slot)
        return _Resident(version, slot, head, nbytes)

    def _evict(self, ref: str) -> None:
        res = self._resident.pop(ref)
        self._bases[res.version.meta["base_model"]].bank.remove(res.slot)
        self.stats["evictions"] += 1
        log.info("unloaded adapter %s", ref)

    def memory(self) -> dict[str, Any]:
        with self._lock:
            return {
                "resident_bytes": sum(r.nbytes for r in self._resident.values()),
                "slot_bytes": sum(b.bank.nbytes for b in self._bases.values()),
            }
