"""The CUDA path, checked on a GPU machine in one run: `python -m bench.gpu [--out DIR]`.

No hub and no real weights needed: it builds a TinyLlama-1.1B-shaped Llama from config (random weights, the
tiny models' word vocabulary) and runs, printing each figure as it goes:
1. footprint: the base loaded nf4 (the product's default on CUDA) against bf16, GPU memory and load time;
2. the product path: a job through the job store and a Worker (nf4 QLoRA, every Linear, validation, checkpoints),
   its result and peak GPU memory; then predictions through the serving engine on the nf4 base;
3. a training group: the same job again on a worker launched by torchrun with 2 ranks (gloo, both ranks on the
   one GPU when the machine has one), compared with the single process's adapter;
4. several jobs on one worker: 4 jobs submitted at once, one after another (FUSED_JOBS=1) against trained
   together (FUSED_JOBS=4, app/training/fused.py): the wall times, their ratio and each job's accuracy.
Texts are toy sentiment rows padded with neutral words to ~100 words, so each step has real work to do.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from app.base_models.tiny import NEGATIVE, NEUTRAL, POSITIVE, _decoder_tokenizer

RESULTS: dict[str, object] = {}
CUDA = torch.cuda.is_available()  # without one (--small, a smoke run of this script on CPU) the GPU figures are 0


def say(key: str, value: object) -> None:
    RESULTS[key] = value
    print(f"{key}: {value}", flush=True)


def long_sentiment(n: int, words: int = 100, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        text = [rng.choice(NEUTRAL) for _ in range(words - 1)]
        text.insert(rng.randrange(words), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append({"text": " ".join(text), "label": label})
    return rows


def build_llama(path: Path, small: bool = False) -> Path:
    """TinyLlama-1.1B's shape (22 layers, hidden 2048, 32 heads / 4 KV heads, MLP 5632), random bf16 weights;
    `small`: 2 layers of 64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    fast, vocab = _decoder_tokenizer(["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", unk="<unk>")
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64 if small else 2048,
        intermediate_size=128 if small else 5632,
        num_hidden_layers=2 if small else 22,
        num_attention_heads=4 if small else 32,
        num_key_value_heads=2 if small else 4,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if CUDA else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    say("base_params_millions", round(sum(p.numel() for p in model.parameters()) / 1e6, 1))
    model.save_pretrained(path)
    fast.save_pretrained(path)
    del model
    return path


def settings_for(root: Path, model: Path, **extra: object):
    from app.config import ModelSource, Settings

    return Settings(
        _env_file=None,
        data_dir=root / "data",
        adapters_dir=root / "adapters",
        workers=0,
        models_root=model.parent,
        models={"gpu-llama": ModelSource(kind="local", location=str(model))},
        admin_api_keys=["gpu-check-admin-key-0123456789"],
        poll_interval=0.1,
        **extra,
    )


def env_for(root: Path, model: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PEFTSERVE_DATA_DIR": str(root / "data"),
        "PEFTSERVE_ADAPTERS_DIR": str(root / "adapters"),
        "PEFTSERVE_MODELS_ROOT": str(model.parent),
        "PEFTSERVE_MODELS": json.dumps({"gpu-llama": {"kind": "local", "location": str(model)}}),
        "PEFTSERVE_ADMIN_API_KEYS": "gpu-check-admin-key-0123456789",
        "PEFTSERVE_POLL_INTERVAL": "0.1",
    }


def gpu_mib(value: int) -> float:
    return round(value / 2**20, 1)


def footprint(model: Path) -> None:
    from app.base_models.loading import load_base
    from app.base_models.registry import ResolvedModel

    resolved = ResolvedModel(name="gpu-llama", path=str(model), revision=None)
    for quantization, dtype in (("nf4", torch.float32), ("none", torch.bfloat16)):
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        started = time.perf_counter()
        base = load_base(resolved, quantization, "cuda", dtype)
        seconds = time.perf_counter() - started
        say(f"footprint_{quantization}_MiB", gpu_mib(torch.cuda.memory_allocated() - before))
        say(f"load_{quantization}_seconds", round(seconds, 2))
        del base


def submit(svc, adapter: str, rows: list[dict], hp: dict):
    from app.schemas import JobCreate

    body = JobCreate(adapter=adapter, base_model="gpu-llama", train={"records": rows}, hyperparameters=hp)
    return svc.submit_job(body)


def product_path(root: Path, model: Path, rows: list[dict], hp: dict) -> None:
    from app.jobs.worker import Worker
    from app.schemas import PredictRequest
    from app.service import PeftServe

    settings = settings_for(root, model)
    svc = PeftServe(settings)
    job = submit(svc, "alone", rows, hp)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    Worker(settings).run(burst=True)
    wall = time.perf_counter() - started
    done = svc.store.get_job(job.id)
    say("job_status", done.status)
    if done.status != "succeeded":
        say("job_error", done.error_message)
        return
    metrics = svc.adapters.resolve("alone").meta["metrics"]
    keep = ("train_seconds", "train_samples_per_second", "train_tokens", "accuracy", "f1_macro", "precision", "steps")
    say("job_metrics", {k: metrics.get(k) for k in keep})
    say("job_wall_seconds_with_base_load", round(wall, 2))
    say("job_peak_gpu_MiB", gpu_mib(torch.cuda.max_memory_allocated()) if CUDA else 0)
    say("job_events", [e.message for e in svc.store.events(job.id)][:12])

    held_out = long_sentiment(512, seed=99)
    texts = [r["text"] for r in held_out]
    svc.predict(PredictRequest(adapter="alone", inputs=texts[:32]))  # warm: load the adapter
    started = time.perf_counter()
    answers = svc.predict(PredictRequest(adapter="alone", inputs=texts[:256])).predictions
    answers += svc.predict(PredictRequest(adapter="alone", inputs=texts[256:])).predictions
    seconds = time.perf_counter() - started
    correct = sum(a.label == r["label"] for a, r in zip(answers, held_out, strict=True))
    say("serve_accuracy_held_out", round(correct / len(held_out), 4))
    say("serve_texts_per_second_batches_of_256", round(len(texts) / seconds, 1))
    svc.close()


def training_group(root: Path, model: Path, rows: list[dict], hp: dict) -> None:
    from safetensors.torch import load_file

    from app.service import PeftServe

    settings = settings_for(root, model)
    svc = PeftServe(settings)
    job = submit(svc, "grouped", rows, hp)
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)  # the checkout first
    env = {**env_for(root, model), "PEFTSERVE_DISTRIBUTED_BACKEND": "gloo", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533"]
    cmd += ["-m", "app.cli", "worker", "--burst"]
    started = time.perf_counter()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    say("group_exit_code", run.returncode)
    say("group_wall_seconds_with_base_loads", round(time.perf_counter() - started, 2))
    print(run.stderr if run.returncode else run.stderr[-4000:], flush=True)  # all of it when a rank failed
    done = svc.store.get_job(job.id)
    say("group_job_status", done.status)
    if done.status != "succeeded":
        say("group_job_error", done.error_message)
        return
    grouped, alone = (svc.adapters.resolve(n) for n in ("grouped", "alone"))
    keep = ("train_seconds", "train_loss", "accuracy", "steps")
    say("group_metrics", {k: grouped.meta["metrics"].get(k) for k in keep})
    say("alone_metrics", {k: alone.meta["metrics"].get(k) for k in keep})
    a, b = load_file(grouped.weights), load_file(alone.weights)
    diffs = [((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item() for k in a]
    say("group_vs_alone_max_relative_weight_difference", f"{max(diffs):.3e}")
    svc.close()


def fused_jobs(root: Path, model: Path, hp: dict, jobs: int = 4, rows: int = 256) -> None:
    from app.jobs.worker import Worker
    from app.service import PeftServe

    walls = {}
    for fused in (1, jobs):
        settings = settings_for(root / f"fused-{fused}", model, fused_jobs=fused)
        svc = PeftServe(settings)
        ids = [submit(svc, f"job{i}", long_sentiment(rows, seed=10 + i), hp).id for i in range(jobs)]
        started = time.perf_counter()
        Worker(settings).run(burst=True)
        walls[fused] = time.perf_counter() - started
        done = [svc.store.get_job(i) for i in ids]
        say(f"fused_{fused}_wall_seconds", round(walls[fused], 2))
        say(f"fused_{fused}_status", [d.status for d in done])
        say(f"fused_{fused}_accuracy", [(d.result_metrics or {}).get("accuracy") for d in done])
        svc.close()
    say("fused_together_vs_one_after_another", round(walls[jobs] / walls[1], 3))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--small", action="store_true", help="a 2-layer model: a smoke run of this script")
    parser.add_argument("--root", type=Path, default=Path("/tmp/peftserve-gpu"), help="scratch folder (emptied)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.root, ignore_errors=True)
    root = args.root
    say("torch", torch.__version__)
    say("gpu", torch.cuda.get_device_name() if CUDA else None)
    model = build_llama(root / "models" / "gpu-llama", args.small)
    rows = long_sentiment(args.rows)
    # lora_dropout 0 on both runs, so the group's adapter can be compared with the single process's
    hp = {"epochs": 1, "batch_size": 16, "lora_dropout": 0.0}
    for stage in (
        *([lambda: footprint(model)] if CUDA else []),
        lambda: product_path(root, model, rows, hp),
        lambda: training_group(root, model, rows, hp),
        lambda: fused_jobs(root, model, hp, rows=min(256, args.rows)),
    ):
        try:
            stage()
        except Exception:  # noqa: BLE001 - report and go on to the next stage
            traceback.print_exc()
            say("failed_stage", traceback.format_exc(limit=3)[-1500:])
        (args.out / "gpu.json").write_text(json.dumps(RESULTS, indent=1, default=str))


if __name__ == "__main__":
    main()
