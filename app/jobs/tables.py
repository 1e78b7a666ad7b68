"""Tables of the job store: jobs, their metric points and events, uploaded datasets, and the adapter registry."""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class JobStatus(str, enum.Enum):
    queued = "queued"  # accepted and waiting for a worker
    running = "running"  # claimed by one worker, which holds a heartbeat lease on it
    succeeded = "succeeded"  # adapter saved; result names its version
    failed = "failed"  # ended with an error the user can read
    cancelled = "cancelled"  # stopped on request; no adapter saved
    paused = "paused"  # stopped on request with a checkpoint, worker freed; `resume` queues it again

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # Keyset pages newest first (GET /jobs), by status too (?status=, and the claim of the oldest queued job).
        Index("ix_jobs_created_id", "created_at", "id"),
        Index("ix_jobs_status_created_id", "status", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value)
    adapter: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]]
    train_dataset: Mapped[str] = mapped_column(String(40))
    validation_dataset: Mapped[str | None] = mapped_column(String(40))
    validation_split: Mapped[float]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    step: Mapped[int] = mapped_column(default=0)
    total_steps: Mapped[int] = mapped_column(default=0)
    epoch: Mapped[float] = mapped_column(default=0.0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    result_adapter: Mapped[str | None] = mapped_column(String(80))
    result_metrics: Mapped[dict[str, Any] | None]
    result_warnings: Mapped[list[Any] | None]  # what a succeeded job's user should look at, and what to do
    worker_id: Mapped[str | None] = mapped_column(String(80))
    heartbeat_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    attempts: Mapped[int] = mapped_column(default=0)
    # Added after the first release: nullable, so JobStore adds them to an older database in place.
    estimated_finish: Mapped[datetime | None]  # from the measured step time of the running attempt
    samples_per_second: Mapped[float | None]  # training throughput of the running attempt
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    init_from: Mapped[str | None] = mapped_column(String(80))  # the adapter version a job continues (name@vN)
    pause_requested: Mapped[bool | None] = mapped_column(default=False)  # the worker pauses at its next check
    # The OpenAI face (/v1): the job's `suffix` ("" when none was given; None: a native job, whose adapter name
    # stands in its model id) and the caller's `metadata` (up to 16 string pairs).
    suffix: Mapped[str | None] = mapped_column(String(64))
    user_metadata: Mapped[dict[str, Any] | None]


class MetricPoint(Base):
    __tablename__ = "metric_points"
    __table_args__ = (Index("ix_metric_job_kind_step", "job_id", "kind", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))  # "train" | "eval"
    step: Mapped[int]
    epoch: Mapped[float]
    values: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_event_job_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]


class WebhookDelivery(Base):
    """The outbox: one row per webhook call owed, written with the job's final status in one transaction,
    so a restart loses none; the dispatcher delivers and retries them."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_due", "delivered", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))  # job.succeeded | job.failed | job.cancelled
    url: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
    delivered: Mapped[bool] = mapped_column(default=False)  # true once answered 2xx, or given up
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class DatasetRow(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    filename: Mapped[str | None] = mapped_column(String(255))
    n_records: Mapped[int]
    labels: Mapped[dict[str, Any]]  # rows per label (multi-label: rows holding it)
    multi_label: Mapped[bool | None]  # labels are lists (None: stored before multi-label; single)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    size_bytes: Mapped[int | None]  # the stored JSONL's size (None: stored before it was recorded)
    notes: Mapped[list[Any] | None]  # how the upload was read (integer labels taken as names)


class AdapterRow(Base):
    """One version of a named adapter, with shared storage (PEFTSERVE_STORAGE_URL): the row is the commit point
    (its weights are uploaded under `key` before it is inserted, so a half-uploaded adapter is never visible).
    A deleted version keeps its row (`deleted_at`): its number is never issued again."""

    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_adapter_versions_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int]
    key: Mapped[str] = mapped_column(String(255))  # the weights' prefix in the storage
    sha256: Mapped[str] = mapped_column(String(64))  # of adapter_model.safetensors
    size_bytes: Mapped[int]
    meta: Mapped[dict[str, Any]]  # peftserve.json: base, labels, hyperparameters, metrics, job
    job_id: Mapped[str | None] = mapped_column(String(40), unique=True)  # a job commits once
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]
