"""Dataset store: validated records kept as canonical JSONL, content-addressed (the same rows always get the
same id), with a row in the job store (size, label counts) that the API reads without touching the file.

`DatasetStore` is the interface; `LocalDatasetStore` keeps the files in a folder. Another backend (an object
store) implements `_put`, `_read` and `_remove` only: ids, rows and lookups are the same for every backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path

from app.errors import NotFound
from app.jobs.store import JobStore
from app.jobs.tables import DatasetRow
from app.training.data import is_multilabel, label_names


class DatasetStore(ABC):
    def __init__(self, store: JobStore):
        self.store = store

    def save(self, rows: list[dict], filename: str | None = None) -> DatasetRow:
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

    def load(self, dataset_id: str) -> list[dict]:
        body = self.content(dataset_id)
        return [json.loads(line) for line in body.decode("utf-8").split("\n") if line.strip()]

    @abstractmethod
    def _put(self, dataset_id: str, body: bytes) -> None:
        """Write the content once, atomically (a reader sees all of it or none); a second write may be skipped."""

    @abstractmethod
    def _read(self, dataset_id: str) -> bytes | None:
        """The content, or None if there is none."""

    @abstractmethod
    def _remove(self, dataset_id: str) -> None:
        """Remove the content if there is any."""


def _checked_id(dataset_id: str) -> str:
    """Ids are ours (`ds_` + hex): anything else names no dataset (and never a path outside the store)."""
    if not dataset_id.startswith("ds_") or not dataset_id[3:].isalnum():
        raise NotFound(f"no dataset {dataset_id!r}", field="dataset")
    return dataset_id


class LocalDatasetStore(DatasetStore):
    """One `<id>.jsonl` file per dataset in a folder."""

    def __init__(self, root: Path, store: JobStore):
        super().__init__(store)
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _put(self, dataset_id: str, body: bytes) -> None:
        path = self.root / f"{dataset_id}.jsonl"
        if not path.exists():
            tmp = path.with_suffix(f".tmp-{uuid.uuid4().hex}")  # unique per writer: threads and processes
            tmp.write_bytes(body)
            os.replace(tmp, path)

    def _read(self, dataset_id: str) -> bytes | None:
        try:
            return (self.root / f"{dataset_id}.jsonl").read_bytes()
        except FileNotFoundError:
            return None

    def _remove(self, dataset_id: str) -> None:
        (self.root / f"{dataset_id}.jsonl").unlink(missing_ok=True)
