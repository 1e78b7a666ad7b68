"""The job store: every job, metric point, event, dataset record and (with shared storage) adapter version, in
one SQL database (SQLAlchemy 2).

SQLite (WAL) by default, PostgreSQL by URL (`postgresql+psycopg://…`); the schema is kept by Alembic migrations
(app/jobs/migrate.py). Claiming is a compare-and-set UPDATE (after FOR UPDATE SKIP LOCKED on PostgreSQL), so two
workers never take the same job on any backend.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.errors import Conflict, NotFound
from app.jobs.adapter_rows import AdapterRows
from app.jobs.database import every_call_resilient, make_engine, resilient
from app.jobs.dataset_rows import DatasetRows
from app.jobs.migrate import migrate
from app.jobs.outbox import owe_webhook
from app.jobs.paging import Anchor, beyond, order
from app.jobs.tables import Job, JobEvent, JobStatus, MetricPoint, utcnow


def _owned(job_id: str, worker_id: str) -> Any:
    """The job is running on this worker: the guard of everything a worker writes about its job."""
    return (Job.id == job_id) & (Job.worker_id == worker_id) & (Job.status == JobStatus.running.value)


@every_call_resilient
class JobStore(DatasetRows, AdapterRows):
    """Every public call rides out a database that is away for a moment (a restart, a dropped connection):
    the pool pings a connection before use, and a call is retried with back-off for `retry_seconds` (workers
    wait out an outage shorter than their lease; the API answers 503 after a short wait)."""

    def __init__(self, url: str, retry_seconds: float = 2.0):
        self.engine = make_engine(url)
        self.retry_seconds = retry_seconds
        migrate(self.engine)  # the schema at the newest revision (Alembic; one process at a time)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._session.begin() as s:
            yield s

    # ---- jobs -------------------------------------------------------------------------------
    def create_job(self, **fields: Any) -> Job:
        """Queue a job. The id is drawn once, before any retry: a retry after a commit whose answer was lost
        (the connection dropped) finds the job it made instead of making a second one."""
        return self._create_job(f"job_{uuid.uuid4().hex[:24]}", fields)

    create_job.retries_inside = True  # type: ignore[attr-defined]  # not retried as a whole: see _create_job

    @resilient
    def _create_job(self, job_id: str, fields: dict[str, Any]) -> Job:
        with self.session() as s:
            made = s.get(Job, job_id)
            if made is not None:
                return made
            job = Job(id=job_id, status=JobStatus.queued.value, **fields)
            s.add(job)
            s.add(JobEvent(job_id=job.id, message=f"Job created for adapter {job.adapter!r}"))
        return job

    def get_job(self, job_id: str) -> Job:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}", field="job_id")
            return job

    def list_jobs(
        self, status: JobStatus | None = None, limit: int = 20, after: str | None = None
    ) -> tuple[list[Job], bool]:
        """Newest first. `after` is the id of the last job of the previous page."""
        q = select(Job).order_by(Job.created_at.desc(), Job.id.desc())
        if status is not None:
            q = q.where(Job.status == status.value)
        with self.session() as s:
            if after is not None:
                anchor = s.get(Job, after)
                if anchor is None:
                    raise NotFound(f"no job {after!r} to page after", field="after")
                q = q.where(beyond(Job.created_at, Job.id, (anchor.created_at, anchor.id), ascending=False))
            rows = list(s.scalars(q.limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def request_cancel(self, job_id: str) -> Job:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}", field="job_id")
            status = JobStatus(job.status)
            if status.terminal:
                raise Conflict(f"job {job_id} already {status.value}", field="job_id")
            # A queued or paused job is cancelled here; a running one is stopped by its worker at the next step.
            done = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_([JobStatus.queued.value, JobStatus.paused.value]))
                .values(status=JobStatus.cancelled.value, finished_at=utcnow(), cancel_requested=True)
            ).rowcount
            if done:
                owe_webhook(s, job_id, JobStatus.cancelled)
            else:
                s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
            s.add(JobEvent(job_id=job_id, message="Cancellation requested"))
        return self.get_job(job_id)

    def request_pause(self, job_id: str) -> Job:
        """A queued job is paused here; a running one by its worker, which checkpoints and frees itself at its
        next progress check (a pause asked during the final evaluation lets the run finish)."""
        with self.session() as s:
            status = self._status(s, job_id)
            if status.terminal or status is JobStatus.paused:
                raise Conflict(f"job {job_id} is {status.value}: only a queued or running job pauses", field="job_id")
            paused = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.queued.value)
                .values(status=JobStatus.paused.value, pause_requested=False)
            ).rowcount
            if not paused:
                s.execute(update(Job).where(Job.id == job_id).values(pause_requested=True))
            s.add(JobEvent(job_id=job_id, message="Paused" if paused else "Pause requested"))
        return self.get_job(job_id)

    def pause(self, job_id: str, worker_id: str) -> None:
        """The worker stopped the job on request, its checkpoint written: paused, the worker free (the
        interrupted run does not count as an attempt)."""
        with self.session() as s:
            step = s.scalar(select(Job.step).where(_owned(job_id, worker_id)))
            done = s.execute(
                update(Job)
                .where(_owned(job_id, worker_id))
                .values(
                    status=JobStatus.paused.value,
                    worker_id=None,
                    pause_requested=False,
                    attempts=Job.attempts - 1,
                    estimated_finish=None,
                )
            ).rowcount
            if done:
                s.add(JobEvent(job_id=job_id, message=f"Paused at step {step}; resume continues from its checkpoint"))

    def resume(self, job_id: str) -> Job:
        """A paused job goes back to the queue (it continues from its checkpoint); a pause asked of a running
        job and not yet taken is withdrawn."""
        with self.session() as s:
            status = self._status(s, job_id)
            requeued = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.paused.value)
                .values(status=JobStatus.queued.value, pause_requested=False)
            ).rowcount
            withdrawn = (
                not requeued
                and s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == JobStatus.running.value, Job.pause_requested.is_(True))
                    .values(pause_requested=False)
                ).rowcount
            )
            if not (requeued or withdrawn):
                raise Conflict(f"job {job_id} is {status.value}, not paused", field="job_id")
            message = "Resumed: queued to continue from its checkpoint" if requeued else "Pause withdrawn"
            s.add(JobEvent(job_id=job_id, message=message))
        return self.get_job(job_id)

    @staticmethod
    def _status(s: Session, job_id: str) -> JobStatus:
        status = s.scalar(select(Job.status).where(Job.id == job_id))
        if status is None:
            raise NotFound(f"no job {job_id!r}", field="job_id")
        return JobStatus(status)

    def claim_next(self, worker_id: str, base_model: str | None = None) -> Job | None:
        """Take the oldest queued job (on `base_model` only, when given). On PostgreSQL the row is locked with FOR
        UPDATE SKIP LOCKED, so workers on any number of hosts each take another; on every backend the UPDATE is
        a compare-and-set, so a lost race just tries the next one."""
        queued = select(Job.id).where(Job.status == JobStatus.queued.value)
        if base_model is not None:
            queued = queued.where(Job.base_model == base_model)
        oldest = queued.order_by(Job.created_at, Job.id).limit(1)
        for _ in range(20):
            with self.session() as s:
                job_id = s.scalar(oldest.with_for_update(skip_locked=True))
                if job_id is None:
                    return None
                now = utcnow()
                won = s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == JobStatus.queued.value)
                    .values(
                        status=JobStatus.running.value,
                        worker_id=worker_id,
                        started_at=now,
                        heartbeat_at=now,
                        attempts=Job.attempts + 1,
                        samples_per_second=None,
                        estimated_finish=None,
                    )
                ).rowcount
                if won:
                    s.add(JobEvent(job_id=job_id, message=f"Started on worker {worker_id}"))
            if won:
                return self.get_job(job_id)
        return None

    def heartbeat(self, job_id: str, worker_id: str, **progress: Any) -> str | None:
        """Renew the lease and record progress. Returns why the job should stop: "lost" (no longer this
        worker's: requeued after a missed lease), "cancelled", "paused", or None."""
        with self.session() as s:
            owned = s.execute(
                update(Job).where(_owned(job_id, worker_id)).values(heartbeat_at=utcnow(), **progress)
            ).rowcount
            cancel, pause = s.execute(select(Job.cancel_requested, Job.pause_requested).where(Job.id == job_id)).one()
        if not owned:
            return "lost"
        return "cancelled" if cancel else "paused" if pause else None

    def finish(
        self,
        job_id: str,
        worker_id: str,
        status: JobStatus,
        *,
        error: tuple[str, str] | None = None,
        result_adapter: str | None = None,
        result_metrics: dict | None = None,
        result_warnings: list[str] | None = None,
        message: str,
    ) -> None:
        values: dict[str, Any] = {"status": status.value, "finished_at": utcnow(), "estimated_finish": None}
        if error:
            values.update(error_code=error[0], error_message=error[1])
        if result_adapter:
            values.update(result_adapter=result_adapter, result_metrics=result_metrics, result_warnings=result_warnings)
        with self.session() as s:
            done = s.execute(update(Job).where(_owned(job_id, worker_id)).values(**values)).rowcount
            if done:
                owe_webhook(s, job_id, status)
            level = "error" if status is JobStatus.failed else "info"
            s.add(JobEvent(job_id=job_id, level=level, message=message))

    def requeue(self, job_id: str, worker_id: str, reason: str) -> None:
        """Give a running job back to the queue (worker shutdown). It resumes from its last checkpoint, and the
        interrupted run does not count as an attempt."""
        with self.session() as s:
            done = s.execute(
                update(Job)
                .where(_owned(job_id, worker_id))
                .values(status=JobStatus.queued.value, worker_id=None, attempts=Job.attempts - 1, estimated_finish=None)
            ).rowcount
            if done:
                s.add(JobEvent(job_id=job_id, level="warning", message=f"Returned to the queue: {reason}"))

    def requeue_stale(self, lease_seconds: float, max_attempts: int) -> list[str]:
        """Jobs whose worker stopped heart-beating go back to the queue, or fail after max_attempts."""
        cutoff = utcnow() - timedelta(seconds=lease_seconds)
        return self._recover((Job.status == JobStatus.running.value) & (Job.heartbeat_at < cutoff), max_attempts)

    def release_worker(self, worker_id: str, max_attempts: int) -> list[str]:
        """The jobs of a worker known to be dead (its process exited): recovered now, without waiting for
        the lease to run out."""
        return self._recover((Job.status == JobStatus.running.value) & (Job.worker_id == worker_id), max_attempts)

    def _recover(self, lost: Any, max_attempts: int) -> list[str]:
        """Lost jobs go back to the queue (resuming from their last checkpoint), or fail after max_attempts,
        or end cancelled if that was asked. Each change is a guarded UPDATE (still matching `lost`), so a
        job that finished or was renewed meanwhile is left alone."""
        with self.session() as s:
            candidates = list(s.execute(select(Job.id, Job.attempts, Job.cancel_requested).where(lost)))
        changed = []
        for job_id, attempts, cancel in candidates:
            if cancel:
                values, level = {"status": JobStatus.cancelled.value, "finished_at": utcnow()}, "info"
                message = "Worker lost while cancelling; job cancelled"
            elif attempts >= max_attempts:
                message = f"the worker running this job stopped {attempts} times"
                values = {
                    "status": JobStatus.failed.value,
                    "finished_at": utcnow(),
                    "error_code": "worker_lost",
                    "error_message": message,
                }
                level = "error"
            else:
                values = {"status": JobStatus.queued.value, "worker_id": None, "estimated_finish": None}
                level = "warning"
                message = f"Worker lost (attempt {attempts} of {max_attempts}); requeued to resume from its checkpoint"
            with self.session() as s:
                if s.execute(update(Job).where(Job.id == job_id, lost).values(**values)).rowcount:
                    if values["status"] != JobStatus.queued.value:
                        owe_webhook(s, job_id, JobStatus(values["status"]))
                    s.add(JobEvent(job_id=job_id, level=level, message=message))
                    changed.append(job_id)
        return changed

    def owns(self, job_id: str, worker_id: str) -> bool:
        with self.session() as s:
            return bool(s.scalar(select(func.count()).where(_owned(job_id, worker_id))))

    def queue_length(self) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).where(Job.status == JobStatus.queued.value)) or 0

    def count_by_status(self) -> dict[str, int]:
        with self.session() as s:
            found = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        return {st.value: int(found.get(st.value, 0)) for st in JobStatus}

    def running(self) -> list[Job]:
        with self.session() as s:
            return list(s.scalars(select(Job).where(Job.status == JobStatus.running.value)))

    # ---- metrics and events -----------------------------------------------------------------
    def add_metrics(self, job_id: str, points: list[dict], worker_id: str | None = None) -> None:
        """Append metric points; with `worker_id`, only while that worker still owns the running job."""
        if not points:
            return
        with self.session() as s:
            if worker_id is not None and not s.scalar(select(func.count()).where(_owned(job_id, worker_id))):
                return
            s.add_all(
                MetricPoint(job_id=job_id, kind=p["kind"], step=p["step"], epoch=p["epoch"], values=p["values"])
                for p in points
            )

    def truncate_metrics(self, job_id: str, after_step: int) -> None:
        """Drop metric points past `after_step`: a run resuming there logs them again."""
        with self.session() as s:
            s.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > after_step))

    def metrics(self, job_id: str) -> list[MetricPoint]:
        self.get_job(job_id)
        with self.session() as s:
            return list(s.scalars(select(MetricPoint).where(MetricPoint.job_id == job_id).order_by(MetricPoint.id)))

    def metrics_by_job(self, job_ids: list[str]) -> dict[str, list[MetricPoint]]:
        """The metric points of several jobs in one query (a page of result files), each job's in order."""
        out: dict[str, list[MetricPoint]] = {job_id: [] for job_id in job_ids}
        if job_ids:
            with self.session() as s:
                q = select(MetricPoint).where(MetricPoint.job_id.in_(job_ids)).order_by(MetricPoint.id)
                for point in s.scalars(q):
                    out[point.job_id].append(point)
        return out

    def add_event(
        self, job_id: str, message: str, *, level: str = "info", type: str = "message", data: dict | None = None
    ) -> None:
        with self.session() as s:
            s.add(JobEvent(job_id=job_id, level=level, type=type, message=message, data=data))

    def latest_events(self, job_id: str, before: int | None, limit: int) -> list[JobEvent]:
        """The job's events newest first, those with an id below `before` if given."""
        self.get_job(job_id)
        q = select(JobEvent).where(JobEvent.job_id == job_id)
        if before is not None:
            q = q.where(JobEvent.id < before)
        with self.session() as s:
            return list(s.scalars(q.order_by(JobEvent.id.desc()).limit(limit)))

    def events(self, job_id: str, after: int = 0, limit: int = 100) -> list[JobEvent]:
        self.get_job(job_id)
        with self.session() as s:
            return list(
                s.scalars(
                    select(JobEvent)
                    .where(JobEvent.job_id == job_id, JobEvent.id > after)
                    .order_by(JobEvent.id)
                    .limit(limit)
                )
            )

    def jobs_by_id(self, ids: list[str]) -> dict[str, Job]:
        if not ids:
            return {}
        with self.session() as s:
            return {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}

    def page_succeeded(self, after: Anchor | None, limit: int, ascending: bool = False) -> list[Job]:
        """Up to `limit` succeeded jobs after the anchor, by when they finished, newest first (or oldest)."""
        q = select(Job).where(Job.status == JobStatus.succeeded.value)
        q = q.order_by(*order(Job.finished_at, Job.id, ascending))
        if after is not None:
            q = q.where(beyond(Job.finished_at, Job.id, after, ascending))
        with self.session() as s:
            return list(s.scalars(q.limit(limit)))
