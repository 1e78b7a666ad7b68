"""Training speed against HF Trainer, both on the same configuration, side by side in one run.

    python -m bench.train_speed [--rows 1000] [--epochs 1] [--device cpu|cuda] [--dtypes float32,bfloat16]
    python -m bench.train_speed --alternate 3    # ours before/after only, interleaved runs, medians
    python -m bench.train_speed --profile        # ours only, under torch.profiler: where the time goes

Two configurations, each trained on the same Rotten Tomatoes snippets by ours and by the HF Trainer with
dynamic padding (`DataCollatorWithPadding`), with and without Trainer's own length-grouped sampling:
- defaults, the product's: LoRA r=16, alpha 32, dropout 0.1 on every Linear (peft's all-linear), lr 5e-4,
  batch 16, a 10% validation split evaluated at each epoch's end with the best epoch (macro-F1) kept, and a
  checkpoint each epoch. Ours is a job through the job store and a Worker, timed from the claim to the
  adapter saved (the base already loaded by a warm-up job). Trainer is timed from tokenizing to the adapter
  saved (`eval_strategy`/`save_strategy` "epoch", `load_best_model_at_end` on macro-F1).
- anchors: LoRA r=8 on query/value, dropout 0.1, lr 1e-3, batch 16, no validation, no checkpoints. Ours is
  `train_adapter` in process.
Each runs in every dtype asked (default: fp32, plus bf16 where the CPU has bf16 instructions or on CUDA),
both sides in that dtype (Trainer: `bf16=True`). Where ours switches to eager attention (CPU, bf16), Trainer is
also run with eager attention, so the kernel choice is not counted as ours. `--before` adds ours without the
fast paths of app/training/trainer.py's `_fast_paths` but the cheap dropout (the code before them), for
before/after figures from the same run.
Printed per run: samples/s, ours against the faster Trainer variant, and the share of the GEMM ceiling (real
tokens x 4 x the encoder's Linear weights / wall / the GEMM rate of the dtype used, measured in the same run).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import tempfile
import threading
import time
from datetime import timezone
from pathlib import Path

import torch

from app.training.config import Hyperparameters
from bench.common import table
from bench.training import minilm_path, rows_of, sample

ANCHOR_TARGETS = ["query", "value"]
_HP = Hyperparameters()
CONFIGS = {
    "defaults": {  # the product's: Hyperparameters' defaults, the service's default validation split
        "target_modules": None,
        "lora_r": _HP.lora_r,
        "lora_alpha": _HP.lora_alpha,
        "learning_rate": _HP.learning_rate,
        "validation": 0.1,
    },
    "anchors": {
        "target_modules": ANCHOR_TARGETS,
        "lora_r": 8,
        "lora_alpha": 16,
        "learning_rate": 1e-3,
        "validation": 0.0,
    },
}


def gemm_rate(dtype: torch.dtype, device: str, seconds: float = 2.0) -> float:
    """FLOP/s of a MiniLM-shaped matmul (M x 384 @ 384 x 1536) in `dtype` on `device`, now."""
    m = 2048 if device == "cpu" else 65536
    a = torch.randn(m, 384, dtype=dtype, device=device)
    w = torch.randn(1536, 384, dtype=dtype, device=device)
    for _ in range(5):
        a @ w.T
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ w.T
        n += 1
        if n % 50 == 0:
            sync()
    sync()
    return n * 2 * m * 384 * 1536 / (time.perf_counter() - t0)


def encoder_flops_per_token() -> float:
    """4 FLOP per weight of every Linear in the encoder's layers: forward, and backward to the inputs (the
    frozen weights get no gradient; LoRA's own are negligible)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    linears = (m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layer" in name)
    return 4.0 * sum(m.weight.numel() for m in linears)


# ---- HF Trainer -------------------------------------------------------------------------------------
class _Rows(torch.utils.data.Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def trainer_run(train, val, labels, config: dict, epochs: int, dtype, device: str, grouped: bool, eager: bool):
    """LoRA with the HF Trainer and `DataCollatorWithPadding`; returns (seconds, real tokens trained)."""
    import numpy as np
    from peft import LoraConfig, TaskType, get_peft_model
    from sklearn.metrics import f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(0)
    path = minilm_path()
    attention = {"attn_implementation": "eager"} if eager else {}
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels), **attention)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=config["lora_r"],
        lora_alpha=config["lora_alpha"],
        lora_dropout=0.1,
        target_modules=config["target_modules"] or "all-linear",
    )
    model = get_peft_model(model, lora)
    ids = {lab: i for i, lab in enumerate(labels)}
    validating = bool(val)
    params = inspect.signature(TrainingArguments).parameters
    sampling = {}
    if grouped:  # transformers 5 names it train_sampling_strategy; before, group_by_length
        sampling = (
            {"train_sampling_strategy": "group_by_length"}
            if "train_sampling_strategy" in params
            else {"group_by_length": True}
        )

    def f1(pred) -> dict:
        return {"f1_macro": f1_score(pred.label_ids, np.argmax(pred.predictions, -1), average="macro")}

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(path)

        def rows(data):
            enc = tok([r["text"] for r in data], truncation=True, max_length=128)
            return _Rows(
                [
                    {
                        "input_ids": enc["input_ids"][i],
                        "attention_mask": enc["attention_mask"][i],
                        "labels": ids[r["label"]],
                    }
                    for i, r in enumerate(data)
                ]
            )

        train_ds = rows(train)
        args = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=epochs,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=32,
            learning_rate=config["learning_rate"],
            weight_decay=0.01,
            warmup_steps=0.06,
            lr_scheduler_type="linear",
            eval_strategy="epoch" if validating else "no",
            save_strategy="epoch" if validating else "no",
            load_best_model_at_end=validating,
            metric_for_best_model="f1_macro" if validating else None,
            logging_steps=50,
            report_to="none",
            disable_tqdm=True,
            use_cpu=device == "cpu",
            bf16=dtype == torch.bfloat16,
            seed=0,
            **sampling,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=rows(val) if validating else None,
            data_collator=DataCollatorWithPadding(tok),
            compute_metrics=f1 if validating else None,
        )
        trainer.train()
        trainer.model.save_pretrained(Path(tmp) / "adapter")
        seconds = time.perf_counter() - t0
    real_tokens = sum(len(item["input_ids"]) for item in train_ds.items) * epochs
    return seconds, real_tokens


# ---- ours -------------------------------------------------------------------------------------------
def ours_in_process(train, labels, config: dict, epochs: int, dtype, device: str):
    """`train_adapter` on a base loaded as the worker loads it; returns (seconds, real tokens trained)."""
    from app.base_models.loading import load_base
    from app.base_models.registry import ModelRegistry
    from app.config import Settings
    from app.jobs.reporting import SilentReporter
    from app.training.config import Hyperparameters
    from app.training.trainer import train_adapter

    settings = Settings(_env_file=None)
    base = load_base(ModelRegistry(settings.models, settings.model_cache_dir).resolve("minilm"), "none", device, dtype)
    hp = Hyperparameters(
        epochs=epochs,
        learning_rate=config["learning_rate"],
        lora_r=config["lora_r"],
        lora_alpha=config["lora_alpha"],
        target_modules=config["target_modules"],
        early_stopping_patience=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train_adapter(base, train, [], labels, hp, Path(tmp), SilentReporter())
        seconds = time.perf_counter() - t0
    return seconds, result.metrics["train_tokens"]


def ours_job(work: Path, rows, config: dict, epochs: int, dtype, device: str):
    """A job through the job store and a Worker with the base already loaded: claim → adapter saved."""
    from app.config import Settings
    from app.jobs.worker import Worker
    from app.schemas import JobCreate
    from app.service import PeftServe

    settings = Settings(
        _env_file=None,
        data_dir=work / "data",
        adapters_dir=work / "adapters",
        workers=0,
        device=device,
        quantization="none",
        training_dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
        admin_api_keys=["bench-admin-key-0123456789"],
        poll_interval=0.05,
    )
    svc = PeftServe(settings)
    worker = Worker(settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()

    def run(adapter: str, records: list[dict], hp: dict):
        body = {"adapter": adapter, "train": {"records": records}, "hyperparameters": hp}
        job = svc.submit_job(JobCreate(**body, validation_split=config["validation"]))
        while (done := svc.store.get_job(job.id)).status not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.05)
        assert done.status == "succeeded", done.error_message
        return done

    run("warm", rows[:64], {"epochs": 1})  # loads the base
    hp = {"epochs": epochs, **{k: config[k] for k in ("learning_rate", "lora_r", "lora_alpha", "target_modules")}}
    done = run("timed", rows, hp)
    worker.stopping.set()
    thread.join(60)
    seconds = _ts(done.finished_at) - _ts(done.started_at)
    tokens = svc.adapters.resolve("timed").meta["metrics"]["train_tokens"]
    svc.close()
    return seconds, tokens


@contextlib.contextmanager
def _before(on: bool):
    """While on, the trainer takes only the first of its fast paths, the cheap dropout on LoRA's inputs: torch's
    dropout in the base, peft's fp32 input casts and the model's own attention stay (the code before)."""
    import app.training.trainer as trainer
    from app.training.dropout import cheap_dropout

    swap = trainer._fast_paths
    if on:
        trainer._fast_paths = lambda base, model, hp: cheap_dropout(model, base.device, lora_only=True)
    try:
        yield
    finally:
        trainer._fast_paths = swap


def _ts(value) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


def main() -> None:
    from app.base_models.loading import cpu_has_fast_bf16
    from app.training.data import split_validation

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000, help="training rows (the defaults hold 10%% out)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default=None, help="comma-separated: float32,bfloat16 (default: what runs fast)")
    ap.add_argument("--configs", default="defaults,anchors")
    ap.add_argument("--before", action="store_true", help="also ours without the newest fast paths (the code before)")
    ap.add_argument("--profile", action="store_true", help="only ours at the defaults under torch.profiler: top ops")
    ap.add_argument(
        "--alternate",
        type=int,
        default=0,
        metavar="N",
        help="only ours before/after: N alternating in-process runs per dtype at the defaults, then medians",
    )
    args = ap.parse_args()
    fast_bf16 = args.device == "cuda" or cpu_has_fast_bf16()
    names = args.dtypes.split(",") if args.dtypes else ["float32", *(["bfloat16"] if fast_bf16 else [])]
    dtypes = [getattr(torch, n) for n in names]
    work = Path(tempfile.mkdtemp(prefix="peftserve-bench-speed-"))
    rows = sample(rows_of("rt_movie_snippets", "train", work / "rt"), args.rows)
    labels = sorted({r["label"] for r in rows})
    if args.alternate:
        return alternate(rows, labels, args.epochs, dtypes, args.device, args.alternate)
    if args.profile:
        return profile(rows, labels, args.epochs, dtypes, args.device)
    fpt = encoder_flops_per_token()
    rates = {d: gemm_rate(d, args.device) for d in dtypes}
    cpu = _cpu_name()
    print(f"{args.device}: {cpu}; bf16 fast: {fast_bf16}; {fpt / 1e6:.1f} MFLOP per token", flush=True)
    print("GEMM ceiling: " + ", ".join(f"{d} {r / 1e9:.0f} GFLOP/s" for d, r in rates.items()), flush=True)

    out = []
    for config_name in args.configs.split(","):
        config = CONFIGS[config_name]
        train, val = split_validation(rows, config["validation"], 0) if config["validation"] else (rows, [])
        for dtype in dtypes:
            dname = str(dtype).removeprefix("torch.")
            results = {}
            eager = args.device == "cpu" and dtype == torch.bfloat16  # where ours trains with eager attention
            for grouped, eager_too in ((False, False), (True, False), *([(True, True)] if eager else [])):
                name = "Trainer + dynamic padding" + (" + group_by_length" if grouped else "")
                name += " + eager attention" if eager_too else ""
                results[name] = trainer_run(
                    train, val, labels, config, args.epochs, dtype, args.device, grouped, eager_too
                )
                print(f"  {config_name} {dname} {name}: {results[name][0]:.1f} s", flush=True)
            for before in (True, False) if args.before else (False,):
                name = "ours" + (" (before)" if before else "")
                with _before(before):
                    if config["validation"]:
                        work_job = work / f"job-{config_name}-{dname}-{before}"
                        results[f"{name} (job: claim → saved)"] = ours_job(
                            work_job, rows, config, args.epochs, dtype, args.device
                        )
                    else:
                        results[f"{name} (train_adapter)"] = ours_in_process(
                            train, labels, config, args.epochs, dtype, args.device
                        )
                print(f"  {config_name} {dname} {name}: {list(results.values())[-1][0]:.1f} s", flush=True)
            best_trainer = min(s for n, (s, _) in results.items() if n.startswith("Trainer"))
            for name, (seconds, tokens) in results.items():
                share = tokens * fpt / seconds / rates[dtype]
                out.append(
                    (
                        config_name,
                        dname,
                        name,
                        f"{len(train) * args.epochs / seconds:.1f}",
                        f"{seconds:.1f}",
                        f"{best_trainer / seconds:.2f}x",
                        f"{share:.0%}",
                    )
                )
    print()
    print(f"{args.rows} rt snippets, {args.epochs} epoch(s), {args.device} ({cpu})")
    header = ("config", "dtype", "run", "samples/s", "seconds", "vs faster Trainer", f"of {args.device} GEMM")
    print(table(out, header))


def alternate(rows, labels, epochs: int, dtypes, device: str, n: int) -> None:
    """Ours before and after the newest fast paths, alternating n times on one loaded base per dtype (the
    defaults' every-Linear LoRA, no validation): on a noisy machine, medians of interleaved runs say more than
    one run of each."""
    import statistics

    print(f"{len(rows)} rt snippets, {epochs} epoch(s), {device} ({_cpu_name()}), {n} alternating runs")
    for dtype in dtypes:
        seconds: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(n):
            for before in (True, False):
                with _before(before):
                    seconds[before].append(ours_in_process(rows, labels, CONFIGS["defaults"], epochs, dtype, device)[0])
        b, a = statistics.median(seconds[True]), statistics.median(seconds[False])
        runs = {k: " ".join(f"{s:.1f}" for s in v) for k, v in seconds.items()}
        print(
            f"  {str(dtype).removeprefix('torch.')}: before {b:.1f} s ({runs[True]}), after {a:.1f} s ({runs[False]}):"
            f" {b / a:.2f}x"
        )


def profile(rows, labels, epochs: int, dtypes, device: str) -> None:
    """Where a run's time goes: ours in process at the defaults' every-Linear LoRA (no validation) under
    torch.profiler, the ops with the most time of their own, per dtype."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    print(f"{len(rows)} rt snippets, {epochs} epoch(s), {device} ({_cpu_name()})")
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if device == "cuda" else [])]
    for dtype in dtypes:
        with torch_profile(activities=activities) as prof:
            seconds, _ = ours_in_process(rows, labels, CONFIGS["defaults"], epochs, dtype, device)
        print(f"\n{str(dtype).removeprefix('torch.')}: {seconds:.1f} s")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


def _cpu_name() -> str:
    import os

    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{model}, {os.cpu_count()} cores{gpu}"


if __name__ == "__main__":
    main()
