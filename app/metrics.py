"""Classification metrics (scikit-learn), the same for a job's validation epochs and for POST /evaluate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def multilabel_metrics(y_true: Any, y_pred: Any, labels: Sequence[str]) -> dict[str, Any]:
    """Multi-label figures on 0/1 matrices [rows, labels]: micro and macro F1, subset accuracy (every label of
    a row right), Hamming loss (the share of wrong row-label cells), and each label's precision, recall, F1,
    support (rows holding it)."""
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support

    each = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    return {
        "f1_micro": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "per_label": {
            str(label): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, *each, strict=True)
        },
    }


def tuned_thresholds(y_true: Any, probs: Any, grid: Sequence[float] | None = None) -> list[float]:
    """Per label, the probability threshold (from a grid of 0.05 … 0.95) with the best F1 on these rows; 0.5
    where a label never occurs (nothing to tune on) or where 0.5 is as good."""
    import numpy as np
    from sklearn.metrics import f1_score

    y_true, probs = np.asarray(y_true), np.asarray(probs)
    grid = grid or [round(0.05 * k, 2) for k in range(1, 20)]
    out = []
    for j in range(y_true.shape[1]):
        if not y_true[:, j].any():
            out.append(0.5)
            continue
        scores = {t: f1_score(y_true[:, j], probs[:, j] >= t, zero_division=0) for t in grid}
        best = max(scores.values())
        out.append(0.5 if scores.get(0.5, -1) >= best else min(t for t, f in scores.items() if f == best))
    return out


def classification_metrics(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any]) -> dict[str, Any]:
    """Accuracy, macro precision / recall / F1 over `labels` (a label never predicted nor present counts 0),
    and each label's precision, recall, F1 and support. `labels` name the classes in y_true / y_pred (indices
    or names); `per_label` is keyed by str(label)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = list(labels)
    macro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    each = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(macro[2]),
        "precision_macro": float(macro[0]),
        "recall_macro": float(macro[1]),
        "per_label": {
            str(label): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, *each, strict=True)
        },
    }
