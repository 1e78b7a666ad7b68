"""The job store's dataset rows: what an uploaded dataset is (size, label counts, checksum), read by the API
without touching the file; refused deletion while a live job uses one. A part of JobStore (a mixin), with the
same retries; app/stores/datasets.py keeps the files."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.errors import Conflict, NotFound
from app.jobs.database import every_call_resilient
from app.jobs.paging import Anchor, beyond, order
from app.jobs.tables import DatasetRow, Job, JobStatus


@every_call_resilient
class DatasetRows:
    session: Any  # JobStore's

    def add_dataset(self, row: DatasetRow) -> DatasetRow:
        """Insert once; the same content (same id) saved concurrently returns the stored row."""
        try:
            with self.session() as s:
                existing = s.get(DatasetRow, row.id)
                if existing is not None:
                    return existing
                s.add(row)
            return row
        except IntegrityError:
            return self.get_dataset(row.id)

    def page_datasets(self, after: Anchor | None, limit: int, ascending: bool = False) -> list[DatasetRow]:
        """Up to `limit` datasets after the anchor (a time, and an id breaking ties), newest first (or oldest)."""
        q = select(DatasetRow).order_by(*order(DatasetRow.created_at, DatasetRow.id, ascending))
        if after is not None:
            q = q.where(beyond(DatasetRow.created_at, DatasetRow.id, after, ascending))
        with self.session() as s:
            return list(s.scalars(q.limit(limit)))

    def delete_dataset(self, dataset_id: str) -> DatasetRow:
        """Forget a dataset's row; refused (409) while a queued, running or paused job trains or validates on
        it. The caller removes the file."""
        live = [JobStatus.queued.value, JobStatus.running.value, JobStatus.paused.value]
        with self.session() as s:
            row = s.get(DatasetRow, dataset_id)
            if row is None:
                raise NotFound(f"no dataset {dataset_id!r}", field="dataset_id")
            user = s.scalar(
                select(Job.id)
                .where(Job.status.in_(live))
                .where((Job.train_dataset == dataset_id) | (Job.validation_dataset == dataset_id))
                .limit(1)
            )
            if user is not None:
                raise Conflict(
                    f"dataset {dataset_id} is in use by job {user}; delete it once that job ends", "dataset_id"
                )
            s.delete(row)
        return row

    def get_dataset(self, dataset_id: str, field: str = "dataset") -> DatasetRow:
        with self.session() as s:
            row = s.get(DatasetRow, dataset_id)
        if row is None:
            raise NotFound(f"no dataset {dataset_id!r}", field=field)
        return row
