"""Training benchmark: the classic recipe, Trainer + dynamic padding, and ours, side by side in one run.

    make bench-training        (or: python -m bench.training [--speed-n 1000] [--epochs 3])

Speed (1,000 Rotten Tomatoes snippets, minilm, LoRA r=8 on query/value, batch 16, same data and epochs, no
validation during training): samples/s, ratios against Trainer in fp32, the share of this machine's GEMM
ceiling (of the dtype each run trained in) that the real (non-padding) tokens trained represent, and held-out
accuracy / macro-F1 of each. The goal's comparison, both sides in the same dtype and Trainer also given its
length-grouped sampling, at the product's defaults and on query/value, is `bench/train_speed.py`'s.
Quality against TF-IDF and a full fine-tune, every method calibrated on a validation split, is
`bench/quality.py`'s. Also: seconds from POST /jobs to the first training step with the base already loaded in a worker.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench.common import SHARED, rt_rows, table

LORA_TARGETS = ["query", "value"]


def rows_of(name: str, split: str, cache: Path) -> list[dict]:
    import json

    if name == "rt_movie_snippets":
        return rt_rows(split, cache)
    path = SHARED / f"{name}.{split}.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} is absent (the bench reads ../shared/data)")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sample(rows: list[dict], n: int, seed: int = 0) -> list[dict]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[:n]


def gemm_rate(dtype: torch.dtype = torch.float32, seconds: float = 2.0) -> float:
    """FLOP/s of a MiniLM-sized matmul (2048x384 @ 384x1536) on this machine, now."""
    a, w = torch.randn(2048, 384, dtype=dtype), torch.randn(1536, 384, dtype=dtype)
    for _ in range(5):
        a @ w.T
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ w.T
        n += 1
    return n * 2 * 2048 * 384 * 1536 / (time.perf_counter() - t0)


def flops_per_token(model: torch.nn.Module) -> float:
    """Forward 2 FLOP per weight of every Linear in the encoder, backward to the inputs as much again
    (LoRA weight gradients are negligible; the frozen weights get none)."""
    n = sum(m.weight.numel() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layer" in name)
    return 4.0 * n


def metrics(labels: list[str], truth: list[str], pred: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": accuracy_score(truth, pred), "f1_macro": f1_score(truth, pred, average="macro", labels=labels)}


def minilm_path() -> str:
    from app.base_models.registry import ModelRegistry
    from app.config import Settings

    settings = Settings(_env_file=None)
    return ModelRegistry(settings.models, settings.model_cache_dir).resolve("minilm").path


# ---- the two reference recipes (HF Trainer) ------------------------------------------------------
def hf_trainer(
    train: list[dict],
    sets: list[list[dict]],
    labels: list[str],
    epochs: int,
    pad_to_max: bool,
    full: bool,
    lr: float | None = None,
    grouped: bool = False,
):
    """LoRA r=8 on query/value (or a full fine-tune) with the HF Trainer, fp32: texts padded to 128 (classic)
    or per batch, in Trainer's length-grouped order if `grouped`; lr 1e-3 (LoRA) or 5e-5 (full) unless given.
    Returns the training seconds, the real tokens trained, the figures on each of `sets`, and the model."""
    import datasets
    from peft import LoraConfig, TaskType, get_peft_model
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
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    if not full:
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1, target_modules=LORA_TARGETS)
        model = get_peft_model(model, lora)
    ids = {lab: i for i, lab in enumerate(labels)}

    def ds(rows):
        enc = tok(
            [r["text"] for r in rows], truncation=True, max_length=128, padding="max_length" if pad_to_max else False
        )
        return datasets.Dataset.from_dict(
            {**{k: enc[k] for k in enc.keys()}, "labels": [ids[r["label"]] for r in rows]}
        )

    train_ds = ds(train)
    real_tokens = sum(sum(m) for m in train_ds["attention_mask"]) * epochs
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=epochs,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=64,
            learning_rate=lr if lr is not None else 5e-5 if full else 1e-3,
            weight_decay=0.01,
            warmup_steps=0.06,
            lr_scheduler_type="linear",
            save_strategy="no",
            eval_strategy="no",
            logging_steps=50,
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
            **({"train_sampling_strategy": "group_by_length"} if grouped else {}),
        )
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tok))
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        figures = []
        for rows in sets:
            # With group_by_length, Trainer also length-groups (reorders) the rows it predicts: the true labels
            # come back in the predictions' order as label_ids.
            pred = trainer.predict(ds(rows))
            truth, guessed = [labels[i] for i in pred.label_ids], [labels[i] for i in pred.predictions.argmax(-1)]
            figures.append(metrics(labels, truth, guessed))
    return seconds, real_tokens, figures, model


# ---- ours ------------------------------------------------------------------------------------------
class _Quiet:
    def progress(self, step, total_steps, epoch):
        return None

    def metrics(self, points):
        pass

    def event(self, message, data=None):
        pass


def ours(train, val, test, labels, hp_overrides: dict, dtype: torch.dtype):
    """The product's trainer (app.training.trainer) on a base loaded as the worker loads it: (seconds, the
    run's metrics, its figures on `test`)."""
    seconds, run_metrics, (on_test,) = ours_on(train, val, [test], labels, hp_overrides, dtype)
    return seconds, run_metrics, on_test


def ours_on(train, val, sets: list[list[dict]], labels, hp_overrides: dict, dtype: torch.dtype):
    """`ours`, scored on each of `sets` by the serving engine (fp32)."""
    from app.base_models.loading import load_base
    from app.base_models.registry import ModelRegistry
    from app.config import Settings
    from app.inference.engine import InferenceEngine
    from app.stores.adapters import LocalAdapterStore
    from app.training.config import Hyperparameters
    from app.training.trainer import train_adapter

    settings = Settings(_env_file=None)
    registry = ModelRegistry(settings.models, settings.model_cache_dir)
    base = load_base(registry.resolve("minilm"), "none", "cpu", dtype)
    hp = Hyperparameters(**hp_overrides)
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalAdapterStore(Path(tmp) / "adapters")
        staging = store.staging_dir()
        t0 = time.perf_counter()
        result = train_adapter(base, train, val, labels, hp, staging, _Quiet())
        seconds = time.perf_counter() - t0
        store.commit(staging, "x", {"base_model": "minilm", "labels": labels, "heads": base.heads})
        engine = InferenceEngine(registry, store, "cpu", "none")
        figures = []
        for rows in sets:
            _, probs = engine.predict("x", [r["text"] for r in rows])
            pred = [labels[i] for i in probs.argmax(-1).tolist()]
            figures.append(metrics(labels, [r["label"] for r in rows], pred))
        engine.close()
    return seconds, result.metrics, figures


def first_step_seconds(work: Path) -> float:
    """POST /jobs (through the service) → the worker's first optimizer step, the base already loaded."""
    from app.config import Settings
    from app.jobs.worker import Worker
    from app.schemas import JobCreate
    from app.service import PeftServe

    settings = Settings(_env_file=None, data_dir=work / "data", adapters_dir=work / "adapters", workers=0)
    svc = PeftServe(settings)
    rows = sample(rows_of("rt_movie_snippets", "train", work / "rt"), 200, seed=1)
    worker = Worker(settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    warm = svc.submit_job(JobCreate(adapter="warm", train={"records": rows[:64]}, hyperparameters={"epochs": 1}))
    while svc.store.get_job(warm.id).status not in ("succeeded", "failed"):
        time.sleep(0.1)
    job = svc.submit_job(JobCreate(adapter="timed", train={"records": rows}, hyperparameters={"epochs": 1}))
    while svc.store.get_job(job.id).status not in ("succeeded", "failed"):
        time.sleep(0.1)
    worker.stopping.set()
    thread.join(30)
    created = svc.store.get_job(job.id).created_at
    first = next(e for e in svc.store.events(job.id) if e.message.startswith("First training step"))
    return _ts(first.created_at) - _ts(created)


def _ts(value: datetime) -> float:
    """SQLite hands back naive datetimes; the store writes them in UTC."""
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed-n", type=int, default=1000, help="training rows of the speed runs")
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--skip-classic", action="store_true", help="skip the slow padded-to-128 run")
    args = ap.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="peftserve-bench-train-"))
    from app.base_models.loading import resolve_dtype

    auto = resolve_dtype("auto", "cpu", "none")
    rt_train = sample(rows_of("rt_movie_snippets", "train", work / "rt"), args.speed_n)
    rt_test = sample(rows_of("rt_movie_snippets", "test", work / "rt"), args.n_test)
    labels = sorted({r["label"] for r in rt_train})
    # The speed runs share one LoRA set-up with the Trainer recipes: r=8 on query/value, lr 1e-3.
    fixed = {"epochs": args.epochs, "early_stopping_patience": 0, "target_modules": LORA_TARGETS, "learning_rate": 1e-3}
    rows, speed = [], {}
    gemm32, gemm16 = gemm_rate(torch.float32), gemm_rate(torch.bfloat16)
    from transformers import AutoModelForSequenceClassification

    fpt = flops_per_token(AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2))
    print(
        f"fp32 GEMM {gemm32 / 1e9:.0f} GFLOP/s, bf16 GEMM {gemm16 / 1e9:.0f} GFLOP/s; {fpt / 1e6:.1f} MFLOP per token",
        flush=True,
    )

    runs = []
    if not args.skip_classic:
        runs.append(
            (
                "classic: Trainer, padded to 128, fp32",
                lambda: hf_trainer(rt_train, [rt_test], labels, args.epochs, True, False),
            )
        )
    runs.append(
        ("Trainer + dynamic padding, fp32", lambda: hf_trainer(rt_train, [rt_test], labels, args.epochs, False, False))
    )
    for name, fn in runs:
        seconds, real_tokens, (m,), _ = fn()
        speed[name] = (len(rt_train) * args.epochs / seconds, real_tokens / seconds, m, gemm32)
        print(f"  {name}: {speed[name][0]:.1f} samples/s, {m}", flush=True)
    for name, dtype in (("ours, fp32", torch.float32), (f"ours, {str(auto).removeprefix('torch.')} (auto)", auto)):
        if name.startswith("ours, float32 (auto)"):
            continue
        seconds, tm, m = ours(rt_train, [], rt_test, labels, fixed, dtype)
        rate = gemm16 if dtype == torch.bfloat16 else gemm32
        speed[name] = (len(rt_train) * args.epochs / seconds, tm["train_tokens"] / seconds, m, rate)
        print(f"  {name}: {speed[name][0]:.1f} samples/s, trained in {tm['precision']}, {m}", flush=True)

    ref = speed["Trainer + dynamic padding, fp32"][0]
    for name, (sps, tps, m, rate) in speed.items():
        rows.append(
            (
                name,
                f"{sps:.1f}",
                f"{sps / ref:.2f}x",
                f"{tps * fpt / rate:.0%}",
                f"{m['accuracy']:.3f} / {m['f1_macro']:.3f}",
            )
        )
    print()
    print(
        table(
            rows,
            ("rt_movie_snippets, LoRA r=8", "samples/s", "vs Trainer+dyn", "of its dtype's GEMM", "acc / macro-F1"),
        )
    )

    print()
    print(f"POST /jobs -> first training step (base loaded): {first_step_seconds(work):.2f} s (goal <= 2 s)")


if __name__ == "__main__":
    main()
