"""Checkpoints: a job stopped mid-run resumes where it stopped and ends with the very weights of a run
that was never stopped; the store and the adapter store stay consistent through requeues."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from app.base_models.tiny import toy_sentiment
from app.jobs.store import JobStore
from app.jobs.tables import JobStatus
from app.jobs.worker import Worker
from app.service import PeftServe
from app.stores.adapters import LocalAdapterStore
from app.stores.blobs import Blobs
from app.training.checkpoint import Checkpoints
from tests.support import make_settings, submit

HP = {"epochs": 4, "batch_size": 4, "learning_rate": 5e-3}


def weights(svc: PeftServe, ref: str) -> dict[str, torch.Tensor]:
    return load_file(svc.adapters.resolve(ref).weights)


def test_stopped_job_resumes_to_the_same_weights(tmp_path, tiny_models):
    settings = make_settings(tmp_path, tiny_models, checkpoint_steps=7)
    svc = PeftServe(settings)
    rows = toy_sentiment(120)

    straight = submit(svc, "straight", rows, **HP)
    Worker(settings).run(burst=True)
    assert svc.store.get_job(straight.id).status == "succeeded"

    job = submit(svc, "resumed", rows, **HP)
    stops = []
    for _ in range(2):  # stop the worker twice mid-run (a graceful shutdown writes a checkpoint)
        worker = Worker(settings)
        thread = threading.Thread(target=worker.run)
        thread.start()
        floor = max(stops, default=0) + 5
        deadline = time.monotonic() + 60
        while svc.store.get_job(job.id).step < floor and time.monotonic() < deadline:
            time.sleep(0.02)
        worker.stopping.set()
        thread.join(60)
        state = svc.store.get_job(job.id)
        assert state.status == "queued", state.status
        stops.append(state.step)
        assert Checkpoints(Blobs(settings.checkpoints_dir / job.id), 7).exists()
        # points past the checkpoint are dropped when the next run resumes; none past the job's step now
        assert all(p.step <= state.step for p in svc.store.metrics(job.id))
    Worker(settings).run(burst=True)

    done = svc.store.get_job(job.id)
    assert done.status == "succeeded" and done.attempts == 1  # graceful stops don't use up attempts
    resumed = done.result_metrics["resumed_from_steps"]
    assert len(resumed) == 2 and all(0 < s for s in resumed), resumed
    assert done.result_metrics["steps"] == svc.store.get_job(straight.id).result_metrics["steps"]
    a, b = weights(svc, "straight"), weights(svc, "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    # the metric history reads as one run: steps strictly increasing, no duplicates from the replays
    train_steps = [p.step for p in svc.store.metrics(job.id) if p.kind == "train"]
    assert train_steps == sorted(set(train_steps))
    assert [p.step for p in svc.store.metrics(job.id) if p.kind == "train"] == [
        p.step for p in svc.store.metrics(straight.id) if p.kind == "train"
    ]
    assert not (settings.checkpoints_dir / job.id).exists()  # cleared once the adapter is saved
    events = [e.message for e in svc.store.events(job.id)]
    assert sum("Resumed from the checkpoint" in m for m in events) == 2


def test_unreadable_or_foreign_checkpoint_starts_over(tmp_path, tiny_models):
    settings = make_settings(tmp_path, tiny_models)
    svc = PeftServe(settings)
    job = submit(svc, "fresh", toy_sentiment(48), epochs=1)
    folder = settings.checkpoints_dir / job.id
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    Worker(settings).run(burst=True)
    done = svc.store.get_job(job.id)
    assert done.status == "succeeded" and done.result_metrics["resumed_from_steps"] == []


class WorkerDied(BaseException):
    """Stands for a kill -9: nothing in the worker catches it, nothing after it runs."""


def test_a_retried_job_saves_its_adapter_once(tmp_path, tiny_models, monkeypatch):
    """A worker killed after saving the adapter but before recording the job: the retry reuses that version."""
    settings = make_settings(tmp_path, tiny_models)
    svc = PeftServe(settings)
    job = submit(svc, "once", toy_sentiment(24), epochs=1)

    commits = []
    real_commit = LocalAdapterStore.commit

    def counting_commit(self, staging, name, meta):
        commits.append(real_commit(self, staging, name, meta))
        return commits[-1]

    real_finish = JobStore.finish

    def die_before_recording_success(self, job_id, worker_id, status, **kw):
        if status is JobStatus.succeeded:
            raise WorkerDied
        return real_finish(self, job_id, worker_id, status, **kw)

    monkeypatch.setattr(LocalAdapterStore, "commit", counting_commit)
    monkeypatch.setattr(JobStore, "finish", die_before_recording_success)
    first = Worker(settings)
    with pytest.raises(WorkerDied):
        first.run(burst=True)
    first.resources.close()
    assert [v.ref for v in commits] == ["once@v1"]  # the adapter was saved...
    state = svc.store.get_job(job.id)
    assert state.status == "running" and state.worker_id == first.id  # ...and the job never recorded as done

    monkeypatch.setattr(JobStore, "finish", real_finish)
    # the server notices the dead worker (WorkerPool's watchdog does this) and requeues its job
    assert svc.store.release_worker(first.id, settings.max_attempts) == [job.id]
    assert svc.store.get_job(job.id).status == "queued"
    assert Worker(settings).run(burst=True) == 1

    done = svc.store.get_job(job.id)
    assert done.status == "succeeded" and done.attempts == 2, (done.status, done.error_message)
    assert len(commits) == 2 and commits[1].ref == "once@v1"  # the retry trained and committed again: reused v1
    assert done.result_adapter == "once@v1"
    versions = svc.adapters.versions("once")
    assert [v.ref for v in versions] == ["once@v1"] and versions[0].meta["job_id"] == job.id
    assert not any((settings.adapters_dir / ".staging").iterdir())  # the retry's staging folder is gone


def test_a_worker_that_lost_its_job_leaves_it_alone(tmp_path, tiny_models):
    """Requeued after a missed lease and claimed by another worker: the old one stops without cancelling the
    job, writing its metrics, or deleting the new owner's checkpoint."""
    settings = make_settings(tmp_path, tiny_models, checkpoint_steps=5)
    svc = PeftServe(settings)
    job = submit(svc, "stolen", toy_sentiment(400), epochs=100, batch_size=2)
    worker = Worker(settings)
    thread = threading.Thread(target=worker.run, kwargs={"burst": True})  # returns once it has let go
    thread.start()
    deadline = time.monotonic() + 60
    while svc.store.get_job(job.id).step < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    with svc.store.session() as s:  # the lease moves to another worker, as requeue_stale + claim would do
        from sqlalchemy import update

        from app.jobs.tables import Job

        s.execute(update(Job).where(Job.id == job.id).values(worker_id="other:1"))
    thread.join(60)
    assert not thread.is_alive()
    state = svc.store.get_job(job.id)
    assert state.status == "running" and state.worker_id == "other:1"
    assert Checkpoints(Blobs(settings.checkpoints_dir / job.id), 5).exists()
    assert not any(e.message == "Cancelled" for e in svc.store.events(job.id))


def test_checkpoints_of_jobs_that_ended_without_a_worker_are_swept(tmp_path, tiny_models):
    settings = make_settings(tmp_path, tiny_models)
    svc = PeftServe(settings)
    queued = submit(svc, "q", toy_sentiment(20))
    ended = submit(svc, "c", toy_sentiment(20))
    svc.store.request_cancel(ended.id)  # cancelled while queued (e.g. after a restart requeued it)
    for j in (queued.id, ended.id, "job_gone"):
        Checkpoints(Blobs(settings.checkpoints_dir / j), 5).save({"step": 1})
    Worker(settings).sweep_checkpoints()
    assert sorted(p.name for p in settings.checkpoints_dir.iterdir()) == [queued.id]
