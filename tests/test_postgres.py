"""The job store on a real PostgreSQL (a throwaway cluster on loopback, app/jobs/local_postgres.py): standalone worker
processes sharing the queue take every job exactly once, a database restart mid-training is ridden out by
workers and the API alike (the API answering 503 in its envelope while the database is down), and two API
replicas without workers serve, delete and stream the same jobs and adapters. The restart and replica test runs
as a deployment of several hosts would: one database, one object store (a real S3 server on loopback), and
every process its own data dir, sharing no folder."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.base_models.tiny import toy_sentiment
from app.jobs.tables import JobStatus
from app.service import PeftServe
from tests.support import ADMIN_HEADERS, make_settings, submit, tiny_server, tiny_server_env

pytestmark = pytest.mark.e2e


def start_workers(
    n: int, env: dict[str, str], cwd: Path, burst: bool, own_dirs: bool = False
) -> list[subprocess.Popen]:
    """`own_dirs`: each worker its own data and adapters dir (hosts sharing nothing but the database and storage)."""
    cmd = [sys.executable, "-m", "app.cli", "worker", "--log-level", "warning", *(["--burst"] if burst else [])]
    return [
        subprocess.Popen(
            cmd,
            env={**env, **(host_dirs(cwd / f"worker{i}") if own_dirs else {})},
            cwd=cwd,
            stdout=open(cwd / f"worker{i}.log", "w"),
            stderr=subprocess.STDOUT,
        )
        for i in range(n)
    ]


def host_dirs(root: Path) -> dict[str, str]:
    return {"PEFTSERVE_DATA_DIR": str(root / "data"), "PEFTSERVE_ADAPTERS_DIR": str(root / "adapters")}


def storage_env(tiny_models: dict, url: str, s3, storage_url: str) -> dict[str, str]:
    """What every process of a multi-host deployment is given: the database and the object store (no folder)."""
    import os

    return {
        **os.environ,
        **tiny_server_env(tiny_models, workers=0),
        **s3.env,
        "PEFTSERVE_DATABASE_URL": url,
        "PEFTSERVE_STORAGE_URL": storage_url,
        "PEFTSERVE_HEARTBEAT_INTERVAL": "0.5",
    }


def durable_files(root: Path) -> list[str]:
    """Files under a host's folders that are not caches, work in progress, logs or the base-model cache."""
    skip = ("cache", "tmp", "models")
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(".log") and not set(p.relative_to(root).parts) & set(skip)
    )


def shared_env(tiny_models: dict, settings, url: str) -> dict[str, str]:
    """What every process of the deployment is given: the database, the same state folders, the tiny models."""
    import os

    return {
        **os.environ,
        **tiny_server_env(tiny_models, workers=0),
        "PEFTSERVE_DATABASE_URL": url,
        "PEFTSERVE_DATA_DIR": str(settings.data_dir),
        "PEFTSERVE_ADAPTERS_DIR": str(settings.adapters_dir),
        "PEFTSERVE_HEARTBEAT_INTERVAL": "0.5",
    }


def started_on(svc: PeftServe, job_id: str) -> list[str]:
    return [e.message for e in svc.store.events(job_id, limit=500) if e.message.startswith("Started on worker")]


def test_three_standalone_workers_take_twelve_jobs_each_exactly_once(tmp_path, tiny_models, postgres):
    url = postgres.new_database()
    settings = make_settings(tmp_path, tiny_models, database_url=url)
    svc = PeftServe(settings)
    jobs = [submit(svc, "shared", toy_sentiment(24, seed=i), epochs=2, batch_size=8) for i in range(12)]
    workers = start_workers(3, shared_env(tiny_models, settings, url), tmp_path, burst=True)
    for w in workers:
        assert w.wait(timeout=600) == 0, (tmp_path / "worker0.log").read_text()[-3000:]
    done = [svc.store.get_job(j.id) for j in jobs]
    assert [j.status for j in done] == ["succeeded"] * 12, [(j.error_code, j.error_message) for j in done]
    assert all(j.attempts == 1 and len(started_on(svc, j.id)) == 1 for j in done)  # each job trained once
    assert len({j.worker_id for j in done}) >= 2  # the queue was shared
    versions = svc.adapters.versions("shared")
    assert [v.version for v in versions] == list(range(1, 13))  # every version written once
    assert sorted(v.meta["job_id"] for v in versions) == sorted(j.id for j in jobs)
    assert sorted(j.result_adapter for j in done) == sorted(v.ref for v in versions)
    svc.close()


def test_a_database_restart_mid_training_loses_no_job_and_the_api_answers_503_meanwhile(
    tmp_path, tiny_models, postgres, s3
):
    url, storage = postgres.new_database(), s3.url(tmp_path.name)
    settings = make_settings(tmp_path / "submitter", tiny_models, database_url=url, storage_url=storage)
    svc = PeftServe(settings)
    jobs = [submit(svc, f"r{i}", toy_sentiment(120, seed=i), epochs=3, batch_size=4) for i in range(3)]
    env = storage_env(tiny_models, url, s3, storage)
    workers = start_workers(3, env, tmp_path, burst=False, own_dirs=True)
    api = tiny_server(tmp_path / "api", tiny_models, workers=0)
    api.env.update({**env, **host_dirs(tmp_path / "api")})
    (tmp_path / "api").mkdir()
    api.start()
    try:
        deadline = time.monotonic() + 120
        while not all(svc.store.get_job(j.id).step >= 3 for j in jobs):  # all three training
            assert time.monotonic() < deadline, [svc.store.get_job(j.id).status for j in jobs]
            time.sleep(0.2)
        postgres.pg_ctl("stop", "-m", "fast")  # every connection cut, mid-training
        try:
            r = httpx.get(f"{api.url}/jobs/{jobs[0].id}", headers=ADMIN_HEADERS, timeout=30)
            assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
            r = httpx.get(f"{api.url}/v1/fine_tuning/jobs", headers=ADMIN_HEADERS, timeout=30)
            assert r.status_code == 503 and r.json()["error"]["type"] == "server_error", r.text
            time.sleep(3)  # the workers wait it out, retrying
        finally:
            postgres.pg_ctl("start")
        with httpx.Client(base_url=api.url, headers=ADMIN_HEADERS, timeout=30) as c:
            deadline = time.monotonic() + 300
            while True:
                states = [c.get(f"/jobs/{j.id}").json() for j in jobs]  # the API reconnects by itself
                if all(s["status"] in ("succeeded", "failed", "cancelled") for s in states):
                    break
                assert time.monotonic() < deadline, [(s["status"], s["progress"]) for s in states]
                time.sleep(0.5)
        assert [s["status"] for s in states] == ["succeeded"] * 3, [s["error"] for s in states]
        assert all(s["attempts"] == 1 for s in states)  # none lost, requeued or trained twice
        assert all(len(started_on(svc, j.id)) == 1 for j in jobs)
        assert [svc.adapters.resolve(f"r{i}").ref for i in range(3)] == ["r0@v1", "r1@v1", "r2@v1"]
        assert svc.store.count_by_status()[JobStatus.succeeded.value] == 3
        check_two_replicas(api, tmp_path, tiny_models, env, jobs[0].id)
        # nothing durable on any host: datasets, checkpoints and weights are in the object store alone
        hosts = [
            tmp_path / "submitter",
            tmp_path / "api",
            tmp_path / "api2",
            *(tmp_path / f"worker{i}" for i in range(3)),
        ]
        assert [f for h in hosts for f in durable_files(h)] == []
        assert list((tmp_path / "api" / "data" / "cache").rglob("adapter_model.safetensors"))  # fetched, cached
    finally:
        api.stop()
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=60)
        svc.close()


def check_two_replicas(first, tmp_path: Path, tiny_models: dict, env: dict[str, str], job_id: str) -> None:
    """A second API replica (no workers, its own data dir) on the same database and object store: the adapters
    the standalone workers trained (which the first replica, running since before they existed, already serves
    without a restart) are served by it too; a delete through one is a 404 on both; /metrics and the event
    stream answer on either."""
    second = tiny_server(tmp_path / "api2", tiny_models, workers=0)
    second.env.update({**env, **host_dirs(tmp_path / "api2")})
    (tmp_path / "api2").mkdir()
    second.start()
    try:
        clients = [httpx.Client(base_url=s.url, headers=ADMIN_HEADERS, timeout=30) for s in (first, second)]
        body = {"adapter": "r1", "inputs": toy_sentiment(6, seed=9)[0]["text"]}
        answers = [c.post("/predict", json=body).json() for c in clients]
        assert answers[0] == answers[1] and answers[0]["adapter"] == "r1@v1"
        assert clients[1].delete("/adapters/r1").json() == {"deleted": ["r1@v1"]}
        for c in clients:
            assert c.post("/predict", json=body).status_code == 404
            assert c.get("/adapters/r2").json()["latest"] == "r2@v1"
            metrics = c.get("/metrics")
            assert metrics.status_code == 200 and 'peftserve_jobs{status="succeeded"} 3.0' in metrics.text
            stream = c.get(f"/jobs/{job_id}/events", params={"stream": "true"})
            assert stream.status_code == 200 and "event: end" in stream.text and "Saved adapter r0@v1" in stream.text
        for c in clients:
            c.close()
    finally:
        second.stop()
