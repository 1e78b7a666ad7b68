"""How a worker's job reports: a heartbeat thread that keeps the job's lease while anything runs, the
trainer's Reporter writing progress, metric points and events to the job store, and the silent Reporter of a
training group's other ranks (only rank 0 reports)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from app.jobs.store import JobStore
from app.jobs.tables import utcnow

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Renews the job's lease while anything (loading, tokenizing, training) runs; notes cancellation.
    A context manager: beats from entry to exit."""

    def __init__(self, store: JobStore, job_id: str, worker_id: str, interval: float):
        super().__init__(daemon=True)
        self.store, self.job_id, self.worker_id, self.interval = store, job_id, worker_id, interval
        self.cancelled = threading.Event()  # set with `reason` when the job must stop
        self.reason = "cancelled"
        self._done = threading.Event()

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                reason = self.store.heartbeat(self.job_id, self.worker_id)
                if reason:
                    self.reason = reason
                    self.cancelled.set()
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next interval
                log.warning("heartbeat for %s failed", self.job_id, exc_info=True)


class JobReporter:
    """The trainer's Reporter, writing to the job store."""

    def __init__(self, store: JobStore, job_id: str, worker_id: str, stopping: threading.Event, beat: Heartbeat):
        self.store, self.job_id, self.worker_id, self.stopping, self.beat = store, job_id, worker_id, stopping, beat

    batch_size = 1
    _first: tuple[float, int] | None = None  # (time, step) of this attempt's first report

    def progress(self, step: int, total_steps: int, epoch: float) -> str | None:
        now = time.monotonic()
        extra: dict = {}
        if self._first is None:
            self._first = (now, step)
        elif step > self._first[1] and now > self._first[0]:
            # Measured over this attempt so far (evaluations included): the ETA and the training speed.
            per_step = (now - self._first[0]) / (step - self._first[1])
            extra["estimated_finish"] = utcnow() + timedelta(seconds=per_step * max(0, total_steps - step))
            extra["samples_per_second"] = round(self.batch_size / per_step, 3)
        stop = self.store.heartbeat(
            self.job_id, self.worker_id, step=step, total_steps=total_steps, epoch=epoch, **extra
        )
        if stop:
            return stop
        if self.beat.cancelled.is_set():
            return self.beat.reason
        if self.stopping.is_set():
            return "shutdown"
        return None

    def metrics(self, points: list[dict]) -> None:
        self.store.add_metrics(self.job_id, points, self.worker_id)
        last = points[-1]
        values = ", ".join(f"{k} {v:.4g}" for k, v in last["values"].items() if isinstance(v, int | float))
        self.store.add_event(self.job_id, f"{last['kind']} step {last['step']}: {values}", type="metrics", data=last)

    def event(self, message: str, data: dict | None = None) -> None:
        self.store.add_event(self.job_id, message, data=data)

    def rewind(self, step: int) -> None:
        self.store.truncate_metrics(self.job_id, step)


class SilentReporter:
    """The Reporter of a group's other ranks: rank 0 alone reports (and asks for stops)."""

    def progress(self, step: int, total_steps: int, epoch: float) -> str | None:
        return None

    def metrics(self, points: list[dict]) -> None:
        pass

    def event(self, message: str, data: dict | None = None) -> None:
        pass

    def rewind(self, step: int) -> None:
        pass
