"""Train one LoRA adapter (and its own classification head) on a loaded, shared base model.

Reads top to bottom: set up the head and LoRA, tokenize once, train with a lean loop (length-grouped
batches, bf16 autocast where the hardware has it), keep the best validation epoch, save, and take the LoRA
layers off the base again so the next job starts from the same clean base. Knows nothing of HTTP or the
database: progress goes to a Reporter. (bench/training.py measures it against the HF Trainer.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from app.base_models.loading import LoadedBase, new_head
from app.errors import JobInterrupted, TrainingError
from app.training.batches import Encoded, collate, encode, length_grouped_batches
from app.training.checkpoint import Checkpoints, fingerprint, restore_run
from app.training.config import Hyperparameters

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def progress(self, step: int, total_steps: int, epoch: float) -> str | None:
        """Record progress; return a reason ("cancelled", "shutdown") to stop, else None."""

    def metrics(self, points: list[dict]) -> None:
        """Record metric points {kind: train|eval, step, epoch, values}."""

    def event(self, message: str, data: dict | None = None) -> None: ...

    def rewind(self, step: int) -> None:
        """Forget metric points after `step` (a run resuming from a checkpoint there; 0: starting over).
        Called only when training with checkpoints."""


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
    checkpoints: Checkpoints | None = None,
) -> TrainResult:
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    _seed(hp.seed)
    new_head(base, labels, hp.seed)
    if base.quantization != "none" and not getattr(base.model, "_peftserve_kbit_ready", False):
        prepare_model_for_kbit_training(base.model, use_gradient_checkpointing=gradient_checkpointing)
        _keep_4bit_training_layout(base.model)
        base.model._peftserve_kbit_ready = True
    elif gradient_checkpointing:
        base.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # peft then adds the head to modules_to_save: it trains and saves with us
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        # all-linear: attention and feed-forward projections (peft leaves the classification head out). On
        # rt_movie_snippets it came within 0.2 points of a full fine-tune where query/value alone was 3 below.
        target_modules=hp.target_modules or "all-linear",
    )
    try:
        # LoRA weights and the head stay fp32 (the optimizer's master copy) even on a bf16 base.
        model = get_peft_model(base.model, lora, autocast_adapter_dtype=True)
    except ValueError as e:  # e.g. target_modules naming nothing in this model
        raise TrainingError(
            "invalid_hyperparameters", f"LoRA set-up failed for target_modules={hp.target_modules}: {e}"
        ) from e
    try:
        return _Loop(base, model, labels, hp, reporter).run(train_rows, val_rows, out_dir, checkpoints)
    finally:
        # Take LoRA layers and the head wrapper off again: the shared base is clean for the next job.
        base.model = model.unload()


def _seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Loop:
    """A lean training loop: length-grouped batches, bf16 autocast on a bf16 base, AdamW with linear
    warm-up/decay, evaluation each epoch with early stopping, the best epoch's weights kept; progress,
    metrics and cancellation through the Reporter about every 0.5 s (no per-step host work)."""

    def __init__(self, base: LoadedBase, model: Any, labels: list[str], hp: Hyperparameters, reporter: Reporter):
        self.base, self.model, self.labels, self.hp, self.reporter = base, model, labels, hp, reporter
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.autocast = base.model.dtype == torch.bfloat16 or (base.device == "cuda" and base.quantization != "none")
        self.pad_id = base.tokenizer.pad_token_id or 0
        self.pending: list[dict] = []
        self.last_flush = 0.0
        self.stop_reason: str | None = None

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.autocast(device_type=self.base.device, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(**inputs).logits.float()

    def run(
        self, train_rows: list[dict], val_rows: list[dict], out_dir: Path, checkpoints: Checkpoints | None = None
    ) -> TrainResult:
        hp = self.hp
        label_ids = {label: i for i, label in enumerate(self.labels)}
        max_length = self.base.max_tokens(hp.max_length)
        train = encode(self.base.tokenizer, train_rows, label_ids, max_length)
        val = encode(self.base.tokenizer, val_rows, label_ids, max_length) if val_rows else None
        lengths = [len(f["input_ids"]) for f in train.features]
        steps_per_epoch = -(-len(train) // hp.batch_size)
        total = steps_per_epoch * hp.epochs
        log_every = max(1, min(50, total // 50))  # ~50 loss points a run

        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.learning_rate,
            foreach=True,
        )
        warmup = int(hp.warmup_ratio * total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
        )
        weight = None
        if hp.class_weighting == "balanced":
            counts = np.bincount(train.labels, minlength=len(self.labels)).astype(float)
            weight = torch.tensor(len(train) / (len(self.labels) * np.maximum(counts, 1)), dtype=torch.float32)
            weight = weight.to(self.base.device)
        loss_fn = torch.nn.CrossEntropyLoss(weight=weight)

        # The run's state: all of it goes into a checkpoint, so a resumed run continues the same run.
        rng = np.random.default_rng(hp.seed)  # shuffling
        run: dict[str, Any] = {
            "step": 0,
            "epoch": 0,  # the epoch in progress
            "batch": 0,  # the next batch of that epoch
            "epoch_rng": rng.bit_generator.state,  # the shuffling RNG at that epoch's start
            "tokens": 0,
            "loss_total": 0.0,
            "best": None,  # (macro-F1, step, metric values, weights) of the best evaluation so far
            "bad_epochs": 0,
            "seconds": 0.0,
            "resumed_from": [],
        }
        loss_sum: Any = 0.0
        loss_n = 0
        fingerprint = self._fingerprint(len(train), len(val) if val is not None else 0)
        saved = checkpoints.load(fingerprint) if checkpoints else None
        if checkpoints is not None:  # points logged after the checkpoint (or by an attempt without one) go
            self.reporter.rewind(saved["step"] if saved else 0)
        if saved is not None:
            run = self._restore(saved, opt, sched)
            loss_sum, loss_n = saved["loss_sum"], saved["loss_n"]
            run["resumed_from"] = [*run["resumed_from"], run["step"]]
            self.reporter.event(
                f"Resumed from the checkpoint at step {run['step']} (epoch {run['epoch'] + 1}, batch {run['batch']})",
                {"step": run["step"]},
            )

        def checkpoint() -> None:
            if checkpoints is None:
                return
            self._flush(run["step"], total, run["step"] / steps_per_epoch, force=True)  # store has every point
            checkpoints.save(
                {
                    **run,
                    "seconds": run["seconds"] + time.perf_counter() - started,
                    "loss_sum": float(loss_sum),
                    "loss_n": loss_n,
                    "fingerprint": fingerprint,
                    "weights": self._state(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if self.base.device == "cuda" else [],
                }
            )

        started = time.perf_counter()
        self.reporter.progress(run["step"], total, run["step"] / steps_per_epoch)
        for epoch in range(run["epoch"], hp.epochs):
            self.model.train()
            if run["epoch"] != epoch:  # a new epoch: note where its shuffle starts
                run.update(epoch=epoch, batch=0, epoch_rng=rng.bit_generator.state)
            rng.bit_generator.state = run["epoch_rng"]
            batches = length_grouped_batches(lengths, hp.batch_size, rng)
            for b in range(run["batch"], len(batches)):
                idx = batches[b]
                batch = collate(train, idx, self.pad_id, self.base.device)
                loss = loss_fn(self._forward(batch), batch["labels"])
                loss.backward()
                opt.step()
                lr = sched.get_last_lr()[0]  # the rate this step used
                sched.step()
                opt.zero_grad(set_to_none=True)
                step = run["step"] = run["step"] + 1
                run["batch"] = b + 1
                run["tokens"] += train.n_tokens(idx)
                loss_sum, loss_n = loss_sum + loss.detach(), loss_n + 1  # a tensor: no host sync per step
                if step == 1:
                    self.reporter.event(
                        "First training step done", {"seconds": round(time.perf_counter() - started, 3)}
                    )
                if step % log_every == 0 or step == total:
                    self.pending.append(
                        {
                            "kind": "train",
                            "step": step,
                            "epoch": round(step / steps_per_epoch, 4),
                            "values": {"loss": float(loss_sum) / loss_n, "learning_rate": lr},
                        }
                    )
                    run["loss_total"] += float(loss_sum)
                    loss_sum, loss_n = 0.0, 0
                self._flush(step, total, step / steps_per_epoch)
                periodic = checkpoints and step % checkpoints.every_steps == 0 and b + 1 < len(batches)
                if self.stop_reason == "shutdown" or periodic:  # (an epoch's end checkpoints after its evaluation)
                    checkpoint()
                if self.stop_reason:
                    raise JobInterrupted(self.stop_reason)
            step = run["step"]
            stop_early = False
            if val is not None:
                values = self.evaluate(val, loss_fn)
                self.pending.append({"kind": "eval", "step": step, "epoch": float(epoch + 1), "values": values})
                best = run["best"]
                if best is None or values["f1_macro"] > best[0]:
                    run["best"], run["bad_epochs"] = (values["f1_macro"], step, values, self._state()), 0
                else:
                    run["bad_epochs"] += 1
                self._flush(step, total, epoch + 1.0, force=True)
                stop_early = bool(
                    hp.early_stopping_patience
                    and run["bad_epochs"] >= hp.early_stopping_patience
                    and epoch + 1 < hp.epochs
                )
            if not stop_early and epoch + 1 < hp.epochs:  # epoch boundary: the next one starts from here
                run.update(epoch=epoch + 1, batch=0, epoch_rng=rng.bit_generator.state)
                checkpoint()
            last = stop_early or epoch + 1 == hp.epochs
            if self.stop_reason and not (last and self.stop_reason == "shutdown"):
                raise JobInterrupted(self.stop_reason)  # cancelled, lost, or shut down between epochs
            if stop_early:  # (a shutdown during the final evaluation lets the finished run save)
                self.reporter.event(
                    f"Early stop after epoch {epoch + 1}: no better validation macro-F1 for {run['bad_epochs']} epochs",
                    {"best_step": run["best"][1]},
                )
                total = step  # the run is complete: progress reads 100%
                break
        step = run["step"]
        seconds = run["seconds"] + time.perf_counter() - started
        run["loss_total"] += float(loss_sum)  # steps after the last logged point
        self._flush(step, total, step / steps_per_epoch, force=True)
        metrics: dict[str, Any] = {
            "train_loss": round(run["loss_total"] / max(1, step), 6),  # mean over the run, as the HF Trainer has it
            "train_seconds": round(seconds, 3),
            "train_samples_per_second": round(len(train) * (step / steps_per_epoch) / seconds, 3),
            "train_tokens": run["tokens"],
            "n_train": len(train),
            "n_validation": len(val) if val is not None else 0,
            "steps": step,
            "precision": "bf16" if self.autocast else "fp32",
            "resumed_from_steps": run["resumed_from"],
        }
        best = run["best"]
        if best is not None:  # the weights we save are those of the best validation epoch
            self.model.load_state_dict(best[3], strict=False)
            metrics.update({k: round(v, 6) for k, v in best[2].items()})
            metrics["best_step"] = best[1]
        self.model.save_pretrained(str(out_dir), safe_serialization=True)
        return TrainResult(metrics=metrics, labels=self.labels, best_step=best[1] if best else None)

    def _fingerprint(self, n_train: int, n_val: int) -> str:
        """What a checkpoint must match to be resumed: the same base, precision, data sizes, labels, settings."""
        return fingerprint(
            base=self.base.name,
            quantization=self.base.quantization,
            autocast=self.autocast,
            device=self.base.device,
            labels=self.labels,
            n=[n_train, n_val],
            hp=self.hp.model_dump(),
        )

    def _restore(self, saved: dict[str, Any], opt: torch.optim.Optimizer, sched: Any) -> dict[str, Any]:
        missing = set(self._state()) - set(saved["weights"])
        if missing:
            raise TrainingError("checkpoint_mismatch", f"checkpoint lacks {len(missing)} trainable weights")
        self.model.load_state_dict(saved["weights"], strict=False)
        return restore_run(saved, opt, sched, self.base.device)

    @torch.no_grad()
    def evaluate(self, data: Encoded, loss_fn: torch.nn.Module) -> dict[str, float]:
        self.model.eval()
        order = sorted(range(len(data)), key=lambda i: len(data.features[i]["input_ids"]))
        preds, losses = [], []
        size = max(self.hp.batch_size, 32)
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            batch = collate(data, idx, self.pad_id, self.base.device)
            logits = self._forward(batch)
            losses.append(float(loss_fn(logits, batch["labels"])) * len(idx))
            preds.extend(logits.argmax(-1).tolist())
        y_true = [data.labels[i] for i in order]
        self.model.train()
        return {"loss": sum(losses) / len(data), **classification_metrics(y_true, preds, len(self.labels))}

    def _state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def _flush(self, step: int, total: int, epoch: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_flush < 0.5:
            return
        self.last_flush = now
        if self.pending:
            self.reporter.metrics(self.pending)
            self.pending = []
        reason = self.reporter.progress(step, total, round(epoch, 4))
        if reason and not self.stop_reason:
            self.stop_reason = reason


def _keep_4bit_training_layout(model: torch.nn.Module) -> None:
    """bitsandbytes repacks 4-bit weights for CPU inference at the first no-grad eval forward; training
    after that (the next epoch) then fails on the packed path. Training workers keep the plain layout."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
