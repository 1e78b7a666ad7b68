"""The webhook outbox of the job store: calls owed when jobs end, claimed and recorded by the dispatcher
(app/jobs/webhooks.py). A row is written in the transaction that ends its job, so no restart loses one.
Each function works inside the caller's session (one transaction)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.jobs.tables import Job, JobStatus, WebhookDelivery, utcnow


def owe_webhook(s: Session, job_id: str, status: JobStatus) -> None:
    """In the transaction that ends a job: queue its webhook call, if it has a webhook_url."""
    url = s.scalar(select(Job.webhook_url).where(Job.id == job_id))
    if url:
        s.add(WebhookDelivery(job_id=job_id, event=f"job.{status.value}", url=url))


def claim_delivery(s: Session, lease_seconds: float) -> WebhookDelivery | None:
    """The next call due, leased (moved `lease_seconds` ahead) so that one dispatcher sends it at a time.
    One at a time: the lease runs from the claim, so only what is sent at once is claimed."""
    for _ in range(10):  # a lost compare-and-set race: take the next one
        now = utcnow()
        due = s.execute(
            select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
            .where(WebhookDelivery.delivered.is_(False), WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(1)
        ).first()
        if due is None:
            return None
        won = s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == due.id, WebhookDelivery.next_attempt_at == due.next_attempt_at)
            .values(next_attempt_at=now + timedelta(seconds=lease_seconds))
        ).rowcount
        if won:
            return s.get(WebhookDelivery, due.id)
    return None


def record_delivery(
    s: Session, delivery_id: int, *, status: int | None, error: str | None, done: bool, retry_at: datetime | None
) -> None:
    """One attempt's outcome; `done` once answered 2xx or given up, else retried at `retry_at`."""
    values: dict = {
        "attempts": WebhookDelivery.attempts + 1,
        "last_status": status,
        "last_error": error,
        "delivered": done,
    }
    if retry_at is not None:
        values["next_attempt_at"] = retry_at
    s.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values))
