"""End to end: a real `peftserve serve` process (uvicorn) with its worker process, over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.base_models.tiny import toy_sentiment
from tests.support import ADMIN_HEADERS, post_job, tiny_server, wait_job, wait_step

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path, tiny_models):
    srv = tiny_server(tmp_path, tiny_models)
    yield srv
    srv.stop()


def test_train_predict_evaluate_and_survive_a_restart(server):
    server.start()
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN_HEADERS) as c:
        job = post_job(
            c,
            {
                "adapter": "sent",
                "train": {"records": toy_sentiment(200)},
                "validation": {"records": toy_sentiment(100, seed=3)},
                "hyperparameters": {
                    "epochs": 15,
                    "batch_size": 8,
                    "learning_rate": 0.01,
                    "early_stopping_patience": 0,
                    "target_modules": ["query", "value"],
                },
            },
        )
        job_id = job.json()["id"]
        seen_while_running = []  # train points visible while the job runs
        deadline = time.monotonic() + 180
        while (m := c.get(f"/jobs/{job_id}/metrics").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            if m["status"] == "running":
                seen_while_running.append(len(m["train"]))
            time.sleep(0.1)
        done = c.get(f"/jobs/{job_id}").json()
        assert done["status"] == "succeeded", done["error"]
        metrics = c.get(f"/jobs/{job_id}/metrics").json()
        assert len(metrics["train"]) > 0 and len(metrics["eval"]) == 15
        assert any(0 < n < len(metrics["train"]) for n in seen_while_running), seen_while_running
        pred = c.post("/predict", json={"adapter": "sent", "inputs": ["a lovely superb film", "awful and dull"]})
        assert pred.status_code == 200 and pred.json()["adapter"] == "sent@v1"
        ev = c.post("/evaluate", json={"adapter": "sent", "records": toy_sentiment(40, seed=7)}).json()
        assert ev["accuracy"] >= 0.75
    assert (server.cwd / "adapters" / "sent" / "v1" / "adapter_model.safetensors").exists()
    assert (server.cwd / ".peftserve" / "peftserve.db").exists()  # state under the working directory

    server.stop()
    server.start()
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN_HEADERS) as c:
        again = c.get(f"/jobs/{job_id}").json()
        assert again["status"] == "succeeded" and again["result"] == done["result"]
        assert c.get(f"/jobs/{job_id}/metrics").json() == metrics
        assert c.get("/adapters/sent").json()["latest"] == "sent@v1"
        assert (
            c.post("/predict", json={"adapter": "sent", "inputs": ["a lovely superb film", "awful and dull"]}).json()
            == pred.json()
        )


def test_a_job_running_at_shutdown_is_requeued_and_finishes_after_restart(server):
    server.start()
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN_HEADERS) as c:
        job_id = post_job(
            c,
            {
                "adapter": "long",
                "train": {"records": toy_sentiment(400)},
                "hyperparameters": {
                    "epochs": 6,
                    "batch_size": 4,
                    "early_stopping_patience": 0,
                    "target_modules": ["query", "value"],
                },
            },
        ).json()["id"]
        wait_step(c, job_id, 2, timeout=60)
    server.stop()
    server.start()
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN_HEADERS) as c:
        events = [e["message"] for e in c.get(f"/jobs/{job_id}/events", params={"limit": 500}).json()["data"]]
        assert any("Returned to the queue" in m for m in events), events
        done = wait_job(c, job_id)
        assert done["status"] == "succeeded" and done["attempts"] == 1  # a shutdown does not use up an attempt
        resumed = done["result"]["metrics"]["resumed_from_steps"]
        assert len(resumed) == 1 and resumed[0] >= 2, resumed  # went on from its checkpoint, not from step 0


def test_standalone_worker_and_cancel(tmp_path, tiny_models):
    srv = tiny_server(tmp_path, tiny_models, workers=0).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60, headers=ADMIN_HEADERS) as c:
            quick = post_job(
                c,
                {
                    "adapter": "solo",
                    "base_model": "tiny-llama",
                    "train": {"records": toy_sentiment(40)},
                    "hyperparameters": {"epochs": 1},
                },
            ).json()["id"]
            worker = subprocess.run(
                [str(Path(sys.executable).parent / "peftserve"), "worker", "--burst"],
                cwd=tmp_path,
                env=srv.env,
                capture_output=True,
                timeout=300,
            )
            assert worker.returncode == 0, worker.stderr[-2000:]
            assert c.get(f"/jobs/{quick}").json()["status"] == "succeeded"

            slow = post_job(
                c,
                {
                    "adapter": "slow",
                    "train": {"records": toy_sentiment(400)},
                    "hyperparameters": {
                        "epochs": 100,
                        "batch_size": 4,
                        "early_stopping_patience": 0,
                        "target_modules": ["query", "value"],
                    },
                },
            ).json()["id"]
            proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                cwd=tmp_path,
                env=srv.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_job(c, slow, until=("running",), timeout=60)
                wait_step(c, slow, 2, timeout=60)
                assert c.post(f"/jobs/{slow}/cancel").status_code == 200
                cancelled = wait_job(c, slow, timeout=30)
                assert cancelled["status"] == "cancelled"
                assert c.get("/adapters/slow").status_code == 404
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        srv.stop()


def test_workers_do_not_outlive_a_killed_server(server):
    server.start()
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN_HEADERS) as c:
        job_id = post_job(
            c,
            {
                "adapter": "long",
                "train": {"records": toy_sentiment(400)},
                "hyperparameters": {
                    "epochs": 50,
                    "batch_size": 4,
                    "early_stopping_patience": 0,
                    "target_modules": ["query", "value"],
                },
            },
        ).json()["id"]
        wait_job(c, job_id, until=("running",), timeout=60)
    children = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True).stdout.split()
    assert children
    server.proc.kill()  # no clean shutdown at all
    server.proc.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    server.start()  # the orphaned worker put its job back before exiting; the new worker runs it
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN_HEADERS) as c:
        events = [e["message"] for e in c.get(f"/jobs/{job_id}/events", params={"limit": 500}).json()["data"]]
        assert any("Returned to the queue" in m for m in events), events
        assert c.post(f"/jobs/{job_id}/cancel").status_code == 200


def test_a_worker_that_dies_is_restarted_by_the_server(server):
    server.start()
    (worker,) = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(worker), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True).stdout.split()
        if children and children != [worker]:
            break
        time.sleep(0.2)
    assert children and worker not in children, children
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN_HEADERS) as c:  # and the new worker trains
        job = post_job(
            c, {"adapter": "after", "train": {"records": toy_sentiment(40)}, "hyperparameters": {"epochs": 1}}
        )
        assert wait_job(c, job.json()["id"])["status"] == "succeeded"
