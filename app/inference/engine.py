"""The inference engine: one copy of each base, many LoRA adapters with their own heads, micro-batches.

Callers (`predict`, from any thread) put their texts on a queue and wait. One model-owning thread takes
whatever is queued (waiting up to `batch_wait_ms` only for callers already on their way in), up to
`batch_size` rows, loads any adapter that is not resident yet, and runs one forward pass for the whole batch
even when its rows name different adapters: each row goes through its own adapter's LoRA weights
(`multilora`), then through its own adapter's head, so adapters with different label sets share one batch.
Adapters stay resident in an LRU bounded by count and bytes; deleting one unloads it. An adapter that serves
alone MERGE_AFTER forwards in a row is merged into a copy of the weights it targets (`SlotBank.merge`), so a
lone text costs what it costs on a merged model.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from app.base_models.loading import LoadedBase
from app.base_models.registry import ModelRegistry
from app.base_models.tokens import Features, pad, tokenize
from app.errors import PeftServeError
from app.inference.cache import AdapterCache, Resident, ResidentBase
from app.stores.adapters import AdapterStore, AdapterVersion

log = logging.getLogger(__name__)

_STOP = object()  # put on the queue by close()
MERGE_AFTER = 8  # lone forwards of one adapter in a row before it is merged


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
        dtype: torch.dtype = torch.float32,
        bucket_overhead_tokens: int = 64,
        merged_adapter_bytes: int = 1 << 30,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.adapters = adapters
        self.batch_size, self.batch_wait = batch_size, batch_wait_ms / 1000
        self.device, self.bucket_overhead = device, bucket_overhead_tokens
        self.merged_adapter_bytes = merged_adapter_bytes
        self.cache = AdapterCache(registry, adapters, device, quantization, dtype, max_loaded, max_loaded_bytes)
        self.stats = self.cache.stats  # batches, rows, loads, evictions, hits
        self.stats.update(batches=0, rows=0, merges=0)
        self.on_batch = on_batch  # told each batch's row count (metrics)
        self._lock = threading.RLock()  # models and the LRU: held by the batch thread and by (un)load calls
        self._queue: queue.Queue[Any] = queue.Queue()  # _Request, or _STOP
        self._carry: list[_Request] = []  # taken from the queue but left for the next batch
        self._arriving = 0  # callers between entering predict() and queueing their requests
        self._arriving_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    # ---- public ---------------------------------------------------------------------------------
    def predict(
        self, ref: str, texts: list[str], text_pairs: list[str | None] | None = None
    ) -> tuple[AdapterVersion, torch.Tensor]:
        """Probabilities [n, n_labels] of the adapter `ref` (newest version unless pinned)."""
        version, future = self.submit(ref, texts, text_pairs)
        return version, future.result()

    def submit(
        self, ref: str, texts: list[str], text_pairs: list[str | None] | None = None
    ) -> tuple[AdapterVersion, Future]:
        """Queue texts for the batch thread; the future gives their probabilities [n, n_labels]."""
        return self.submit_each([ref], texts, text_pairs)[0]

    def submit_each(
        self, refs: Sequence[str | AdapterVersion], texts: list[str], text_pairs: list[str | None] | None = None
    ) -> list[tuple[AdapterVersion, Future]]:
        """The same texts for each adapter in `refs` (a ref the adapter store resolves, or a version found
        elsewhere: an epoch checkpoint), all queued at once (the batch thread waits for a caller on its way in,
        so they go in one mixed batch where they fit); a future per adapter."""
        if not texts:
            out = []
            for ref in refs:
                version, done = self._resolve(ref), Future()
                done.set_result(torch.empty(0, len(version.labels)))
                out.append((version, done))
            return out
        with self._arriving_lock:
            self._arriving += 1
        try:
            pairs = [p or "" for p in text_pairs] if text_pairs and any(text_pairs) else None
            # Long requests go in length-sorted slices, so each forward pads little and other callers interleave.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + (len(pairs[i]) if pairs else 0))
            slices = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            versions = [self._resolve(ref) for ref in refs]
            requests = [
                [_Request(v, [texts[i] for i in idx], [pairs[i] for i in idx] if pairs else None) for idx in slices]
                for v in versions
            ]
            self._start()
            for r in (r for per_adapter in requests for r in per_adapter):
                self._queue.put(r)
        finally:
            with self._arriving_lock:
                self._arriving -= 1
        if len(slices) == 1 and slices[0] == list(range(len(texts))):
            return [(v, rs[0].future) for v, rs in zip(versions, requests, strict=True)]
        return [(v, _gather(rs, slices, len(texts), len(v.labels))) for v, rs in zip(versions, requests, strict=True)]

    def _resolve(self, ref: str | AdapterVersion) -> AdapterVersion:
        return ref if isinstance(ref, AdapterVersion) else self.adapters.resolve(ref)

    def preload(self, refs: list[str]) -> None:
        for ref in refs:
            try:
                with self._lock:
                    self.cache.ensure(self.adapters.resolve(ref), pinned=set())
            except PeftServeError as e:
                log.warning("preload of %s failed: %s", ref, e.message)

    def base_facts(self, base_model: str) -> tuple[list[str], str | None]:
        """The base's head modules and hub revision (loading the base if it is not resident yet)."""
        with self._lock:
            base = self.cache.base(base_model).base
            return list(base.heads), base.revision

    def check(self, base_model: str, state: dict[str, torch.Tensor], config: dict, meta: dict) -> None:
        """Whether an adapter (weights, peft config, peftserve metadata) can be served on `base_model`, without
        loading it: UnsupportedAdapter saying why (loads the base if it is not resident yet)."""
        with self._lock:
            self.cache.parse(self.cache.base(base_model), state, config, meta)

    def loaded(self) -> list[dict]:
        with self._lock:
            return self.cache.loaded()

    def unload(self, refs: list[str]) -> None:
        """Drop these versions if resident (after a delete)."""
        with self._lock:
            self.cache.unload(refs)

    def close(self) -> None:
        with self._thread_lock:
            if self._thread is not None:
                self._queue.put(_STOP)
                self._thread.join(timeout=30)
                self._thread = None

    # ---- the batch thread -----------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            with self._thread_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)
                    self._thread.start()

    def _next(self, timeout: float | None) -> Any:
        """The next request still wanted (cancelled ones are dropped), _STOP, or None when none came."""
        while True:
            if self._carry:
                item = self._carry.pop(0)
            else:
                try:
                    if timeout is None:
                        item = self._queue.get()
                    else:
                        item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
                except queue.Empty:
                    return None
            # Running from here on: a caller that gives up (a cancelled await) can no longer cancel it.
            if item is _STOP or item.future.set_running_or_notify_cancel():
                return item

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is _STOP:
                self._fail_queued(RuntimeError("the inference engine is closed"))
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
                    item is _STOP
                    or rows + len(item.texts) > self.batch_size
                    or (item.version.ref not in adapters and len(adapters) >= self.cache.max_loaded)
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

    def _fail_queued(self, error: Exception) -> None:
        while True:
            try:
                item = self._carry.pop(0) if self._carry else self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(error)

    def _run(self, batch: list[_Request]) -> dict[int, torch.Tensor | BaseException]:
        results: dict[int, torch.Tensor | BaseException] = {}
        with self._lock:
            pinned = {r.version.ref for r in batch}
            live: list[tuple[_Request, Resident]] = []
            for r in batch:
                try:
                    res = self.cache.ensure(r.version, pinned)
                except PeftServeError as e:
                    results[id(r)] = e
                    continue
                res.hits += 1
                live.append((r, res))
            by_base: dict[str, list[tuple[_Request, Resident]]] = {}
            for r, res in live:
                by_base.setdefault(r.version.meta["base_model"], []).append((r, res))
            for name, items in by_base.items():
                results.update(self._forward(self.cache.bases[name], items))
            rows = sum(len(r.texts) for r, _ in live)
            self.stats["batches"] += 1
            self.stats["rows"] += rows
        if self.on_batch is not None:
            self.on_batch(rows)
        return results

    def _forward(self, slot: ResidentBase, items: list[tuple[_Request, Resident]]) -> dict[int, torch.Tensor]:
        """One batch on one base: encode every row once, cut the rows (sorted by length) into the forward
        passes of least padded cost, pad each, route each row through its adapter's LoRA slot, then put each
        row through its adapter's own head (slot layers inside the model): each request's logits."""
        rows, row_slots = self._encode(slot.base, items)
        self._merge_if_lone(slot, row_slots)
        order = sorted(range(len(rows)), key=lambda j: len(rows[j]["input_ids"]))
        lengths = [len(rows[j]["input_ids"]) for j in order]
        pad_id = slot.base.tokenizer.pad_token_id or 0
        logits: torch.Tensor | None = None
        with torch.inference_mode():
            for lo, hi in buckets(lengths, self.bucket_overhead):
                idx = order[lo:hi]
                batch = pad([rows[j] for j in idx], pad_id, self.device, multiple_of=8 if hi - lo > 1 else 1)
                with slot.bank.routed([row_slots[j] for j in idx]):
                    out = slot.base.model(**batch).logits.float()
                if logits is None:
                    logits = out.new_empty(len(rows), out.shape[-1])
                logits[idx] = out
            assert logits is not None
            return _probabilities(items, logits)

    def _merge_if_lone(self, slot: ResidentBase, row_slots: list[int]) -> None:
        """Count the forwards in a row whose rows all use one adapter; the MERGE_AFTER-th merges it (if it
        fits `merged_adapter_bytes` and the base is unquantized). A mixed forward only resets the count: the
        merged copy stays for that adapter's next lone forward."""
        lone = row_slots[0] if len(set(row_slots)) == 1 else None
        slot.streak = slot.streak + 1 if lone is not None and lone == slot.lone else 1
        slot.lone = lone
        if lone is None or slot.streak != MERGE_AFTER or slot.bank.merged == lone or not self.merged_adapter_bytes:
            return
        if slot.bank.merge(lone, self.merged_adapter_bytes):
            self.stats["merges"] += 1

    @staticmethod
    def _encode(base: LoadedBase, items: list[tuple[_Request, Resident]]) -> tuple[list[Features], list[int]]:
        """Every row tokenized once (unpadded, at most the length its adapter trained on), and its slot. Each
        request's future learns how many tokens its rows came to (`future.n_tokens`: what a caller bills)."""
        rows: list[Features] = []
        slots: list[int] = []
        for r, res in items:
            wanted = int(r.version.meta.get("hyperparameters", {}).get("max_length", 512))
            encoded = tokenize(base.tokenizer, r.texts, r.pairs, base.max_tokens(wanted))
            r.future.n_tokens = sum(len(f["input_ids"]) for f in encoded)  # type: ignore[attr-defined]
            rows += encoded
            slots += [res.slot] * len(r.texts)
        return rows, slots


def _probabilities(items: list[tuple[_Request, Resident]], logits: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each request's rows (consecutive in `logits`, as wide as the widest resident head): the softmax over
    its adapter's own labels (the first n_labels columns), or for a multi-label adapter each label's sigmoid."""
    out: dict[int, torch.Tensor] = {}
    start = 0
    for r, _ in items:
        rows = logits[start : start + len(r.texts), : len(r.version.labels)]
        start += len(r.texts)
        probs = torch.sigmoid(rows) if r.version.meta.get("multi_label") else torch.softmax(rows, dim=-1)
        out[id(r)] = probs.cpu()
    return out


def buckets(lengths: list[int], overhead: int, window: int = 64) -> list[tuple[int, int]]:
    """Split sorted lengths into consecutive forward passes of least cost: each pass costs its rows × its
    longest row (padding included) + `overhead` tokens (the fixed cost of a forward)."""
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(max(0, i - window), i):
            cost = best[j] + (i - j) * lengths[i - 1] + overhead
            if cost < best[i]:
                best[i], cut[i] = cost, j
    spans, i = [], n
    while i > 0:
        spans.append((cut[i], i))
        i = cut[i]
    return spans[::-1]


def _gather(requests: list[_Request], slices: list[list[int]], n: int, n_labels: int) -> Future:
    """One future for a request split in slices: their rows put back in the caller's order."""
    done: Future = Future()
    out = torch.empty(n, n_labels)
    left = [len(requests)]
    lock = threading.Lock()

    def collect(idx: list[int], f: Future) -> None:
        if done.done():
            return
        if f.exception() is not None:
            with lock:
                if not done.done():
                    done.set_exception(f.exception())
            return
        out[idx] = f.result()
        with lock:
            left[0] -= 1
            if left[0] == 0 and not done.done():
                done.set_result(out)

    for r, idx in zip(requests, slices, strict=True):
        r.future.add_done_callback(lambda f, idx=idx: collect(idx, f))
    return done
