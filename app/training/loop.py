"""One adapter's training run, in the stages of a torchtune recipe: set up (data, optimizer and schedule),
resume, train an epoch, end the epoch (evaluate, keep the best, stop early, checkpoint), finish (keep the
best weights, save).

A lean loop rather than the HF Trainer: texts tokenized once and batched by similar length, bf16 autocast on
a bf16 base, AdamW with linear warm-up and decay, progress, metrics and cancellation through the Reporter
about every 0.5 s (no per-step host work). With a `Group` (app/training/distributed.py) several processes
run it together, each on its share of every batch; rank 0 alone reports, checkpoints and saves. Knows
nothing of HTTP or the database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from app.base_models.loading import LoadedBase
from app.errors import JobInterrupted, TrainingError
from app.metrics import classification_metrics, multilabel_metrics, tuned_thresholds
from app.training.batches import Encoded, collate, encode, length_grouped_batches
from app.training.checkpoint import Checkpoints, fingerprint, restore_rngs
from app.training.config import Hyperparameters
from app.training.distributed import Group

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5  # how often progress, metric points and the cancel check go to the Reporter
# Stop reasons that write a checkpoint first, so the job continues from there: the worker is shutting down, or
# the job was paused. (Cancelled and lost jobs stop at once: nothing of theirs is resumed by this worker.)
RESUMABLE_STOPS = ("shutdown", "paused")


def uses_autocast(base: LoadedBase) -> bool:
    """Whether a run on `base` computes under bf16 autocast: a bf16 base, or a bitsandbytes base on CUDA (whose
    compute dtype is bf16). The LoRA weights and the head stay fp32 either way (the optimizer's copy)."""
    return base.model.dtype == torch.bfloat16 or (base.device == "cuda" and base.quantization != "none")


class Reporter(Protocol):
    def progress(self, step: int, total_steps: int, epoch: float) -> str | None:
        """Record progress; return a reason ("cancelled", "lost", "shutdown", "paused") to stop, else None."""

    def metrics(self, points: list[dict]) -> None:
        """Record metric points {kind: train|eval, step, epoch, values}."""

    def event(self, message: str, data: dict | None = None) -> None: ...

    def rewind(self, step: int) -> None:
        """Forget metric points after `step` (a run resuming from a checkpoint there; 0: starting over).
        Called only when training with checkpoints."""


# Told at each epoch's end: (step, epoch, figures, write), where write(folder) saves the adapter as it stands.
EpochSink = Callable[[int, int, dict[str, float], Callable[[Path], None]], None]


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    thresholds: list[float] | None = None  # multi-label: each label's probability threshold


@dataclass
class RunState:
    """Where the run is: every field goes into a checkpoint, so a resumed run continues the same run."""

    step: int = 0
    epoch: int = 0  # the epoch in progress
    batch: int = 0  # the next batch of that epoch
    epoch_rng: dict | None = None  # the shuffling RNG's state at that epoch's start
    tokens: int = 0  # real (non-padding) tokens trained on
    loss_total: float = 0.0  # summed over the logged points (the run's mean train loss at the end)
    loss_sum: Any = 0.0  # losses since the last logged point: a tensor while training (no host sync per step)
    loss_n: int = 0
    best: tuple | None = None  # (macro-F1, step, metric values, weights) of the best evaluation so far
    bad_epochs: int = 0  # evaluations since the best one
    seconds: float = 0.0  # training time of the attempts before this one
    resumed_from: list[int] = field(default_factory=list)  # the steps this run was resumed from

    def to_checkpoint(self, seconds: float) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in fields(self)},
            "seconds": seconds,
            "loss_sum": float(self.loss_sum),
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> RunState:
        return cls(**{f.name: saved[f.name] for f in fields(cls)})


class TrainingRun:
    def __init__(
        self,
        base: LoadedBase,
        model: Any,
        labels: list[str],
        hp: Hyperparameters,
        reporter: Reporter,
        checkpoints: Checkpoints | None = None,
        multi_label: bool = False,
        keep_epoch: EpochSink | None = None,
        group: Group | None = None,
    ):
        self.base, self.model, self.labels, self.hp, self.reporter = base, model, labels, hp, reporter
        self.checkpoints, self.multi_label, self.keep_epoch, self.group = checkpoints, multi_label, keep_epoch, group
        self.writes = group is None or group.main  # checkpoints and the adapter: one process writes them
        self.last_eval: dict[str, Any] = {}  # the latest validation figures
        self.last_loss: float | None = None  # the latest logged training loss
        self.thresholds = [0.5] * len(labels)  # multi-label decisions (tuned at the end on request)
        self.autocast = uses_autocast(base)
        self.pad_id = base.tokenizer.pad_token_id or 0
        self.pending: list[dict] = []  # metric points not yet sent to the Reporter
        self.last_flush = 0.0
        self.requested: str | None = None  # a stop the Reporter asked for
        self.stop_reason: str | None = None  # the stop taken (in a group: once every rank knows of it)

    def run(self, train_rows: list[dict], val_rows: list[dict], out_dir: Path) -> TrainResult:
        """The whole run alone: begin, then each step of each epoch and each epoch's end, then finish."""
        self.begin(train_rows, val_rows)
        while not self.done:
            idx = self.next_batch()
            if idx is None:
                self.end_epoch()
                continue
            loss, lr = self._step(idx)
            self.after_step(idx, loss, lr)
        return self.finish(out_dir)

    # ---- the run in steps (app/training/fused.py drives several runs through these, one step each) ----------
    def begin(self, train_rows: list[dict], val_rows: list[dict]) -> None:
        """Set up data and optimizer, resume from a checkpoint where one fits, and start the epoch in progress."""
        self._setup_data(train_rows, val_rows)
        self._setup_optimizer()
        self.state = self._resume()
        self.started = time.perf_counter()
        self.reporter.progress(self.state.step, self.total, self.state.step / self.steps_per_epoch)
        self.done = self.state.epoch >= self.hp.epochs
        if not self.done:
            self._begin_epoch(self.state)

    def next_batch(self) -> list[int] | None:
        """The rows of the epoch's next step, or None when the epoch's batches are all done."""
        state = self.state
        return self.batches[state.batch] if state.batch < len(self.batches) else None

    def after_step(self, idx: list[int], loss: torch.Tensor, lr: float) -> None:
        """Count a finished step on the rows `idx`: progress, loss points, a periodic checkpoint; raises
        JobInterrupted when a stop was asked for (after checkpointing, for a resumable one)."""
        state = self.state
        state.step, state.batch = state.step + 1, state.batch + 1
        state.tokens += self.train.n_tokens(idx)
        state.loss_sum, state.loss_n = state.loss_sum + loss, state.loss_n + 1
        self._log_step(state, lr)
        periodic = (
            self.checkpoints and state.step % self.checkpoints.every_steps == 0 and state.batch < len(self.batches)
        )
        if self.stop_reason in RESUMABLE_STOPS or periodic:  # (an epoch's end checkpoints after evaluating)
            self._checkpoint(state)
        if self.stop_reason:
            raise JobInterrupted(self.stop_reason)

    def end_epoch(self) -> None:
        """The epoch's end (evaluate, keep the best, early stop, checkpoint); `done` once the run is over."""
        epoch = self.state.epoch
        if self._end_epoch(self.state, epoch) or epoch + 1 >= self.hp.epochs:
            self.done = True
        else:
            self._begin_epoch(self.state)

    def finish(self, out_dir: Path) -> TrainResult:
        return self._finish(self.state, out_dir)

    # ---- set up -------------------------------------------------------------------------------
    def _setup_data(self, train_rows: list[dict], val_rows: list[dict]) -> None:
        label_ids = {label: i for i, label in enumerate(self.labels)}
        max_length = self.base.max_tokens(self.hp.max_length)
        self.train = encode(self.base.tokenizer, train_rows, label_ids, max_length)
        self.val = encode(self.base.tokenizer, val_rows, label_ids, max_length) if val_rows else None
        self.lengths = [len(f["input_ids"]) for f in self.train.features]
        self.steps_per_epoch = -(-len(self.train) // self.hp.batch_size)
        self.total = self.steps_per_epoch * self.hp.epochs  # an early stop makes it the last step
        self.log_every = max(1, min(50, self.total // 50))  # ~50 loss points a run
        self.rng = np.random.default_rng(self.hp.seed)  # shuffling

    def _setup_optimizer(self) -> None:
        hp = self.hp
        params = self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            [
                {"params": [p for p in params if p.ndim >= 2], "weight_decay": hp.weight_decay},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},  # biases, norms
            ],
            lr=hp.learning_rate,
            foreach=True,
        )
        total, warmup = self.total, int(hp.warmup_ratio * self.total)
        self.sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay to 0
            self.opt, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
        )
        self.loss_fn = self._loss()

    def _loss(self) -> torch.nn.Module:
        """Cross-entropy over the labels, or (multi-label) a binary cross-entropy per label; `balanced` weights
        by inverse label frequency (multi-label: each label's negatives over its positives)."""
        balanced, device = self.hp.class_weighting == "balanced", self.base.device
        if self.multi_label:
            pos = np.asarray(self.train.labels, dtype=float).sum(axis=0)
            weight = torch.tensor((len(self.train) - pos) / np.maximum(pos, 1), dtype=torch.float32)
            return torch.nn.BCEWithLogitsLoss(pos_weight=weight.to(device) if balanced else None)
        weight = None
        if balanced:
            counts = np.bincount(self.train.labels, minlength=len(self.labels)).astype(float)
            weight = torch.tensor(len(self.train) / (len(self.labels) * np.maximum(counts, 1)), dtype=torch.float32)
        return torch.nn.CrossEntropyLoss(weight=weight.to(device) if weight is not None else None)

    # ---- resume -------------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        """What a checkpoint must match to be resumed: the same base, precision, data sizes, labels, settings."""
        return fingerprint(
            base=self.base.name,
            quantization=self.base.quantization,
            autocast=self.autocast,
            device=self.base.device,
            labels=self.labels,
            n=[len(self.train), len(self.val) if self.val is not None else 0],
            hp=self.hp.model_dump(),
        )

    def _resume(self) -> RunState:
        """A fresh state, or the checkpoint's: weights, optimizer, schedule, RNGs and data position restored."""
        fresh = RunState(epoch_rng=self.rng.bit_generator.state)
        if self.checkpoints is None:
            return fresh
        saved = self.checkpoints.load(self._fingerprint())
        self.reporter.rewind(saved["step"] if saved else 0)  # points logged after it (or by an attempt without one)
        if saved is None:
            return fresh
        missing = set(self._weights()) - set(saved["weights"])
        if missing:
            raise TrainingError("checkpoint_mismatch", f"checkpoint lacks {len(missing)} trainable weights")
        self.model.load_state_dict(saved["weights"], strict=False)
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        restore_rngs(saved, self.base.device)
        state = RunState.from_checkpoint(saved)
        state.resumed_from = [*state.resumed_from, state.step]
        self.reporter.event(
            f"Resumed from the checkpoint at step {state.step} (epoch {state.epoch + 1}, batch {state.batch})",
            {"step": state.step},
        )
        return state

    def _checkpoint(self, state: RunState) -> None:
        if self.checkpoints is None or not self.writes:
            return
        self._flush(state.step, state.step / self.steps_per_epoch, force=True)  # the store has every point
        self.checkpoints.save(
            {
                **state.to_checkpoint(seconds=state.seconds + time.perf_counter() - self.started),
                "fingerprint": self._fingerprint(),
                "weights": self._weights(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.base.device == "cuda" else [],
            }
        )

    # ---- train an epoch -----------------------------------------------------------------------
    def _begin_epoch(self, state: RunState) -> None:
        """The epoch's batches (the same order after a resume: the shuffle restarts from the RNG state saved at
        the epoch's start); a resumed run goes on from `state.batch`."""
        self.model.train()
        self.rng.bit_generator.state = state.epoch_rng
        self.batches = length_grouped_batches(self.lengths, self.hp.batch_size, self.rng)

    def _step(self, idx: list[int]) -> tuple[torch.Tensor, float]:
        """One optimizer step on the rows `idx`; returns its loss (a tensor: no host sync) and learning rate.
        In a group each rank takes its share of the rows, and the gradients are summed across ranks."""
        if self.group is None:
            loss = self._backward(idx)
        else:
            rows = self.group.shard(idx)
            loss = self._backward(rows, share=len(rows) / len(idx))
            loss, self.stop_reason = self.group.reduce_step(self.params, loss, self.requested)
        return loss.detach(), self.optimizer_step()

    def optimizer_step(self) -> float:
        """Apply the gradients: an AdamW step, the schedule's next step; returns the learning rate used."""
        self.opt.step()
        lr = self.sched.get_last_lr()[0]
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return lr

    def _backward(self, idx: list[int], share: float = 1.0) -> torch.Tensor:
        """Backward pass of the mean loss over `idx`, weighted by `share` (this rank's part of the batch)."""
        if not idx:  # a batch smaller than the group: nothing for this rank to add
            return torch.zeros((), device=self.base.device)
        batch = collate(self.train, idx, self.pad_id, self.base.device)
        loss = self.loss_fn(self._forward(batch), batch["labels"])
        if share != 1.0:
            loss = loss * share
        loss.backward()
        return loss.detach()

    def _log_step(self, state: RunState, lr: float) -> None:
        step = state.step
        if step == 1:
            self.reporter.event("First training step done", {"seconds": round(time.perf_counter() - self.started, 3)})
        if step % self.log_every == 0 or step == self.total:
            values = {"loss": float(state.loss_sum) / state.loss_n, "learning_rate": lr}
            self.pending.append(
                {"kind": "train", "step": step, "epoch": round(step / self.steps_per_epoch, 4), "values": values}
            )
            state.loss_total += float(state.loss_sum)
            state.loss_sum, state.loss_n, self.last_loss = 0.0, 0, values["loss"]
        self._flush(step, step / self.steps_per_epoch)

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.autocast(device_type=self.base.device, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(**inputs).logits.float()

    # ---- end an epoch -------------------------------------------------------------------------
    def _end_epoch(self, state: RunState, epoch: int) -> bool:
        """Evaluate, keep the best weights, decide on an early stop, checkpoint the epoch boundary. True: the
        run is over (early stop)."""
        last_epoch = epoch + 1 == self.hp.epochs
        stop_early = self.val is not None and self._evaluate_epoch(state, epoch) and not last_epoch
        self._keep_epoch(state, epoch)
        if not stop_early and not last_epoch:  # the next epoch starts from here
            state.epoch, state.batch, state.epoch_rng = epoch + 1, 0, self.rng.bit_generator.state
            self._checkpoint(state)
        if self.group is not None:  # the stop rank 0 was asked for meanwhile, on every rank
            self.stop_reason = self.group.agree(self.requested, self.base.device)
        if self.stop_reason and not ((stop_early or last_epoch) and self.stop_reason in RESUMABLE_STOPS):
            raise JobInterrupted(self.stop_reason)  # cancelled, lost, paused or shut down between epochs
        if stop_early:  # (a shutdown or pause during the final evaluation lets the finished run save)
            self.reporter.event(
                f"Early stop after epoch {epoch + 1}: no better validation macro-F1 for {state.bad_epochs} epochs",
                {"best_step": state.best[1] if state.best else None},
            )
            self.total = state.step  # the run is complete: progress reads 100%
        return stop_early

    def _evaluate_epoch(self, state: RunState, epoch: int) -> bool:
        """Evaluate on the validation set and keep the best weights; True when patience has run out."""
        assert self.val is not None
        values = self.last_eval = self.evaluate(self.val)
        self.pending.append({"kind": "eval", "step": state.step, "epoch": float(epoch + 1), "values": values})
        if state.best is None or values["f1_macro"] > state.best[0]:
            state.best, state.bad_epochs = (values["f1_macro"], state.step, values, self._weights()), 0
        else:
            state.bad_epochs += 1
        self._flush(state.step, epoch + 1.0, force=True)
        patience = self.hp.early_stopping_patience
        return bool(patience and state.bad_epochs >= patience)

    def _keep_epoch(self, state: RunState, epoch: int) -> None:
        """Hand the epoch's adapter (as it stands, not the best so far) and its figures to `keep_epoch`."""
        if self.keep_epoch is None or not self.writes:
            return
        pending = float(state.loss_sum) / state.loss_n if state.loss_n else None  # steps since the last point
        figures = {"train_loss": pending if pending is not None else self.last_loss}
        ev = self.last_eval if self.val is not None else {}
        accuracy = ev.get("subset_accuracy") if self.multi_label else ev.get("accuracy")
        figures.update(valid_loss=ev.get("loss"), valid_accuracy=accuracy, valid_f1_macro=ev.get("f1_macro"))
        rounded = {k: round(v, 6) for k, v in figures.items() if v is not None}
        self.keep_epoch(state.step, epoch + 1, rounded, lambda folder: self.model.save_pretrained(str(folder)))

    @torch.no_grad()
    def evaluate(self, data: Encoded) -> dict[str, Any]:
        """Validation figures: loss, and accuracy / macro-F1 / per label (multi-label: micro and macro F1, subset
        accuracy, Hamming loss, per label, at the current thresholds)."""
        loss, y_true, out = self._outputs(data)
        if self.multi_label:
            y_pred = (out >= torch.tensor(self.thresholds)).int().tolist()
            return {"loss": loss, **multilabel_metrics(y_true, y_pred, self.labels)}
        y_pred = out.argmax(-1).tolist()
        scores = classification_metrics(y_true, y_pred, range(len(self.labels)))
        predicted = np.bincount(y_pred, minlength=len(self.labels)).tolist()
        return {
            "loss": loss,
            "accuracy": scores["accuracy"],
            "f1_macro": scores["f1_macro"],
            "per_label": dict(zip(self.labels, scores["per_label"].values(), strict=True)),  # by name, not index
            "predicted": dict(zip(self.labels, predicted, strict=True)),  # how often each label was predicted
        }

    @torch.no_grad()
    def _outputs(self, data: Encoded) -> tuple[float, list, torch.Tensor]:
        """Mean loss, the true labels and the model's outputs (logits; multi-label: probabilities) per row, in
        the rows' length order."""
        self.model.eval()
        order = sorted(range(len(data)), key=lambda i: len(data.features[i]["input_ids"]))
        outputs, losses = [], []
        size = max(self.hp.batch_size, 32)
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            batch = collate(data, idx, self.pad_id, self.base.device)
            logits = self._forward(batch)
            losses.append(float(self.loss_fn(logits, batch["labels"])) * len(idx))
            outputs.append((torch.sigmoid(logits) if self.multi_label else logits).cpu())
        self.model.train()
        return sum(losses) / len(data), [data.labels[i] for i in order], torch.cat(outputs)

    # ---- finish -------------------------------------------------------------------------------
    def _finish(self, state: RunState, out_dir: Path) -> TrainResult:
        """The run's metrics; the best validation epoch's weights saved to `out_dir`."""
        step, seconds = state.step, state.seconds + time.perf_counter() - self.started
        state.loss_total += float(state.loss_sum)  # steps after the last logged point
        self._flush(step, step / self.steps_per_epoch, force=True)
        metrics: dict[str, Any] = {
            "train_loss": round(state.loss_total / max(1, step), 6),  # mean over the run, as the HF Trainer has it
            "train_seconds": round(seconds, 3),
            "train_samples_per_second": round(len(self.train) * (step / self.steps_per_epoch) / seconds, 3),
            "train_tokens": state.tokens,
            "n_train": len(self.train),
            "n_validation": len(self.val) if self.val is not None else 0,
            "steps": step,
            "precision": "bf16" if self.autocast else "fp32",
            "resumed_from_steps": state.resumed_from,
        }
        if state.best is not None:  # the weights we save are those of the best validation epoch
            _, best_step, values, weights = state.best
            self.model.load_state_dict(weights, strict=False)
            if self.multi_label and self.hp.tune_thresholds and self.val is not None:
                _, y_true, probs = self._outputs(self.val)
                self.thresholds = tuned_thresholds(y_true, probs.numpy())
                values = {**self.evaluate(self.val), "thresholds_tuned_on": "validation"}
            metrics.update(_rounded(values))
            metrics["best_step"] = best_step
        if self.writes:
            self.model.save_pretrained(str(out_dir), safe_serialization=True)
        return TrainResult(metrics=metrics, thresholds=self.thresholds if self.multi_label else None)

    # ---- helpers ------------------------------------------------------------------------------
    def _weights(self) -> dict[str, torch.Tensor]:
        """A copy of the trainable weights (LoRA and head)."""
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def _flush(self, step: int, epoch: float, force: bool = False) -> None:
        """Send pending metric points and progress to the Reporter (at most every FLUSH_SECONDS unless forced);
        note a stop it asks for."""
        now = time.monotonic()
        if not force and now - self.last_flush < FLUSH_SECONDS:
            return
        self.last_flush = now
        if self.pending:
            self.reporter.metrics(self.pending)
            self.pending = []
        reason = self.reporter.progress(step, self.total, round(epoch, 4))
        if reason and not self.requested:
            self.requested = reason
        if self.group is None:  # alone: taken at once; in a group, at the next step every rank takes together
            self.stop_reason = self.requested


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    """Floats to 6 places, nested dicts (per-label figures) too."""
    return {
        k: _rounded(v) if isinstance(v, dict) else round(v, 6) if isinstance(v, float) else v for k, v in values.items()
    }
