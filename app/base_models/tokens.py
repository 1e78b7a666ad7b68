"""Texts to model inputs, the same way for training and for serving: tokenized once (unpadded, truncated to
what the model takes), then each batch padded to its own longest row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Features = dict[str, list[int]]  # one row: input_ids, attention_mask (and token_type_ids where the model has them)


def tokenize(tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int) -> list[Features]:
    """One unpadded feature row per text (and its pair, for pair tasks)."""
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    keys = list(enc.keys())
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


def pad(rows: Sequence[Features], pad_id: int, device: str, multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Rows as tensors, right-padded to the longest row rounded up to `multiple_of` (few distinct shapes for
    the kernels to compile and cache): `input_ids` with the tokenizer's pad id, masks and types with 0."""
    width = max(len(r["input_ids"]) for r in rows)
    width = -(-width // multiple_of) * multiple_of
    return {
        key: torch.tensor(
            [r[key] + [pad_id if key == "input_ids" else 0] * (width - len(r[key])) for r in rows], device=device
        )
        for key in rows[0]
    }
