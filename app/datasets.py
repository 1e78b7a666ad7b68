"""Dataset store: validated records as canonical JSONL files, content-addressed, with a row in the job store."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter
from pathlib import Path

from app.errors import NotFound
from app.jobs.models import DatasetRow
from app.jobs.store import JobStore


class DatasetStore:
    def __init__(self, root: Path, store: JobStore):
        self.root = root
        self.store = store
        root.mkdir(parents=True, exist_ok=True)

    def save(self, rows: list[dict], filename: str | None = None) -> DatasetRow:
        """Store validated rows; the same content always gets the same id."""
        body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()
        digest = hashlib.sha256(body).hexdigest()
        dataset_id = f"ds_{digest[:24]}"
        path = self._path(dataset_id)
        if not path.exists():
            tmp = path.with_suffix(f".tmp-{uuid.uuid4().hex}")  # unique per writer: threads and processes
            tmp.write_bytes(body)
            os.replace(tmp, path)
        counts = Counter(r["label"] for r in rows)
        row = DatasetRow(
            id=dataset_id,
            filename=filename,
            n_records=len(rows),
            labels=dict(sorted(counts.items())),
            sha256=digest,
        )
        return self.store.add_dataset(row)

    def get(self, dataset_id: str, field: str = "dataset") -> DatasetRow:
        return self.store.get_dataset(dataset_id, field=field)

    def load(self, dataset_id: str) -> list[dict]:
        path = self._path(dataset_id)
        if not path.exists():
            raise NotFound(f"dataset {dataset_id!r} has no file in the store", field="dataset")
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def _path(self, dataset_id: str) -> Path:
        if not dataset_id.startswith("ds_") or not dataset_id[3:].isalnum():
            raise NotFound(f"no dataset {dataset_id!r}", field="dataset")
        return self.root / f"{dataset_id}.jsonl"
