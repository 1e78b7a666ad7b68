"""Hyperparameters of one training job: defaults that train well on a few thousand short texts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(3, ge=1, le=100, description="passes over the training set")
    batch_size: int = Field(16, ge=1, le=1024, description="training examples per optimizer step")
    # LoRA trains few weights from a small init, so it wants a larger step than a full fine-tune (2e-5).
    # lr and rank calibrated with bench/quality.py on a validation split of rt_movie_snippets and sms_spam: rank 16
    # (alpha 32) had the best validation macro-F1 of ours on both (see README).
    learning_rate: float = Field(5e-4, gt=0, le=1.0, description="peak learning rate (linear decay)")
    lora_r: int = Field(16, ge=1, le=256, description="rank of the LoRA update matrices")
    lora_alpha: int = Field(32, ge=1, le=1024, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the LoRA branch input")
    target_modules: list[str] | None = Field(
        None,
        description="module names to adapt; null: every Linear of the model's blocks (attention and feed-forward"
        " projections, not the head)",
    )
    max_length: int = Field(128, ge=8, le=8192, description="tokens kept per example (longer are truncated)")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="fraction of steps with linear LR warm-up")
    weight_decay: float = Field(0.01, ge=0, lt=1, description="AdamW weight decay")
    early_stopping_patience: int = Field(
        2, ge=0, le=100, description="stop after this many epochs without a better validation macro-F1 (0: never)"
    )
    class_weighting: Literal["none", "balanced"] = Field(
        "none", description="balanced: weight the loss by inverse label frequency (imbalanced data)"
    )
    tune_thresholds: bool = Field(
        False,
        description="multi-label: each label's probability threshold tuned for F1 on the validation rows (else 0.5)",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds init, shuffling and the validation split")

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("target_modules must name at least one module or be null")
        for name in v:
            if not name or len(name) > 100 or not all(c.isalnum() or c in "._-" for c in name):
                raise ValueError(f"target_modules has an invalid module name: {name!r}")
        return v
