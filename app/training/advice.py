"""Results that warn: what a finished run's user should look at before trusting its adapter, each saying what
to do. A job with warnings still succeeds (the adapter is saved); the warnings go in its result and events."""

from __future__ import annotations

from collections import Counter
from typing import Any

MIN_VALIDATION_ROWS = 30  # fewer: one row moves accuracy by more than 3 points
MIN_ROWS_PER_LABEL = 5  # fewer: a label's precision and recall are a coin toss


def result_warnings(val_labels: list[Any], labels: list[str], metrics: dict[str, Any]) -> list[str]:
    """`val_labels`: the validation rows' labels (lists for multi-label); `metrics`: the kept epoch's figures
    (single-label ones carry `predicted`, the kept adapter's predictions counted per label)."""
    warnings = []
    n = len(val_labels)
    if 0 < n < MIN_VALIDATION_ROWS:
        warnings.append(
            f"validation has only {n} row{'s' if n > 1 else ''}, so each row moves accuracy by {100 / n:.0f} points:"
            " judge this adapter"
            f" on {MIN_VALIDATION_ROWS}+ rows (a validation file, or validation_split on more data)"
        )
    if n:
        counts = Counter(x for v in val_labels for x in (v if isinstance(v, list) else [v]))
        few = [f"{label!r} ({counts.get(label, 0)})" for label in labels if counts.get(label, 0) < MIN_ROWS_PER_LABEL]
        if few:
            warnings.append(
                f"validation has fewer than {MIN_ROWS_PER_LABEL} rows of {', '.join(few[:10])}: their precision and"
                " recall mean little; add rows of these labels or validate on more data"
            )
    predicted = {k: v for k, v in (metrics.get("predicted") or {}).items() if v}
    if len(labels) > 1 and n > 1 and len(predicted) == 1:
        (only,) = predicted
        warnings.append(
            f"the kept adapter predicts {only!r} for every validation row: it has not learned to tell the labels"
            ' apart; train more epochs (hyperparameters.epochs), on more rows, or with class_weighting: "balanced"'
            " if one label dominates"
        )
    return warnings
