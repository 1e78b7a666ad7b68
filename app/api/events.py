"""A job's events as a Server-Sent Events stream: a polling generator over the job store (no web framework).

Each event goes out as `id: <event id>`, `event: <its type>` (`message` or `metrics`), `data: <EventPublic JSON>`.
The store is polled about every `poll_interval` seconds (the sync calls run in a worker thread); a comment
line keeps idle connections open; once the job is terminal and every event is out, a final `event: end`
carries the job's status and the stream ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import anyio
from anyio import to_thread

from app.errors import ValidationFailed
from app.jobs.store import JobStore
from app.jobs.tables import JobEvent, JobStatus
from app.schemas import EventPublic

MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of a live stream
RETRY_MS = 2000


def sse_message(data: str, *, event: str | None = None, id: int | None = None) -> str:
    """One SSE message. `data` may span lines: each line gets its own `data:` field."""
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    # SSE lines end at CR or LF only; str.splitlines() would also split at U+2028/U+0085 inside the JSON
    lines += [f"data: {line}" for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines) + "\n\n"


def event_message(event: JobEvent) -> str:
    return sse_message(
        EventPublic.model_validate(event, from_attributes=True).model_dump_json(), event=event.type, id=event.id
    )


async def job_event_stream(
    store: JobStore,
    job_id: str,
    after: int = 0,
    *,
    poll_interval: float = 0.5,
    keepalive: float = 15.0,
    batch: int = 500,
) -> AsyncIterator[str]:
    """Every event of `job_id` with an id above `after`, live, until the job is terminal and all are sent.

    The status is read before the events: a job's terminal status and its last event are written in one
    transaction, so once a terminal status has been seen, the events read next include the last one.
    """
    yield f"retry: {RETRY_MS}\n\n"  # how long a disconnected EventSource waits before it reconnects
    last, quiet_since = after, time.monotonic()
    while True:
        status = JobStatus((await to_thread.run_sync(store.get_job, job_id)).status)
        while True:  # drain: a long history goes out in batches without waiting between them
            events = await to_thread.run_sync(store.events, job_id, last, batch)
            for e in events:
                yield event_message(e)
                last = e.id
            if events:
                quiet_since = time.monotonic()
            if len(events) < batch:
                break
        if status.terminal:
            yield sse_message(json.dumps({"job_id": job_id, "status": status.value}), event="end")
            return
        if time.monotonic() - quiet_since >= keepalive:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await anyio.sleep(poll_interval)


def last_event_id(header: str | None) -> int | None:
    """The `Last-Event-ID` header: an event id (digits), or None; anything else is a 422 naming it."""
    if header is None or not header.strip():
        return None
    value = header.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise ValidationFailed("Last-Event-ID must be an event id (digits)", field="Last-Event-ID")
    return int(value)


def resume_after(after: int, last_event_id: int | None) -> int:
    """Where a (re)connecting client resumes: past both `after` and the `Last-Event-ID` it last saw."""
    return max(after, last_event_id or 0)
