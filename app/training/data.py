"""Labelled text data: parse uploads, validate rows (errors name the field and row), split for validation."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import PayloadTooLarge, ValidationFailed
from app.training.chat import chat_record, is_chat_row

COLUMNS = ("text", "label", "text_pair")
CSV_LABELS = "labels"  # a CSV column of multi-label rows: names separated by LABEL_SEPARATOR ("" for none)
LABEL_SEPARATOR = "|"


def label_names(row: dict) -> list[str]:
    """A validated row's labels: its one label, or its list (multi-label; possibly empty)."""
    label = row["label"]
    return list(label) if isinstance(label, list) else [label]


def is_multilabel(rows: list[dict]) -> bool:
    """Rows whose labels are lists: a multi-label task (validated rows never mix the two kinds)."""
    return bool(rows) and isinstance(rows[0]["label"], list)


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
    label_kinds: set[type] = set()
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
        if isinstance(label, list):
            rec["label"] = sorted(
                {_one_label(x, f"{where}.label[{j}]", strings_only=True) for j, x in enumerate(label)}
            )
        else:
            rec["label"] = _one_label(label, f"{where}.label")
        label_kinds.add(type(label))
        if len(label_kinds) > 1:
            mixed = "single labels and lists (multi-label)" if list in label_kinds else "strings and integers"
            raise ValidationFailed(f"labels mix {mixed}; use one kind for every row", field=f"{where}.label")
        out.append(rec)
    counts = Counter(name for r in out for name in label_names(r))
    if len(counts) < min_labels:
        raise ValidationFailed(
            f"needs at least {min_labels} distinct labels, found {len(counts)}: {sorted(counts)}", field=field
        )
    if len(counts) > limits.max_labels:
        raise ValidationFailed(f"{len(counts)} labels is over the limit of {limits.max_labels}", field=field)
    return out


def _one_label(label: Any, field: str, strings_only: bool = False) -> str:
    """One label name: a non-empty string (or an integer, outside lists) of valid Unicode, at most 200 characters."""
    kinds = (str,) if strings_only else (str, int)
    if isinstance(label, bool) or not isinstance(label, kinds):
        wanted = "a string" if strings_only else "a string or an integer, or a list of strings (multi-label)"
        raise ValidationFailed(f"label must be {wanted}, got {type(label).__name__}", field=field)
    if isinstance(label, str) and not label.strip():
        raise ValidationFailed("label is empty", field=field)
    if (isinstance(label, str) and surrogate_at(label) is not None) or len(str(label)) > 200:  # ints: their digits
        raise ValidationFailed("label must be valid Unicode of at most 200 characters", field=field)
    return str(label).strip() if isinstance(label, str) else str(label)


def _text(row: dict, key: str, where: str, limits: Limits, required: bool) -> str:
    value = row.get(key)
    if value is None and required:
        raise ValidationFailed(f"{key} is missing", field=f"{where}.{key}")
    if not isinstance(value, str):
        raise ValidationFailed(f"{key} must be a string, got {type(value).__name__}", field=f"{where}.{key}")
    if not value.strip():
        raise ValidationFailed(f"{key} is empty", field=f"{where}.{key}")
    if surrogate_at(value) is not None:
        raise ValidationFailed(f"{key} is not valid Unicode (unpaired surrogate)", field=f"{where}.{key}")
    if len(value) > limits.max_text_chars:
        raise ValidationFailed(
            f"{key} has {len(value)} characters, over the limit of {limits.max_text_chars}", field=f"{where}.{key}"
        )
    return value


def _label_notes(rows: Any) -> list[str]:
    """Integer labels are label names like any other (7 and "7" are one label): say so once."""
    if not isinstance(rows, list):
        return []
    found = sorted(
        {r["label"] for r in rows if isinstance(r, dict) and type(r.get("label")) is int}
        | {
            x
            for r in rows
            if isinstance(r, dict) and isinstance(r.get("label"), list)
            for x in r["label"]
            if type(x) is int
        }
    )
    if not found:
        return []
    shown = ", ".join(map(str, found[:10])) + (", …" if len(found) > 10 else "")
    return [f"integer labels ({shown}) were read as label names: predictions answer them as strings"]


def surrogate_at(value: str) -> int | None:
    """Where `value` holds an unpaired surrogate (JSON's "\\ud800" decodes to one; no file or tokenizer
    takes it), or None for valid Unicode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def parse_upload(filename: str, content: bytes, limits: Limits, notes: list[str] | None = None) -> list[dict]:
    """Parse a JSONL/JSON (stdlib `json`, types as written) or CSV (the `datasets` library) upload and validate it;
    by its extension, else by its first character (`{` or `[`: JSON lines or a JSON list; anything else: CSV).
    JSON rows are {text, label, text_pair?} or OpenAI chat rows {messages} (app/training/chat.py). `notes`, if
    given, gets what the user should know about how the rows were read (integer labels taken as names).

    Errors name the file's row as `file[i]` (0-based record index) and, for JSON lines, the line in the message.
    """
    suffix = Path(filename or "").suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):  # no telling name (a pipe, "data.txt"): read what it holds
        suffix = ".jsonl" if content.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"[") else ".csv"
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValidationFailed(
            "file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8", field="file"
        )
    content = content.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is not part of the data
    if not content.strip():
        raise ValidationFailed("file is empty", field="file")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as e:
        line = content.count(b"\n", 0, e.start) + 1
        raise ValidationFailed(
            f"file is not UTF-8 text (bad byte at offset {e.start}, line {line}); save it as UTF-8", field="file"
        ) from e
    if suffix == ".csv":
        rows, lines = _csv_rows(text, content), None
    else:
        rows, lines = _json_rows(text)
        objects = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
        missing = [c for c in ("text", "label") if objects and not any(c in r or is_chat_row(r) for r in objects)]
        if missing:  # a column no record has: say so once, not as row 0's problem
            raise ValidationFailed(
                f"no record has {' or '.join(missing)}; each needs text and label (or OpenAI chat messages)",
                field="file",
            )
    try:
        if isinstance(rows, list):  # OpenAI chat rows: the user turns are the text, the last message the label
            rows = [chat_record(r, f"file[{i}]") if is_chat_row(r) else r for i, r in enumerate(rows)]
        if notes is not None:
            notes += _label_notes(rows)
        return validate_records(rows, "file", limits)
    except ValidationFailed as e:
        m = re.match(r"file\[(\d+)\]", e.field or "")
        if m and lines is not None:  # blank lines are skipped: say which line the record is on
            raise ValidationFailed(f"{e.message} (line {lines[int(m.group(1))]})", field=e.field) from None
        raise


def _json_rows(text: str) -> tuple[list, list[int] | None]:
    """Rows of a JSON array document, or of JSON lines (one value per non-blank line) with their line numbers."""
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # else: JSON lines whose first line is an array; read line by line
                raise ValidationFailed(
                    f"could not parse the file as JSON: {e.msg} (line {e.lineno}, column {e.colno})", field="file"
                ) from None
        except (ValueError, RecursionError) as e:  # nesting too deep, an integer of thousands of digits
            raise ValidationFailed(f"could not parse the file as JSON: {_reason(e)}", field="file") from None
        else:
            return data, None
    rows, lines = [], []
    # JSON Lines are separated by "\n" only: str.splitlines() would also split at U+2028, U+0085 and other
    # characters that real texts carry inside their JSON strings (the Rotten Tomatoes snippets do).
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValidationFailed(
                f"could not parse line {n} as JSON: {e.msg} (column {e.colno}); each line must be one JSON object",
                field="file",
            ) from None
        except (ValueError, RecursionError) as e:
            raise ValidationFailed(f"could not parse line {n} as JSON: {_reason(e)}", field="file") from None
        lines.append(n)
    return rows, lines


def _csv_rows(text: str, content: bytes) -> list[dict]:
    try:
        header = next(csv.reader(io.StringIO(text)), [])
    except csv.Error as e:
        raise ValidationFailed(f"could not parse the CSV header: {e}", field="file") from None
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise ValidationFailed(f"the header repeats column(s) {dupes}", field="file")
    label_column = CSV_LABELS if CSV_LABELS in header and "label" not in header else "label"
    missing = [c for c in ("text", label_column) if c not in header]
    if missing:
        raise ValidationFailed(
            f"missing column(s) {missing}; found {header} (the first line must be the header: text,label[,text_pair]"
            f", or text,labels with {LABEL_SEPARATOR}-separated names for multi-label)",
            field="file",
        )
    extra = [c for c in header if c not in (*COLUMNS, label_column)]
    if extra:
        raise ValidationFailed(
            f"unknown column(s) {extra} in the header; expected text, label (or labels), text_pair", field="file"
        )
    rows = _csv_records(text, header)
    if label_column == CSV_LABELS:  # multi-label: "a|b" -> ["a", "b"], "" -> []
        for r in rows:
            r["label"] = [x for x in r.pop(CSV_LABELS).split(LABEL_SEPARATOR) if x.strip()]
    # Empty text_pair cells mean "no pair": drop them so validation sees only what was given.
    return [{k: v for k, v in r.items() if not (k == "text_pair" and v == "")} for r in rows]


def _csv_records(text: str, header: list[str]) -> list[dict]:
    """Every row after the header as a dict of strings (CSV has no types: "01" stays "01"). A row with more
    or fewer fields than the header is refused, naming it: never shifted or cut silently."""
    reader = csv.reader(io.StringIO(text), strict=True)  # strict: an unclosed quote is an error, not a row
    rows: list[dict] = []
    try:
        next(reader)
        for fields in reader:
            if not fields:  # a blank line
                continue
            if len(fields) != len(header):
                raise ValidationFailed(
                    f"row has {len(fields)} fields, the header {len(header)} (line {reader.line_num}); quote a text"
                    " that holds a comma",
                    field=f"file[{len(rows)}]",
                )
            rows.append(dict(zip(header, fields, strict=True)))
    except csv.Error as e:
        raise ValidationFailed(f"could not parse the file as CSV: {e} (line {reader.line_num})", field="file") from None
    if not rows:
        raise ValidationFailed("needs at least one record; the file has a header only", field="file")
    return rows


def _reason(e: BaseException) -> str:
    """A parser error in one line: RecursionError's text names Python internals, so say what it means."""
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e).splitlines()[0][:300] if str(e) else type(e).__name__


def split_validation(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out `fraction` of rows, stratified by label when every label has at least 2 rows."""
    from sklearn.model_selection import train_test_split

    n_val = validation_size(len(rows), fraction)
    labels = None if is_multilabel(rows) else [r["label"] for r in rows]  # multi-label: a plain seeded split
    counts = Counter(labels or [])
    stratify = labels if labels and min(counts.values()) >= 2 and n_val >= len(counts) else None
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
