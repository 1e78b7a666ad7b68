"""Inference benchmark: our micro-batching engine against the obvious server, on the real `minilm` base.

    make bench-inference        (or: python -m bench.inference [--seconds 20])

Trains 8 small adapters on Rotten Tomatoes snippets, then measures side by side in this one run:
throughput of 32 concurrent HTTP clients over 8 adapters (asyncio keep-alive connections) against the loop a user would
write in process (per request `set_adapter`, tokenize, forward; fp32 and bf16 where the CPU has it, the faster
is the baseline) and against a naive HTTP server (the same loop behind FastAPI, fp32), 8 adapters vs 1,
one-text latency over HTTP vs the merged adapter's in-process forward, cold adapter load, and RSS while 1,000
adapters cycle through an LRU of 64. Prints a table of ratios against the goals.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import torch

from app.base_models.loading import cpu_has_fast_bf16, resolve_dtype
from bench.common import AUTH, bench_server, load, pct, rt_rows, start_peftserve, table

SHORT = "A warm, funny and beautifully acted film."
N_ADAPTERS, CLIENTS = 8, 32


def train_adapters(work: Path, rows: list[dict]) -> None:
    from app.config import Settings
    from app.jobs.worker import Worker
    from app.schemas import JobCreate
    from app.service import PeftServe

    settings = Settings(_env_file=None, data_dir=work / "data", adapters_dir=work / "adapters", workers=0)
    svc = PeftServe(settings)
    for i in range(N_ADAPTERS):
        part = rows[i * 96 : (i + 1) * 96]
        svc.submit_job(
            JobCreate(
                adapter=f"a{i}",
                base_model="minilm",
                train={"records": part},
                hyperparameters={"epochs": 1, "seed": i},
            )
        )
    Worker(settings).run(burst=True)
    svc.close()
    assert svc.adapters.names() == [f"a{i}" for i in range(N_ADAPTERS)], svc.adapters.names()


def copy_adapter(adapters: Path, src: str, name: str) -> None:
    """A copy under another name (weights hard-linked: only the metadata differs)."""
    target = adapters / name / "v1"
    shutil.copytree(adapters / src / "v1", target, copy_function=os.link)
    meta = json.loads((target / "peftserve.json").read_text())
    (target / "peftserve.json").unlink()
    (target / "peftserve.json").write_text(json.dumps({**meta, "name": name}))


def naive_loop(work: Path, texts: list[str], dtype: torch.dtype, seconds: float) -> float:
    """Requests per second of the loop a user would write: set_adapter, tokenize, forward, one at a time."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bench.training import minilm_path

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = PeftModel.from_pretrained(base, str(work / "adapters" / "a0" / "v1"), adapter_name="a0")
    for i in range(1, N_ADAPTERS):
        model.load_adapter(str(work / "adapters" / f"a{i}" / "v1"), adapter_name=f"a{i}")
    model = model.to(dtype).eval()

    def one(i: int) -> None:
        model.set_adapter(f"a{i % N_ADAPTERS}")
        with torch.inference_mode():
            enc = tok([texts[i % len(texts)]], truncation=True, max_length=128, return_tensors="pt")
            torch.softmax(model(**enc).logits.float(), -1).tolist()

    for i in range(20):
        one(i)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        one(n)
        n += 1
    return n / (time.perf_counter() - started)


def raw_forward(work: Path, dtype) -> Callable[[str], None]:
    """tokenize + forward + softmax of one text in this process: the adapter `a0` merged into the base with
    peft's `merge_and_unload()` (the fastest thing a user could run for one adapter), in the precision the
    server runs."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from app.base_models.loading import load_tokenizer
    from app.base_models.registry import ModelRegistry
    from app.config import Settings

    settings = Settings(_env_file=None, data_dir=work / "data")
    resolved = ModelRegistry(settings.models, settings.model_cache_dir).resolve("minilm")
    tok = load_tokenizer(resolved)
    base = AutoModelForSequenceClassification.from_pretrained(resolved.path, num_labels=2)
    model = PeftModel.from_pretrained(base, str(work / "adapters" / "a0" / "v1")).merge_and_unload()
    model = model.to(dtype).eval()

    def run(text: str) -> None:
        with torch.inference_mode():
            enc = tok([text], truncation=True, max_length=128, return_tensors="pt")
            torch.softmax(model(**enc).logits, -1).tolist()

    return run


def timed_p50(fn: Callable[[], None], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return pct(times, 50)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20, help="length of each throughput run")
    ap.add_argument("--adapters", type=int, default=1000, help="adapters registered for the memory run")
    ap.add_argument("--passes", type=int, default=3, help="passes over all adapters in the memory run")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="peftserve-bench-"))
    adapters = work / "adapters"
    env = {"PEFTSERVE_DATA_DIR": str(work / "data"), "PEFTSERVE_ADAPTERS_DIR": str(adapters)}
    texts = [r["text"] for r in rt_rows("test", work / "rt")][:2000]
    print(f"work folder {work}; training {N_ADAPTERS} adapters on minilm ...", flush=True)
    t0 = time.perf_counter()
    train_adapters(work, rt_rows("train", work / "rt"))
    print(f"  trained in {time.perf_counter() - t0:.0f} s", flush=True)
    for i in range(20):
        copy_adapter(adapters, "a0", f"cold{i}")
    for i in range(args.adapters):
        copy_adapter(adapters, f"a{i % N_ADAPTERS}", f"m{i:04d}")
    names = [f"a{i}" for i in range(N_ADAPTERS)]
    results: dict[str, float] = {}

    def spread(c: int, i: int) -> dict:
        return {"adapter": names[(c + i) % N_ADAPTERS], "inputs": texts[(c * 31 + i) % len(texts)]}

    def single(c: int, i: int) -> dict:
        return {"adapter": names[0], "inputs": texts[(c * 31 + i) % len(texts)]}

    dtype = resolve_dtype("auto", "cpu", "none")

    # --- ours -----------------------------------------------------------------------------------
    ours = start_peftserve(env, work / "ours.log")
    try:
        load(ours.url, CLIENTS, 3, spread)  # warm: base and the 8 adapters resident
        mixed = load(ours.url, CLIENTS, args.seconds, spread)
        one = load(ours.url, CLIENTS, args.seconds, single)
        print(f"  ours, 8 adapters: {mixed}\n  ours, 1 adapter: {one}", flush=True)
        # One client, one short text, against the raw forward in this process: measured in alternating
        # rounds, so both see the same machine (it is shared, and its speed drifts).
        raw = raw_forward(work, dtype)
        http_p50, raw_p50 = [], []
        for _ in range(5):
            http_p50.append(load(ours.url, 1, 2, lambda c, i: {"adapter": "a0", "inputs": SHORT})["p50_ms"] / 1000)
            raw_p50.append(timed_p50(lambda: raw(SHORT), 100))
        results["lat_http"], results["lat_raw"] = pct(http_p50, 50), pct(raw_p50, 50)
        cold = []
        with httpx.Client(base_url=ours.url, timeout=60, headers=AUTH) as client:
            for i in range(20):
                body = {"adapter": f"cold{i}", "inputs": SHORT}
                t0 = time.perf_counter()
                client.post("/predict", json=body).raise_for_status()
                t1 = time.perf_counter()
                client.post("/predict", json=body).raise_for_status()
                t2 = time.perf_counter()
                cold.append((t1 - t0) - (t2 - t1))
        results["cold"] = pct(cold, 50)
    finally:
        ours.stop()
    fp32 = start_peftserve({**env, "PEFTSERVE_INFERENCE_DTYPE": "float32"}, work / "fp32.log")
    try:
        load(fp32.url, CLIENTS, 3, spread)
        mixed32 = load(fp32.url, CLIENTS, args.seconds, spread)
        print(f"  ours in fp32, 8 adapters: {mixed32}", flush=True)
    finally:
        fp32.stop()

    # --- naive ----------------------------------------------------------------------------------
    argv = [sys.executable, "-m", "bench.naive_server", str(adapters), "$PORT", *names]
    naive = bench_server(env, work / "naive.log", argv=argv).start()
    try:
        load(naive.url, CLIENTS, 3, spread)
        naive_run = load(naive.url, CLIENTS, args.seconds, spread)
        print(f"  naive, 8 adapters: {naive_run}", flush=True)
    finally:
        naive.stop()
    # The loop a user would write in process (no HTTP), at its best dtype: the goal's baseline.
    in_process = {}
    for d in [torch.float32, *([torch.bfloat16] if cpu_has_fast_bf16() else [])]:
        in_process[d] = naive_loop(work, texts, d, args.seconds)
        print(f"  naive loop in process, {str(d).removeprefix('torch.')}: {in_process[d]:.1f} req/s", flush=True)
    best_dtype = max(in_process, key=in_process.get)

    # --- memory: many adapters through an LRU of 64 ------------------------------------------------
    mem = start_peftserve({**env, "PEFTSERVE_MAX_LOADED_ADAPTERS": "64"}, work / "memory.log")
    try:
        # Warm-up: the same load over the 8 trained adapters (threads, buffers, kernel caches), no churn,
        # until RSS is steady (under 2 MiB more over 5 s, at most 60 s).
        load(mem.url, CLIENTS, 20, spread)
        for _ in range(8):
            before = mem.rss()
            load(mem.url, CLIENTS, 5, spread)
            if mem.rss() - before < 2 * 2**20:
                break
        base_rss = mem.rss() - sum(r["bytes"] for r in httpx.get(mem.url + "/adapters/loaded", headers=AUTH).json())
        counter = itertools.count()

        def cycle(c: int, i: int) -> dict:
            return {"adapter": f"m{next(counter) % args.adapters:04d}", "inputs": texts[i % len(texts)]}

        samples = []
        for _ in range(args.passes):
            run = load(mem.url, CLIENTS, 600, cycle, total=args.adapters)
            samples.append(mem.rss())
            assert run["errors"] == 0, run
        loaded = httpx.get(mem.url + "/adapters/loaded", headers=AUTH).json()
        resident = sum(r["bytes"] for r in loaded)
        print(
            f"  memory: base {base_rss / 2**20:.1f} MiB, RSS after each pass {[round(s / 2**20, 1) for s in samples]}"
            f" MiB, {len(loaded)} resident adapters, {resident / 2**20:.1f} MiB",
            flush=True,
        )
    finally:
        mem.stop()

    throughput = mixed["rps"] / naive_run["rps"]
    best_loop = in_process[best_dtype]
    spread_ratio = mixed["rps"] / one["rps"]
    latency = results["lat_http"] / results["lat_raw"]
    bound = base_rss + 1.3 * resident
    growth = (samples[-1] - samples[0]) / 2**20
    rows = [
        (
            "1 throughput, 32 HTTP clients / 8 adapters vs the naive loop in process (its best dtype)",
            f"{mixed['rps']:.1f} req/s vs {best_loop:.1f} ({str(best_dtype).removeprefix('torch.')})",
            f"{mixed['rps'] / best_loop:.2f}x",
            ">= 6x",
        ),
        (
            "1b the same vs the naive HTTP server (fp32, one request per forward)",
            f"{mixed['rps']:.1f} req/s vs {naive_run['rps']:.1f}",
            f"{throughput:.2f}x",
            ">= 5x",
        ),
        (
            "2 8 adapters vs 1 adapter",
            f"{mixed['rps']:.1f} vs {one['rps']:.1f} req/s",
            f"{spread_ratio:.2f}x",
            ">= 0.85x",
        ),
        (
            "3 one text: HTTP p50 vs merged forward p50",
            f"{results['lat_http'] * 1e3:.1f} vs {results['lat_raw'] * 1e3:.1f} ms",
            f"{latency:.2f}x",
            "<= 1.2x",
        ),
        ("4 cold adapter load p50 (cold - warm)", f"{results['cold'] * 1e3:.1f} ms", "", "<= 50 ms"),
        (
            f"5 RSS, {args.adapters} adapters, LRU 64 ({args.passes} passes)",
            f"{samples[-1] / 2**20:.0f} MiB (bound {bound / 2**20:.0f})",
            f"{(samples[-1] - base_rss) / resident:.2f}x resident; pass 1->{args.passes} {growth:+.1f} MiB",
            "<= 1.3x, flat",
        ),
    ]
    print()
    print(table(rows, ("measure", "figures", "ratio", "goal")))
    print(
        f"ours in fp32 (batching alone, no bf16): {mixed32['rps']:.1f} req/s ="
        f" {mixed32['rps'] / in_process[torch.float32]:.2f}x the naive loop in fp32; serving dtype {dtype};"
        f" errors: ours {mixed['errors'] + one['errors']}, naive {naive_run['errors']}"
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
