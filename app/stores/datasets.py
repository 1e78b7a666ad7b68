"""Dataset store: validated records kept as canonical JSONL, content-addressed (the same rows always get the
same id), with a row in the job store (size, label counts) that the API reads without touching the file.

The files are `<id>.jsonl` keys in a Blobs (app/stores/blobs.py): a local folder by default, or the shared
object store every host reads (PEFTSERVE_STORAGE_URL).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from app.errors import NotFound
from app.jobs.store import JobStore
from app.jobs.tables import DatasetRow
from app.stores.blobs import Blobs
from app.training.data import is_multilabel, label_names


class DatasetStore:
    def __init__(self, blobs: Blobs, store: JobStore):
        self.blobs = blobs
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

    def _put(self, dataset_id: str, body: bytes) -> None:
        """Write the content once (the same id is the same content: a second write is skipped)."""
        if not self.blobs.exists(f"{dataset_id}.jsonl"):
            self.blobs.put(f"{dataset_id}.jsonl", body)

    def _read(self, dataset_id: str) -> bytes | None:
        return self.blobs.get(f"{dataset_id}.jsonl")

    def _remove(self, dataset_id: str) -> None:
        self.blobs.delete(f"{dataset_id}.jsonl")


def _checked_id(dataset_id: str) -> str:
    """Ids are ours (`ds_` + hex): anything else names no dataset (and never a path outside the store)."""
    if not dataset_id.startswith("ds_") or not dataset_id[3:].isalnum():
        raise NotFound(f"no dataset {dataset_id!r}", field="dataset")
    return dataset_id
