"""Labelled text data: parse uploads, validate rows (errors name the field and row), split for validation."""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import PayloadTooLarge, ValidationFailed

COLUMNS = ("text", "label", "text_pair")


@dataclass(frozen=True)
class Limits:
    max_records: int = 200_000
    max_text_chars: int = 20_000
    max_labels: int = 1_000


def validate_records(rows: list[Any], field: str, limits: Limits, min_labels: int = 2) -> list[dict]:
    """Check rows of {text, label, text_pair?}; return normalised rows (labels as strings).

    Raises ValidationFailed naming the field and row, e.g. ``train.records[3].text``.
    """
    if not isinstance(rows, list) or not rows:
        raise ValidationFailed("needs at least one record", field=field)
    if len(rows) > limits.max_records:
        raise PayloadTooLarge(f"{len(rows)} records is over the limit of {limits.max_records}", field=field)
    out: list[dict] = []
    label_types: set[type] = set()
    for i, row in enumerate(rows):
        where = f"{field}[{i}]"
        if not isinstance(row, dict):
            raise ValidationFailed("each record must be an object with text and label", field=where)
        extra = set(row) - set(COLUMNS)
        if extra:
            raise ValidationFailed(f"unknown column(s) {sorted(extra)}; expected text, label, text_pair", field=where)
        rec = {"text": _text(row, "text", where, limits, required=True)}
        if row.get("text_pair") is not None:
            rec["text_pair"] = _text(row, "text_pair", where, limits, required=True)
        label = row.get("label")
        if label is None:
            raise ValidationFailed("label is missing", field=f"{where}.label")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise ValidationFailed(
                f"label must be a string or an integer, got {type(label).__name__}", field=f"{where}.label"
            )
        if isinstance(label, str) and not label.strip():
            raise ValidationFailed("label is empty", field=f"{where}.label")
        if isinstance(label, str) and (not _encodable(label) or len(label) > 200):
            raise ValidationFailed("label must be valid Unicode of at most 200 characters", field=f"{where}.label")
        label_types.add(type(label))
        if len(label_types) > 1:
            raise ValidationFailed(
                "labels mix strings and integers; use one type for every row", field=f"{where}.label"
            )
        rec["label"] = str(label).strip() if isinstance(label, str) else str(label)
        out.append(rec)
    counts = Counter(r["label"] for r in out)
    if len(counts) < min_labels:
        raise ValidationFailed(
            f"needs at least {min_labels} distinct labels, found {len(counts)}: {sorted(counts)}", field=field
        )
    if len(counts) > limits.max_labels:
        raise ValidationFailed(f"{len(counts)} labels is over the limit of {limits.max_labels}", field=field)
    return out


def _text(row: dict, key: str, where: str, limits: Limits, required: bool) -> str:
    value = row.get(key)
    if value is None and required:
        raise ValidationFailed(f"{key} is missing", field=f"{where}.{key}")
    if not isinstance(value, str):
        raise ValidationFailed(f"{key} must be a string, got {type(value).__name__}", field=f"{where}.{key}")
    if not value.strip():
        raise ValidationFailed(f"{key} is empty", field=f"{where}.{key}")
    if not _encodable(value):
        raise ValidationFailed(f"{key} is not valid Unicode (unpaired surrogate)", field=f"{where}.{key}")
    if len(value) > limits.max_text_chars:
        raise ValidationFailed(
            f"{key} has {len(value)} characters, over the limit of {limits.max_text_chars}", field=f"{where}.{key}"
        )
    return value


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_upload(filename: str, content: bytes, limits: Limits) -> list[dict]:
    """Parse a JSONL or CSV upload with the `datasets` library and validate it."""
    suffix = Path(filename or "").suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise ValidationFailed("file must be .jsonl, .json or .csv", field="file")
    if not content.strip():
        raise ValidationFailed("file is empty", field="file")
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValidationFailed(f"file is not UTF-8 text (bad byte at offset {e.start})", field="file") from e
    rows = _load_rows(suffix, content)
    return validate_records(rows, "file", limits)


def _load_rows(suffix: str, content: bytes) -> list[dict]:
    import datasets  # heavy: imported where used

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(content)
        try:
            if suffix == ".csv":
                ds = datasets.Dataset.from_csv(str(path), cache_dir=tmp, keep_in_memory=True, keep_default_na=False)
            else:
                ds = datasets.Dataset.from_json(str(path), cache_dir=tmp, keep_in_memory=True)
        except Exception as e:  # datasets wraps parser errors in several types
            raise ValidationFailed(f"could not parse the file: {_first_line(e)}", field="file") from e
    missing = [c for c in ("text", "label") if c not in ds.column_names]
    if missing:
        raise ValidationFailed(f"missing column(s) {missing}; found {ds.column_names}", field="file")
    rows = ds.to_list()
    if suffix == ".csv":  # CSV has no types: a column of digits is still text where text is expected
        for r in rows:
            for k in ("text", "text_pair"):
                if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool):
                    r[k] = str(r[k])
    # Columns absent from a row come back as None; drop them so validation sees only what was given.
    return [{k: v for k, v in r.items() if not (k == "text_pair" and v in (None, ""))} for r in rows]


def _first_line(e: Exception) -> str:
    cause = e
    while cause.__cause__ is not None and not str(cause):
        cause = cause.__cause__
    text = str(cause) or type(cause).__name__
    return text.strip().splitlines()[0][:300] if text.strip() else type(cause).__name__


def split_validation(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out `fraction` of rows, stratified by label when every label has at least 2 rows."""
    from sklearn.model_selection import train_test_split

    n_val = validation_size(len(rows), fraction)
    labels = [r["label"] for r in rows]
    counts = Counter(labels)
    stratify = labels if min(counts.values()) >= 2 and n_val >= len(counts) else None
    try:
        train, val = train_test_split(rows, test_size=n_val, random_state=seed, stratify=stratify)
    except ValueError:  # stratification impossible at this size: a plain seeded split
        train, val = train_test_split(rows, test_size=n_val, random_state=seed)
    return train, val


def validation_size(n: int, fraction: float) -> int:
    return max(1, math.ceil(n * fraction))


def check_split_possible(n: int, fraction: float, field: str) -> None:
    if fraction <= 0:
        return
    n_val = validation_size(n, fraction)
    if n - n_val < 2:
        raise ValidationFailed(
            f"{n} records are too few to hold out {fraction:.0%} for validation and still train", field=field
        )
