"""Scores from probabilities, and evaluation metrics (scikit-learn) on labelled records."""

from __future__ import annotations

import torch


def to_predictions(labels: list[str], probs: torch.Tensor) -> list[dict]:
    out = []
    for row in probs.tolist():
        best = max(range(len(row)), key=row.__getitem__)
        out.append({"label": labels[best], "score": row[best], "scores": dict(zip(labels, row, strict=True))})
    return out


def evaluate(labels: list[str], y_true: list[str], probs: torch.Tensor) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y_pred = [labels[i] for i in probs.argmax(dim=-1).tolist()]
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "labels": labels,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
