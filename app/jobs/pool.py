"""Worker processes started by `peftserve serve`: spawned as `peftserve worker`, restarted if they die."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading

from app.config import Settings
from app.jobs.store import JobStore
from app.jobs.worker import worker_id

log = logging.getLogger(__name__)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process exactly these settings."""
    env = dict(os.environ)
    for key, value in settings.model_dump(mode="json").items():
        if value is None:
            env.pop(f"PEFTSERVE_{key.upper()}", None)
            continue
        env[f"PEFTSERVE_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


class WorkerPool:
    """Starts the workers, and restarts one that dies; a dead worker's job is requeued at once (it resumes
    from its last checkpoint in the next free worker) rather than when its lease runs out."""

    def __init__(self, settings: Settings, count: int, store: JobStore):
        self.settings = settings
        self.store = store
        self.count = count
        self.procs: list[subprocess.Popen] = []
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watchdog, daemon=True, name="worker-watchdog")

    def _spawn(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "app.cli", "worker", "--parent-pid", str(os.getpid())]
        return subprocess.Popen(cmd, env=settings_env(self.settings))

    def start(self) -> None:
        self.procs = [self._spawn() for _ in range(self.count)]
        self._watch.start()
        log.info("started %d worker process(es): %s", self.count, [p.pid for p in self.procs])

    def _watchdog(self) -> None:
        while not self._stop.wait(2.0):
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None and not self._stop.is_set():
                    log.warning("worker %d exited with %s; restarting it", proc.pid, proc.returncode)
                    try:
                        lost = self.store.release_worker(worker_id(proc.pid), self.settings.max_attempts)
                        if lost:
                            log.warning("requeued the jobs of worker %d: %s", proc.pid, lost)
                    except Exception:  # noqa: BLE001 - the lease sweep recovers them later
                        log.warning("could not requeue the jobs of worker %d", proc.pid, exc_info=True)
                    self.procs[i] = self._spawn()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()  # the worker requeues a running job and exits
        for proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
