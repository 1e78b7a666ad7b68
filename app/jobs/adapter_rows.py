"""The job store's adapter registry: which versions of which adapter names exist, their metadata and checksum,
and where their weights are in the shared storage (app/stores/registry.py uploads and fetches them). Every
API replica reads it, so a version a worker commits anywhere is served everywhere at once, and a deleted one
is gone everywhere at once. A part of JobStore (a mixin), with the same retries."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.jobs.database import every_call_resilient
from app.jobs.tables import AdapterRow, utcnow


@every_call_resilient
class AdapterRows:
    session: Any  # JobStore's

    def add_adapter_version(self, name: str, fields: dict[str, Any]) -> tuple[AdapterRow, bool]:
        """Insert the next version of `name` (numbers only grow: deleted ones count). Returns (row, made): a
        job that committed already gets its first row back, made=False (the caller drops its upload)."""
        for _ in range(20):  # two commits of one name at once: one wins the number, the other takes the next
            if fields.get("job_id"):
                done = self._adapter_of_job(fields["job_id"])
                if done is not None:
                    return done, False
            try:
                with self.session() as s:
                    last = s.scalar(select(func.max(AdapterRow.version)).where(AdapterRow.name == name)) or 0
                    row = AdapterRow(name=name, version=last + 1, **fields)
                    s.add(row)
                return row, True
            except IntegrityError:
                continue
        raise RuntimeError(f"could not number a new version of {name!r}: too many concurrent commits")

    def adapter_versions(self, name: str) -> list[AdapterRow]:
        """The live versions of `name`, oldest first."""
        with self.session() as s:
            q = select(AdapterRow).where(AdapterRow.name == name, AdapterRow.deleted_at.is_(None))
            return list(s.scalars(q.order_by(AdapterRow.version)))

    def live_adapter_versions(self) -> list[AdapterRow]:
        """Every live version of every name."""
        with self.session() as s:
            return list(s.scalars(select(AdapterRow).where(AdapterRow.deleted_at.is_(None))))

    def adapter_names(self) -> list[str]:
        """Every name with a live version."""
        with self.session() as s:
            q = select(AdapterRow.name).where(AdapterRow.deleted_at.is_(None)).distinct().order_by(AdapterRow.name)
            return list(s.scalars(q))

    def delete_adapter_versions(self, name: str, version: int | None) -> list[AdapterRow]:
        """Mark one version (or every version) of `name` deleted; returns what it marked. The caller removes
        the weights once no replica can resolve them any more."""
        with self.session() as s:
            q = select(AdapterRow).where(AdapterRow.name == name, AdapterRow.deleted_at.is_(None))
            if version is not None:
                q = q.where(AdapterRow.version == version)
            rows = list(s.scalars(q.order_by(AdapterRow.version).with_for_update()))
            for row in rows:
                row.deleted_at = utcnow()
        return rows

    def _adapter_of_job(self, job_id: str) -> AdapterRow | None:
        with self.session() as s:
            return s.scalar(select(AdapterRow).where(AdapterRow.job_id == job_id))
