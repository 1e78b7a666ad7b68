"""Scores from probabilities, and evaluation metrics (scikit-learn) on labelled records."""

from __future__ import annotations

from typing import Any

import torch

from app.metrics import classification_metrics, multilabel_metrics
from app.stores.adapters import AdapterVersion


def to_predictions(labels: list[str], probs: torch.Tensor, thresholds: list[float] | None = None) -> list[dict]:
    """Per row: the best label, its score and every label's (single-label); or, with `thresholds`
    (multi-label), every label at or over its threshold, possibly none, and each label's probability."""
    if thresholds is not None:
        return [
            {
                "labels": [label for label, p, t in zip(labels, row, thresholds, strict=True) if p >= t],
                "scores": dict(zip(labels, row, strict=True)),
            }
            for row in probs.tolist()
        ]
    out = []
    for row in probs.tolist():
        best = max(range(len(row)), key=row.__getitem__)
        out.append({"label": labels[best], "score": row[best], "scores": dict(zip(labels, row, strict=True))})
    return out


def evaluate(labels: list[str], y_true: list[str], probs: torch.Tensor) -> dict:
    from sklearn.metrics import confusion_matrix

    y_pred = [labels[i] for i in probs.argmax(dim=-1).tolist()]
    return {
        "n": len(y_true),
        **classification_metrics(y_true, y_pred, labels),
        "labels": labels,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def evaluate_multilabel(
    labels: list[str], y_true: list[list[str]], probs: torch.Tensor, thresholds: list[float]
) -> dict:
    """Multi-label figures of an adapter's decisions (each label at its threshold) on rows' true label lists."""
    truth = [[1 if label in row else 0 for label in labels] for row in y_true]
    decided = (probs >= torch.tensor(thresholds)).int().tolist()
    return {"n": len(y_true), **multilabel_metrics(truth, decided, labels), "labels": labels, "thresholds": thresholds}


def predictions_for(version: AdapterVersion, probs: Any) -> list[dict]:
    """A version's answers: single-label, or multi-label at its thresholds."""
    return to_predictions(version.labels, probs, thresholds_of(version))


def thresholds_of(version: AdapterVersion) -> list[float] | None:
    """A multi-label version's per-label thresholds (0.5 where none were saved); None for single-label."""
    if not version.meta.get("multi_label"):
        return None
    return list(version.meta.get("thresholds") or [0.5] * len(version.labels))
