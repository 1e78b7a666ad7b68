"""Training workers as long-lived Ray actors (PEFTSERVE_EXECUTOR=ray): the other executor beside WorkerPool's
local processes, with the same contract. Each actor is a `Worker` (app/jobs/worker.py) that keeps its base
loaded across jobs and claims from the same job store, so progress, metrics, cancel, pause, checkpoints and
crash recovery behave as with local workers. One actor per GPU where the cluster has GPUs, else one per CPU
slot (the cluster's CPUs shared out), torch threads set from what the actor got (Ray workers default to one).

An actor that dies (its node lost, `ray.kill`) is replaced; its running job is requeued at once and the next
worker resumes it from its checkpoint.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from app.config import Settings
from app.jobs.store import JobStore

log = logging.getLogger(__name__)


class TrainingActor:
    """What runs inside a Ray actor (made remote by RayExecutor, threaded so `stop` reaches a running `run`)."""

    def __init__(self, settings: dict[str, Any], threads: int):
        from app.logs import setup_logging

        config = Settings(_env_file=None, **settings)
        setup_logging("info", third_party=config.third_party_warnings)  # before transformers is imported
        import torch

        from app.jobs.worker import Worker

        torch.set_num_threads(max(1, threads))
        self.worker = Worker(config)

    def worker_id(self) -> str:
        return self.worker.id

    def run(self) -> int:
        return self.worker.run()

    def stop(self) -> None:
        self.worker.stopping.set()


class RayExecutor:
    def __init__(self, settings: Settings, count: int, store: JobStore):
        self.settings, self.count, self.store = settings, count, store
        self.actors: list[Any] = []  # the actor handles
        self.runs: list[Any] = []  # each actor's `run` call (its object ref)
        self.ids: list[str] = []  # each actor's worker id in the job store
        self._started_ray = False
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watchdog, daemon=True, name="ray-watchdog")

    def start(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.settings.ray_address, include_dashboard=False, log_to_driver=False)
            self._started_ray = True
        options = self._resources(ray)
        self._threads = int(options["num_cpus"])  # torch threads in each actor: the CPUs it was given
        self._remote = ray.remote(max_concurrency=2)(TrainingActor).options(**options)
        for _ in range(self.count):
            self._add()
        self._watch.start()
        log.info("started %d Ray training actor(s): %s", self.count, self.ids)

    def _resources(self, ray: Any) -> dict[str, Any]:
        """One GPU an actor where the cluster has GPUs (and the settings allow CUDA), else a share of the CPUs."""
        cluster = ray.cluster_resources()
        if cluster.get("GPU", 0) >= 1 and self.settings.device != "cpu":
            return {"num_gpus": 1, "num_cpus": 1}
        return {"num_cpus": max(1, int(cluster.get("CPU", 1)) // max(1, self.count))}

    def _add(self, index: int | None = None) -> None:
        import ray

        actor = self._remote.remote(self.settings.model_dump(), self._threads)
        worker_id = ray.get(actor.worker_id.remote())
        run = actor.run.remote()
        if index is None:
            self.actors.append(actor)
            self.runs.append(run)
            self.ids.append(worker_id)
        else:
            self.actors[index], self.runs[index], self.ids[index] = actor, run, worker_id

    def _watchdog(self) -> None:
        """Replace an actor whose `run` ended while we were not stopping (it died), requeueing its job at once."""
        import ray

        while not self._stop.is_set():
            ready, _ = ray.wait(list(self.runs), num_returns=1, timeout=1.0)
            if not ready or self._stop.is_set():
                continue
            i = self.runs.index(ready[0])
            try:
                ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - RayActorError and the like: the actor is gone
                log.warning("Ray actor %s stopped (%s); replacing it", self.ids[i], type(e).__name__)
            try:
                lost = self.store.release_worker(self.ids[i], self.settings.max_attempts)
                if lost:
                    log.warning("requeued the jobs of %s: %s", self.ids[i], lost)
            except Exception:  # noqa: BLE001 - the lease sweep recovers them later
                log.warning("could not requeue the jobs of %s", self.ids[i], exc_info=True)
            if not self._stop.is_set():
                self._add(i)

    def stop(self, timeout: float = 30.0) -> None:
        """Each actor checkpoints and requeues its running job (as a local worker does on SIGTERM), then goes."""
        import ray

        self._stop.set()
        for actor in self.actors:
            actor.stop.remote()
        try:
            ray.wait(list(self.runs), num_returns=len(self.runs), timeout=timeout)
        finally:
            for actor in self.actors:
                ray.kill(actor)
            if self._watch.is_alive():
                self._watch.join(5)
            if self._started_ray:
                ray.shutdown()


def make_executor(settings: Settings, store: JobStore) -> Any:
    """The executor the settings name: WorkerPool (local processes) or RayExecutor; both start() and stop()."""
    if settings.executor == "ray":
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a cluster we start ourselves: no token under ~
        return RayExecutor(settings, settings.workers, store)
    from app.jobs.pool import WorkerPool

    return WorkerPool(settings, settings.workers, store)
