"""The way out: an adapter merged into its base as a standalone transformers model folder.

`AutoModelForSequenceClassification.from_pretrained(folder)` then predicts what the server predicts, with no
peft and no peftserve: the LoRA weights are merged into the base's layers, the adapter's task head is in place,
and config.json carries the label names (id2label). Written fp32, safetensors, beside the tokenizer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from app.base_models.loading import load_tokenizer
from app.base_models.registry import ResolvedModel
from app.stores.adapters import AdapterVersion


def export_merged(version: AdapterVersion, base: ResolvedModel, dest: Path) -> Path:
    """Merge `version` into a fresh fp32 copy of `base` and save it to `dest` (which must not exist yet);
    written to a temporary folder beside it and renamed, so a failed export leaves nothing half-written."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    if dest.exists():
        raise FileExistsError(f"{dest} exists already")
    labels = version.labels
    tokenizer = load_tokenizer(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base.path,
        revision=base.revision,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        dtype=torch.float32,
    )
    trained_on, here = version.meta.get("base_revision"), getattr(model.config, "_commit_hash", None)
    if trained_on and here and trained_on != here:
        raise ValueError(f"{version.ref} was trained on revision {trained_on} of its base; the registry has {here}")
    model.config.pad_token_id = tokenizer.pad_token_id
    merged = PeftModel.from_pretrained(model, str(version.path)).merge_and_unload()
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
