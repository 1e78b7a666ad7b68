"""Classification metrics (scikit-learn), the same for a job's validation epochs and for POST /evaluate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
