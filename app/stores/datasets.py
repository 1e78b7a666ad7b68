"""Dataset store: validated records kept as canonical JSONL, content-addressed (the same rows always get the
same id), with a row in the job store (size, label counts) that the API reads without touching the file.

The files are `<id>.jsonl` keys in a Blobs (app/stores/blobs.py): a local folder by default, or the shared
object store every host reads (PEFTSERVE_STORAGE_URL).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import NotFound
from app.jobs.store import JobStore
from app.jobs.tables import DatasetRow
from app.stores.blobs import Blobs
from app.training.data import is_multilabel, label_names


@dataclass
class DatasetDetails:
    """What a dataset holds, read from its rows: length percentiles (characters and words of text plus
    text_pair) and the first rows as stored."""

    row: DatasetRow
    chars: dict[str, int]  # p50, p90, p99, max
    words: dict[str, int]
    first_rows: list[dict[str, Any]]


class DatasetStore:
    def __init__(self, blobs: Blobs, store: JobStore):
        self.blobs = blobs
        self.store = store

    def save(self, rows: list[dict], filename: str | None = None, notes: list[str] | None = None) -> DatasetRow:
        """Store validated rows; the same content always gets the same id."""
        body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()
        digest = hashlib.sha256(body).hexdigest()
        dataset_id = f"ds_{digest[:24]}"
        self._put(_checked_id(dataset_id), body)
        counts = Counter(name for r in rows for name in label_names(r))
        row = DatasetRow(
            id=dataset_id,
            filename=filename,
            n_records=len(rows),
            labels=dict(sorted(counts.items())),
            multi_label=is_multilabel(rows),
            sha256=digest,
            size_bytes=len(body),
            notes=notes or None,
        )
        return self.store.add_dataset(row)

    def delete(self, dataset_id: str) -> DatasetRow:
        """Remove a dataset no live job uses (409 otherwise): its row, then its file."""
        row = self.store.delete_dataset(_checked_id(dataset_id))
        self._remove(dataset_id)
        return row

    def content(self, dataset_id: str) -> bytes:
        """The stored rows as canonical JSON lines (one {text, label[, text_pair]} object a line)."""
        body = self._read(_checked_id(dataset_id))
        if body is None:
            raise NotFound(f"dataset {dataset_id!r} has no file in the store", field="dataset")
        return body

    def get(self, dataset_id: str, field: str = "dataset") -> DatasetRow:
        return self.store.get_dataset(dataset_id, field=field)

    def page(self, limit: int, after: str | None = None) -> tuple[list[DatasetRow], bool]:
        """Newest first; `after` is the id of the last dataset of the previous page. Returns (rows, has_more)."""
        anchor = None
        if after is not None:
            try:
                row = self.store.get_dataset(_checked_id(after), field="after")
            except NotFound:
                raise NotFound(f"no dataset {after!r} to page after", field="after") from None
            anchor = (row.created_at, row.id)
        rows = self.store.page_datasets(anchor, limit + 1)
        return rows[:limit], len(rows) > limit

    def details(self, dataset_id: str, first: int = 5) -> DatasetDetails:
        row = self.get(dataset_id, field="dataset_id")
        rows = self.load(dataset_id)
        texts = [r["text"] + " " + r.get("text_pair", "") if r.get("text_pair") else r["text"] for r in rows]
        return DatasetDetails(
            row=row,
            chars=_percentiles([len(t) for t in texts]),
            words=_percentiles([len(t.split()) for t in texts]),
            first_rows=rows[:first],
        )

    def load(self, dataset_id: str) -> list[dict]:
        body = self.content(dataset_id)
        return [json.loads(line) for line in body.decode("utf-8").split("\n") if line.strip()]

    def _put(self, dataset_id: str, body: bytes) -> None:
        """Write the content once (the same id is the same content: a second write is skipped)."""
        if not self.blobs.exists(f"{dataset_id}.jsonl"):
            self.blobs.put(f"{dataset_id}.jsonl", body)

    def _read(self, dataset_id: str) -> bytes | None:
        return self.blobs.get(f"{dataset_id}.jsonl")

    def _remove(self, dataset_id: str) -> None:
        self.blobs.delete(f"{dataset_id}.jsonl")


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    p50, p90, p99 = np.percentile(values, [50, 90, 99], method="higher")
    return {"p50": int(p50), "p90": int(p90), "p99": int(p99), "max": max(values)}


def _checked_id(dataset_id: str) -> str:
    """Ids are ours (`ds_` + hex): anything else names no dataset (and never a path outside the store)."""
    if not dataset_id.startswith("ds_") or not dataset_id[3:].isalnum():
        raise NotFound(f"no dataset {dataset_id!r}", field="dataset")
    return dataset_id
