"""Load a base model for sequence classification: device, bitsandbytes quantization, pad token, head."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from app.base_models.heads import fresh_heads, inspect_architecture, pretrained_heads
from app.base_models.registry import ResolvedModel

log = logging.getLogger(__name__)


def pick_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def resolve_quantization(setting: str, device: str) -> str:
    """`auto` is nf4 on CUDA; on CPU bitsandbytes de-quantizes every matmul, so fp32 is faster there."""
    if setting == "auto":
        return "nf4" if device == "cuda" else "none"
    return setting


def cpu_has_fast_bf16() -> bool:
    """avx512_bf16 / AMX: bf16 matmuls run several times the fp32 rate there (bench/training.py prints both)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(setting: str, device: str, quantization: str) -> torch.dtype:
    """Precision of an unquantized base (serving and training). `auto`: bf16 where the hardware runs it fast
    (CUDA, CPUs with bf16 instructions), else fp32. A bitsandbytes base keeps its own compute dtype."""
    if quantization != "none":
        return torch.float32
    if setting == "auto":
        return torch.bfloat16 if device == "cuda" or cpu_has_fast_bf16() else torch.float32
    return torch.bfloat16 if setting == "bfloat16" else torch.float32


@dataclass
class LoadedBase:
    name: str
    model: Any  # a *ForSequenceClassification model
    tokenizer: Any
    device: str
    quantization: str
    heads: list[str]  # the task head's top-level modules (app/base_models/heads.py)
    revision: str | None = None  # the hub commit the weights came from (None for a local folder)
    # head modules the checkpoint holds weights for (ModernBERT's `head` from its MLM checkpoint): each job
    # starts from a copy of these; every other head module starts fresh
    pretrained_heads: dict[str, Any] = field(default_factory=dict)

    def max_tokens(self, wanted: int) -> int:
        """`wanted` capped at what the model takes: its position embeddings (RoBERTa-style embeddings number
        positions from pad id + 1, so 514 positions take 512 tokens) and its tokenizer's model_max_length."""
        limits = [wanted]
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions:
            embeddings = getattr(self.model.base_model, "embeddings", None)
            offset = getattr(embeddings, "padding_idx", None)
            numbered_after_pad = hasattr(type(embeddings), "create_position_ids_from_input_ids")
            limits.append(int(positions) - (offset + 1 if numbered_after_pad and offset is not None else 0))
        model_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and model_max < 1_000_000:  # unset: a huge sentinel
            limits.append(model_max)
        return max(1, min(limits))


def load_tokenizer(resolved: ResolvedModel) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolved.path, revision=resolved.revision)
    if tok.pad_token is None:  # decoder models (Llama, GPT-2) ship without one
        tok.pad_token = tok.eos_token or tok.unk_token
    tok.padding_side = "right"
    return tok


def quantization_config(quantization: str, device: str, heads: list[str]) -> Any:
    """bitsandbytes settings; the head stays out of quantization (bitsandbytes cannot run a freshly
    initialised, never-quantized head, and each adapter brings its own head anyway)."""
    from transformers import BitsAndBytesConfig

    if quantization == "none":
        return None
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if device == "cuda" else torch.float32,
            llm_int8_skip_modules=heads,
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=heads)
    raise ValueError(f"unknown quantization {quantization!r}")


def load_base(
    resolved: ResolvedModel, quantization: str, device: str, dtype: torch.dtype = torch.float32
) -> LoadedBase:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    arch = inspect_architecture(AutoConfig.from_pretrained(resolved.path, revision=resolved.revision))
    if arch.problem:
        raise ValueError(f"{resolved.name}: {arch.problem}")
    tok = load_tokenizer(resolved)
    qcfg = quantization_config(quantization, device, list(arch.heads))
    kwargs: dict[str, Any] = {
        "num_labels": 2,
        "revision": resolved.revision,
        "dtype": dtype if quantization == "none" else torch.float32,
    }
    if qcfg is not None:
        kwargs.update(quantization_config=qcfg, device_map={"": device})
    model, info = AutoModelForSequenceClassification.from_pretrained(resolved.path, output_loading_info=True, **kwargs)
    if qcfg is None:
        model.to(device)
    model.config.pad_token_id = tok.pad_token_id
    revision = getattr(model.config, "_commit_hash", None)
    pretrained = pretrained_heads(model, list(arch.heads), set(info.get("missing_keys", ())))
    return LoadedBase(resolved.name, model, tok, device, quantization, list(arch.heads), revision, pretrained)


def new_head(base: LoadedBase, labels: list[str], seed: int, multi_label: bool = False) -> None:
    """A freshly initialised head for this job's label set, put in place of the base's head."""
    fresh_heads(base.model, base.heads, labels, seed, base.pretrained_heads, multi_label)
