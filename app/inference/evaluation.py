"""Scores from probabilities, and evaluation metrics (scikit-learn) on labelled records."""

from __future__ import annotations

import torch

from app.metrics import classification_metrics


def to_predictions(labels: list[str], probs: torch.Tensor) -> list[dict]:
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
