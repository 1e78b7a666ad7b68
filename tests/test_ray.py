"""Training on Ray actors (PEFTSERVE_EXECUTOR=ray) on a local Ray cluster: jobs succeed, cancel works, and a
killed actor's job resumes from its checkpoint on a new actor."""

from __future__ import annotations

import os
import time

import pytest

from app.base_models.tiny import toy_sentiment
from app.service import PeftServe
from tests.support import make_settings, submit

ray = pytest.importorskip("ray", reason="ray is a dev dependency (and the `ray` extra): make install")

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray: 2 CPUs, no dashboard, its session folder in a temporary folder, no auth token under ~."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    yield
    ray.shutdown()


def wait(svc: PeftServe, job_id: str, done, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while True:
        job = svc.store.get_job(job_id)
        if done(job):
            return job
        assert time.monotonic() < deadline, (job.status, job.step, job.error_message)
        time.sleep(0.2)


def test_jobs_train_on_ray_actors_cancel_and_a_killed_actors_job_resumes(cluster, tmp_path, tiny_models):
    from app.jobs.ray_executor import RayExecutor, make_executor

    settings = make_settings(
        tmp_path, tiny_models, executor="ray", workers=1, lease_seconds=30, heartbeat_interval=0.5, checkpoint_steps=5
    )
    svc = PeftServe(settings)
    executor = make_executor(settings, svc.store)
    assert isinstance(executor, RayExecutor)
    executor.start()
    try:
        assert len(executor.ids) == 1 and ":" in executor.ids[0]  # the actor's host:pid
        quick = submit(svc, "quick", toy_sentiment(40), epochs=2)
        long = submit(svc, "long", toy_sentiment(200), epochs=2, batch_size=4)
        assert wait(svc, quick.id, lambda j: j.status == "succeeded").attempts == 1
        assert svc.adapters.resolve("quick").meta["job_id"] == quick.id

        # kill the actor training `long` once it has a checkpoint: its replacement resumes the job from there
        # (requeued at once by the executor, not after the 30 s lease)
        running = wait(svc, long.id, lambda j: j.status == "running" and j.step >= 12)
        killed = time.monotonic()
        ray.kill(executor.actors[executor.ids.index(running.worker_id)])
        again = wait(svc, long.id, lambda j: j.attempts == 2 and j.status == "running", timeout=60)
        assert again.worker_id != running.worker_id and executor.ids == [again.worker_id]  # a new actor
        assert time.monotonic() - killed < 30
        done = wait(svc, long.id, lambda j: j.status in ("succeeded", "failed", "cancelled"), timeout=300)
        assert done.status == "succeeded" and done.attempts == 2, done.error_message
        resumed = svc.adapters.resolve("long").meta["metrics"]["resumed_from_steps"]
        assert len(resumed) == 1 and resumed[0] >= 10  # from its checkpoint, not from the start

        # cancel a running job on an actor
        doomed = submit(svc, "doomed", toy_sentiment(400), epochs=50, batch_size=4)
        wait(svc, doomed.id, lambda j: j.status == "running" and j.step >= 2)
        svc.store.request_cancel(doomed.id)
        assert wait(svc, doomed.id, lambda j: j.status != "running", timeout=60).status == "cancelled"
        assert "doomed" not in svc.adapters.names()
    finally:
        executor.stop()
        svc.close()
