"""Serving speed in process, side by side in one run: the engine against the loop a user would write.

    python -m bench.serve_speed [--seconds 10]

On `minilm` with 8 adapters (each trained for one epoch on 96 Rotten Tomatoes snippets, the defaults), one
text per request, the texts drawn from the held-out snippets:
- naive: plain transformers + peft with the 8 adapters loaded in one PeftModel; per request `set_adapter`,
  tokenize the text, forward, softmax. One text at a time, in fp32 and in bf16 where the CPU has it; the
  faster dtype is the baseline.
- engine: `app.inference.engine.InferenceEngine` called by 32 threads at once, each sending one text at a time
  over the 8 adapters, in fp32 and in the dtype the server picks (`auto`). Also printed: its share of the
  GEMM ceiling, which is real tokens x 2 x the encoder's Linear weights / wall / the GEMM rate of that dtype,
  measured in the same run.
- latency: one short text alone through the engine against the adapter merged into the base
  (`merge_and_unload()`, the fastest thing a user could run for one adapter), p50 of 200 interleaved calls,
  both in the auto dtype; beside them the engine with merging off (each layer's LoRA slots).
The HTTP figures (the goal's "through HTTP") are `bench/inference.py`'s.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import torch

from app.inference.engine import MERGE_AFTER
from bench.common import pct, rt_rows, table
from bench.inference import N_ADAPTERS, SHORT, naive_loop, raw_forward, train_adapters
from bench.train_speed import _cpu_name, encoder_flops_per_token, gemm_rate

CALLERS = 32


def engine_for(work: Path, dtype: torch.dtype, **kwargs):
    from app.base_models.registry import ModelRegistry
    from app.config import Settings
    from app.inference.engine import InferenceEngine
    from app.stores.adapters import LocalAdapterStore

    settings = Settings(_env_file=None, data_dir=work / "data")
    registry = ModelRegistry(settings.models, settings.model_cache_dir)
    engine = InferenceEngine(registry, LocalAdapterStore(work / "adapters"), "cpu", "none", dtype=dtype, **kwargs)
    for i in range(N_ADAPTERS):  # loaded before the clock starts
        engine.predict(f"a{i}", [SHORT])
    return engine


def engine_concurrent(engine, texts: list[str], tokens: list[int], seconds: float) -> tuple[float, float]:
    """Texts per second and real tokens per second with CALLERS threads sending one text at a time."""
    done = [0] * CALLERS
    real = [0] * CALLERS
    stop = threading.Event()

    def caller(c: int) -> None:
        i = c
        while not stop.is_set():
            engine.predict(f"a{i % N_ADAPTERS}", [texts[i % len(texts)]])
            done[c] += 1
            real[c] += tokens[i % len(texts)]
            i += CALLERS

    threads = [threading.Thread(target=caller, args=(c,), daemon=True) for c in range(CALLERS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    wall = time.perf_counter() - started
    return sum(done) / wall, sum(real) / wall


def p50s_ms(fns: dict, n: int = 200) -> dict[str, float]:
    """p50 in ms of each function, called in turn (interleaved, so a noisy moment hits all alike)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(10):
            fn()
    for _ in range(n):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: pct(v, 50) * 1000 for k, v in times.items()}


def main() -> None:
    from transformers import AutoTokenizer

    from app.base_models.loading import cpu_has_fast_bf16, resolve_dtype
    from bench.training import minilm_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per throughput run")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="peftserve-bench-serve-"))
    train_adapters(work, rt_rows("train", work / "rt"))
    texts = [r["text"] for r in rt_rows("test", work / "rt")][:2000]
    tok = AutoTokenizer.from_pretrained(minilm_path())
    tokens = [len(ids) for ids in tok(texts, truncation=True, max_length=128)["input_ids"]]
    auto = resolve_dtype("auto", "cpu", "none")
    dtypes = [torch.float32, *([torch.bfloat16] if cpu_has_fast_bf16() else [])]
    flops = encoder_flops_per_token() / 2  # forward only
    rates = {d: gemm_rate(d, "cpu") for d in dtypes}
    name = lambda d: str(d).removeprefix("torch.")  # noqa: E731
    print(f"cpu: {_cpu_name()}; {len(texts)} texts, mean {sum(tokens) / len(tokens):.1f} tokens", flush=True)
    print("GEMM ceiling: " + ", ".join(f"{name(d)} {r / 1e9:.0f} GFLOP/s" for d, r in rates.items()), flush=True)

    rows = []
    naive = {}
    for d in dtypes:
        naive[d] = naive_loop(work, texts, d, args.seconds)
        print(f"  naive loop {name(d)}: {naive[d]:.1f} req/s", flush=True)
    best = max(naive.values())
    for d, rps in naive.items():
        rows.append((f"naive loop (set_adapter + forward), {name(d)}", f"{rps:.1f}", f"{rps / best:.2f}x", "-"))
    for d in dict.fromkeys([torch.float32, auto]):
        engine = engine_for(work, d)
        rps, tps = engine_concurrent(engine, texts, tokens, args.seconds)
        engine.close()
        share = tps * flops / rates[d]
        print(f"  engine {name(d)}: {rps:.1f} texts/s, {share:.0%} of the GEMM ceiling", flush=True)
        rows.append((f"engine, {CALLERS} callers, {name(d)}", f"{rps:.1f}", f"{rps / best:.2f}x", f"{share:.0%}"))
    print()
    print(table(rows, ("in process, 8 adapters", "texts/s", "vs best naive", "of GEMM ceiling")))

    merged_engine, slots_engine = engine_for(work, auto), engine_for(work, auto, merged_adapter_bytes=0)
    p50 = p50s_ms(
        {
            "engine": lambda: merged_engine.predict("a0", [SHORT]),
            "slots": lambda: slots_engine.predict("a0", [SHORT]),
            "merged": partial(raw_forward(work, auto), SHORT),
        }
    )
    assert merged_engine.stats["merges"] == 1, merged_engine.stats  # a0 served alone: merged during the warm-up
    merged_engine.close()
    slots_engine.close()
    print()
    print(
        f"one short text, p50 ({name(auto)}, interleaved): engine {p50['engine']:.2f} ms (a0 merged after"
        f" {MERGE_AFTER} lone forwards), merged adapter {p50['merged']:.2f} ms, ratio"
        f" {p50['engine'] / p50['merged']:.2f} (goal <= 1.2); the engine without merging (LoRA slots)"
        f" {p50['slots']:.2f} ms, {p50['slots'] / p50['merged']:.2f}"
    )


if __name__ == "__main__":
    main()
