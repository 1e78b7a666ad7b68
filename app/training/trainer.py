"""Train one LoRA adapter (and its own classification head) on a loaded, shared base model.

Reads top to bottom: set up the head and LoRA, tokenize, train with the HF Trainer (dynamic padding),
keep the best validation checkpoint, save, and take the LoRA layers off the base again so the next job
starts from the same clean base. Knows nothing of HTTP or the database: progress goes to a Reporter.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers import PrinterCallback, TrainerCallback

from app.errors import JobInterrupted, TrainingError
from app.models.loading import LoadedBase, new_head
from app.training.config import Hyperparameters

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def progress(self, step: int, total_steps: int, epoch: float) -> str | None:
        """Record progress; return a reason ("cancelled", "shutdown") to stop, else None."""

    def metrics(self, points: list[dict]) -> None:
        """Record metric points {kind: train|eval, step, epoch, values}."""

    def event(self, message: str, data: dict | None = None) -> None: ...


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    labels: list[str]
    best_step: int | None = None


def classification_metrics(y_true: Any, y_pred: Any, n_labels: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", labels=list(range(n_labels)), zero_division=0)),
    }


def train_adapter(
    base: LoadedBase,
    train_rows: list[dict],
    val_rows: list[dict],
    labels: list[str],
    hp: Hyperparameters,
    out_dir: Path,
    reporter: Reporter,
    gradient_checkpointing: bool = False,
) -> TrainResult:
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    set_seed(hp.seed)
    new_head(base, labels, hp.seed)
    if base.quantization != "none" and not getattr(base.model, "_peftserve_kbit_ready", False):
        prepare_model_for_kbit_training(base.model, use_gradient_checkpointing=gradient_checkpointing)
        _keep_4bit_training_layout(base.model)
        base.model._peftserve_kbit_ready = True

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # peft then adds the head to modules_to_save: it trains and saves with us
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=hp.target_modules,
    )
    try:
        model = get_peft_model(base.model, lora)
    except ValueError as e:  # e.g. target_modules naming nothing in this model
        raise TrainingError(
            "invalid_hyperparameters", f"LoRA set-up failed for target_modules={hp.target_modules}: {e}"
        ) from e
    try:
        label_ids = {label: i for i, label in enumerate(labels)}
        max_length = base.max_tokens(hp.max_length)
        train_ds = _tokenize(base.tokenizer, train_rows, label_ids, max_length)
        val_ds = _tokenize(base.tokenizer, val_rows, label_ids, max_length) if val_rows else None
        tracker = _Tracker(reporter, model)

        with tempfile.TemporaryDirectory(prefix="peftserve-train-") as tmp:
            steps_per_epoch = -(-len(train_ds) // hp.batch_size)
            args = TrainingArguments(
                output_dir=tmp,
                num_train_epochs=hp.epochs,
                per_device_train_batch_size=hp.batch_size,
                per_device_eval_batch_size=max(hp.batch_size, 32),
                learning_rate=hp.learning_rate,
                weight_decay=hp.weight_decay,
                lr_scheduler_type="linear",
                warmup_steps=hp.warmup_ratio,  # transformers 5: a float < 1 is a fraction of all steps
                eval_strategy="epoch" if val_ds is not None else "no",
                save_strategy="no",  # the best weights are kept in memory by _Tracker (LoRA + head are small)
                logging_strategy="steps",
                logging_steps=max(1, min(50, steps_per_epoch * hp.epochs // 50)),  # ~50 loss points a run
                report_to="none",
                disable_tqdm=True,
                seed=hp.seed,
                data_seed=hp.seed,
                use_cpu=base.device == "cpu",
                dataloader_num_workers=0,
                label_names=["labels"],
            )
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=train_ds,
                eval_dataset=val_ds,
                data_collator=DataCollatorWithPadding(base.tokenizer),
                compute_metrics=lambda p: classification_metrics(
                    p.label_ids, np.argmax(p.predictions, axis=-1), len(labels)
                ),
                callbacks=[tracker],
            )
            trainer.remove_callback(PrinterCallback)  # progress goes to the Reporter, not stdout
            started = time.perf_counter()
            out = trainer.train()
            train_seconds = time.perf_counter() - started
            if tracker.stop_reason:
                raise JobInterrupted(tracker.stop_reason)

            tracker.restore_best()
            metrics: dict[str, Any] = {
                "train_loss": round(float(out.training_loss), 6),
                "train_seconds": round(train_seconds, 3),
                "train_samples_per_second": round(len(train_ds) * hp.epochs / train_seconds, 3),
                "n_train": len(train_ds),
                "n_validation": len(val_ds) if val_ds is not None else 0,
                "steps": int(trainer.state.global_step),
            }
            if tracker.best_values is not None:  # validation metrics of the weights we save
                metrics.update({k: round(v, 6) for k, v in tracker.best_values.items()})
                metrics["best_step"] = tracker.best_step
        model.save_pretrained(str(out_dir), safe_serialization=True)
        return TrainResult(metrics=metrics, labels=labels, best_step=tracker.best_step)
    finally:
        # Take LoRA layers and the head wrapper off again: the shared base is clean for the next job.
        base.model = model.unload()


def _keep_4bit_training_layout(model: torch.nn.Module) -> None:
    """bitsandbytes repacks 4-bit weights for CPU inference at the first no-grad eval forward; training
    after that (the next epoch) then fails on the packed path. Training workers keep the plain layout."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _tokenize(tokenizer: Any, rows: list[dict], label_ids: dict[str, int], max_length: int) -> Any:
    import datasets

    texts = [r["text"] for r in rows]
    pairs = [r.get("text_pair") for r in rows]
    has_pairs = any(p is not None for p in pairs)
    enc = tokenizer(
        texts,
        [p or "" for p in pairs] if has_pairs else None,
        truncation=True,
        max_length=max_length,
    )
    columns = {k: enc[k] for k in enc.keys()}
    columns["labels"] = [label_ids[r["label"]] for r in rows]
    return datasets.Dataset.from_dict(columns)


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class _Tracker(TrainerCallback):
    """Progress + cancellation every ~0.5 s, metric points batched, best eval kept."""

    def __init__(self, reporter: Reporter, model: torch.nn.Module, every: float = 0.5):
        self.reporter, self.model, self.every = reporter, model, every
        self.pending: list[dict] = []
        self.last = 0.0
        self.stop_reason: str | None = None
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_values: dict[str, float] | None = None

    def _flush(self, state: Any, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        if self.pending:
            self.reporter.metrics(self.pending)
            self.pending = []
        reason = self.reporter.progress(state.global_step, state.max_steps, round(float(state.epoch or 0), 4))
        if reason and not self.stop_reason:
            self.stop_reason = reason

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._flush(state)
        if self.stop_reason:
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.pending.append(
                {
                    "kind": "train",
                    "step": state.global_step,
                    "epoch": round(float(state.epoch or 0), 4),
                    "values": {"loss": float(logs["loss"]), "learning_rate": float(logs.get("learning_rate", 0.0))},
                }
            )

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kw: Any) -> None:
        m = metrics or {}
        values = {
            k.removeprefix("eval_"): float(m[k]) for k in ("eval_loss", "eval_accuracy", "eval_f1_macro") if k in m
        }
        self.pending.append(
            {"kind": "eval", "step": state.global_step, "epoch": round(float(state.epoch or 0), 4), "values": values}
        )
        score = values.get("f1_macro")
        if score is not None and (self.best_score is None or score > self.best_score):
            self.best_score, self.best_step, self.best_values = score, state.global_step, values
            self.best_state = _trainable_state(self.model)
        self._flush(state, force=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._flush(state, force=True)

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state, strict=False)
