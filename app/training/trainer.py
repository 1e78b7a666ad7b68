"""Train one LoRA adapter (and its own classification head) on a loaded, shared base model.

Reads top to bottom: put a fresh head for the job's labels on the base, wrap it with LoRA, take the fast paths
this device has, run the training (app/training/loop.py), and take the LoRA layers off the base again so the
next job starts from the same clean base. Knows nothing of HTTP or the database: progress goes to a Reporter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from app.base_models.loading import LoadedBase, new_head
from app.errors import TrainingError
from app.training.checkpoint import Checkpoints
from app.training.config import Hyperparameters
from app.training.distributed import Group
from app.training.dropout import cheap_dropout
from app.training.loop import EpochSink, Reporter, TrainingRun, TrainResult, uses_autocast

# On CPU under bf16 autocast, torch's fused attention (sdpa) is slow backwards: on MiniLM in batches of 16 short
# rows its backward took 24% of a step, 9x its forward. Eager attention (matmul, softmax, matmul) trained
# 1.2-1.5x faster at 16-256 tokens a row and slower at 512 (2-core AMD EPYC with avx512_bf16). In fp32 eager
# was level up to 128 tokens and slower at 256, and CUDA was not measured: both keep the model's own choice.
EAGER_ATTENTION_MAX_TOKENS = 256


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
    init_from: Path | None = None,
    multi_label: bool = False,
    keep_epoch: EpochSink | None = None,
    group: Group | None = None,
) -> TrainResult:
    seed_everything(hp.seed)
    new_head(base, labels, hp.seed, multi_label)
    prepare_base(base, gradient_checkpointing)
    model = with_lora(base, hp)
    try:
        if init_from is not None:
            load_parent(model, init_from)
        with _fast_paths(base, model, hp):
            run = TrainingRun(base, model, labels, hp, reporter, checkpoints, multi_label, keep_epoch, group)
            return run.run(train_rows, val_rows, out_dir)
    finally:
        # Take LoRA layers and the head wrapper off again: the shared base is clean for the next job.
        base.model = model.unload()


def prepare_base(base: LoadedBase, gradient_checkpointing: bool) -> None:
    """A quantized base is made trainable once (peft's kbit preparation); gradient checkpointing on request."""
    from peft import prepare_model_for_kbit_training

    if base.quantization != "none" and not getattr(base.model, "_peftserve_kbit_ready", False):
        prepare_model_for_kbit_training(base.model, use_gradient_checkpointing=gradient_checkpointing)
        _keep_4bit_training_layout(base.model)
        base.model._peftserve_kbit_ready = True
    elif gradient_checkpointing:
        base.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def with_lora(base: LoadedBase, hp: Hyperparameters) -> torch.nn.Module:
    """The base wrapped with this job's LoRA layers; the head trains with them (peft's modules_to_save)."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        # all-linear: attention and feed-forward projections; the README's quality table shows what it gains
        # over query/value alone. Nothing inside the head gets LoRA layers (peft leaves modules_to_save out).
        target_modules=hp.target_modules or "all-linear",
        # every module of the task head trains in full and is saved with the adapter (app/base_models/heads.py)
        modules_to_save=list(base.heads),
    )
    try:
        # LoRA weights and the head stay fp32 (the optimizer's master copy) even on a bf16 base.
        model = get_peft_model(base.model, lora, autocast_adapter_dtype=True)
    except ValueError as e:  # e.g. target_modules naming nothing in this model
        raise TrainingError(
            "invalid_hyperparameters", f"LoRA set-up failed for target_modules={hp.target_modules}: {e}"
        ) from e
    return model


@contextmanager
def _fast_paths(base: LoadedBase, model: torch.nn.Module, hp: Hyperparameters) -> Iterator[None]:
    """The same computation, done faster where this device is slow at the general one, for one run; the
    shared base is as it was afterwards:
    - CPU: every dropout (LoRA's inputs, the base's hidden states and head) drawn cheaply
      (app/training/dropout.py);
    - bf16 autocast: each LoRA layer takes its input as it comes instead of copying it to fp32 first (peft
      casts it to the LoRA weights' dtype; autocast casts it straight back to bf16 for the matmul);
    - CPU under bf16 autocast, rows of at most EAGER_ATTENTION_MAX_TOKENS: eager attention."""
    attention = base.model.config._attn_implementation
    if uses_autocast(base):
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):  # peft's LoRA layers (taken off after the run)
                module.cast_input_dtype_enabled = False
        if base.device == "cpu" and base.max_tokens(hp.max_length) <= EAGER_ATTENTION_MAX_TOKENS:
            set_attention(base.model, "eager")
    try:
        with cheap_dropout(model, base.device):
            yield
    finally:
        set_attention(base.model, attention)


def set_attention(model: torch.nn.Module, implementation: str | None) -> None:
    """Switch the attention kernel of a transformers model (those built on its attention interface)."""
    if implementation and getattr(model, "_can_set_attn_implementation", lambda: False)():
        if model.config._attn_implementation != implementation:
            model.set_attn_implementation(implementation)


def load_parent(model: torch.nn.Module, weights: Path) -> None:
    """Start from a saved adapter's LoRA weights and head (`init_from`); every weight must find its place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(weights))
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k or "modules_to_save" in k]
    if unexpected or missing:
        raise TrainingError(
            "init_from_mismatch",
            f"init_from: the saved adapter does not fit this job's LoRA layers (unexpected {unexpected[:3]}, "
            f"missing {missing[:3]})",
        )


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _keep_4bit_training_layout(model: torch.nn.Module) -> None:
    """bitsandbytes repacks 4-bit weights for CPU inference at the first no-grad eval forward; training
    after that (the next epoch) then fails on the packed path. Training workers keep the plain layout."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
