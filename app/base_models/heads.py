"""The task head of a *ForSequenceClassification model: which modules it is, a fresh one for a job's labels,
and whether the service can train and serve an architecture at all.

The head is every top-level module of the model outside its backbone (`model.base_model_prefix`) that holds
weights: BERT's and ALBERT's `classifier`; RoBERTa's, XLM-RoBERTa's and ELECTRA's `classifier` (dense +
out_proj); DistilBERT's `pre_classifier` + `classifier`; DeBERTa-v2's `pooler` + `classifier`; ModernBERT's
`head` + `classifier`; GPT-2's, Llama's, Qwen2's … `score`. All of it trains with the adapter (peft's
`modules_to_save`), is saved with it and is loaded with it; the shared base keeps no per-task weights. A job
starts each head module from the checkpoint where the checkpoint has it (ModernBERT's `head` is in its MLM
checkpoint), else newly initialised (the logits layer always).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# The layer types a head may hold weights in: serving keeps one copy of each per adapter
# (app/inference/heads.py), so a head made of anything else is refused before a job trains.
HEAD_LAYER_TYPES = (nn.Linear, nn.LayerNorm)


def head_names(model: nn.Module) -> list[str]:
    """The head's top-level modules, in the model's order."""
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if backbone is None:
        raise ValueError(f"{type(model).__name__}: no backbone at base_model_prefix")
    return [n for n, child in model.named_children() if child is not backbone and any(True for _ in child.parameters())]


@dataclass(frozen=True)
class Architecture:
    """What the service needs to know of a base before it trains: its class, its head, and, where it can't be
    trained and served, why."""

    class_name: str
    heads: tuple[str, ...]
    problem: str | None = None


def inspect_architecture(config: Any) -> Architecture:
    """Build the *ForSequenceClassification model of `config` on the meta device (no weights, no memory) and
    check it: a known class, a head of served layer types, a backbone with Linear (or Conv1D) layers."""
    from transformers import AutoModelForSequenceClassification

    try:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
    except (ValueError, KeyError) as e:
        kind = getattr(config, "model_type", "?")
        return Architecture("", (), f"model type {kind!r} has no sequence-classification model in transformers ({e})")
    name = type(model).__name__
    try:
        heads = tuple(head_names(model))
    except ValueError as e:
        return Architecture(name, (), str(e))
    if not heads:
        return Architecture(name, heads, f"{name} has no classification head")
    for head in heads:
        for path, module in model.get_submodule(head).named_modules(prefix=head):
            if any(True for _ in module.parameters(recurse=False)) and type(module) not in HEAD_LAYER_TYPES:
                return Architecture(name, heads, f"{name}: head module {path} is a {type(module).__name__}")
    if not backbone_linears(model, heads):
        return Architecture(name, heads, f"{name}: no Linear layers outside the head for LoRA")
    return Architecture(name, heads)


def backbone_linears(model: nn.Module, heads: tuple[str, ...] | list[str]) -> list[str]:
    """Every Linear (or GPT-2 Conv1D) outside the head: what `all-linear` LoRA targets."""
    from transformers.pytorch_utils import Conv1D

    return [
        path
        for path, module in model.named_modules()
        if isinstance(module, nn.Linear | Conv1D) and path.split(".")[0] not in heads
    ]


def pretrained_heads(model: nn.Module, heads: list[str], missing: set[str]) -> dict[str, nn.Module]:
    """Fp32 copies of the head modules whose every weight came from the checkpoint (none was missing)."""
    out = {}
    for name in heads:
        keys = [f"{name}.{k}" for k in getattr(model, name).state_dict()]
        if keys and not missing.intersection(keys):
            out[name] = copy.deepcopy(getattr(model, name)).float()
    return out


def fresh_heads(
    model: Any,
    heads: list[str],
    labels: list[str],
    seed: int,
    pretrained: dict[str, nn.Module] | None = None,
    multi_label: bool = False,
) -> None:
    """Put a head for `labels` in place of the model's (fp32): a copy of the checkpoint's weights for the
    modules in `pretrained`, the rest newly initialised (seeded, the architecture's own initialisation); give
    the model's config the label map."""
    config = model.config  # shared with the backbone's modules: changed in place
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.problem_type = "multi_label_classification" if multi_label else "single_label_classification"
    with torch.device("meta"):
        template = type(model)(copy.deepcopy(config))  # the head modules for this many labels, no memory
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    for name in heads:
        if pretrained and name in pretrained:
            module = copy.deepcopy(pretrained[name]).to(device)
        else:
            module = getattr(template, name).to_empty(device=device).float()
            module.apply(model._init_weights)
        setattr(model, name, module)
    model.num_labels = len(labels)  # some models keep their own copy for the loss
