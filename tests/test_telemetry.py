"""GET /metrics (Prometheus text) and the running job's estimated_finish / training speed."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.base_models.tiny import toy_sentiment
from app.jobs.worker import Worker
from app.main import create_app
from tests.support import ADMIN_HEADERS, USER_HEADERS

HP = {"epochs": 2, "batch_size": 8, "target_modules": ["query", "value"]}


def scrape(c: TestClient) -> dict[tuple[str, tuple], float]:
    r = c.get("/metrics", headers=USER_HEADERS)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_metrics_report_jobs_engine_and_latency(settings):
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as c:
        assert c.get("/metrics", headers={"Authorization": "Bearer not-a-key-000000000"}).status_code == 401
        r = c.post(
            "/jobs",
            json={
                "adapter": "m",
                "base_model": "tiny-bert",
                "train": {"records": toy_sentiment(40)},
                "hyperparameters": HP,
            },
        )
        assert r.status_code == 202
        before = scrape(c)
        assert before[("peftserve_jobs", (("status", "queued"),))] == 1
        assert before[("peftserve_queue_length", ())] == 1
        Worker(settings).run(burst=True)
        for _ in range(3):
            assert c.post("/predict", json={"adapter": "m", "inputs": ["a good film", "bad"]}).status_code == 200
        m = scrape(c)
        assert m[("peftserve_jobs", (("status", "succeeded"),))] == 1 and m[("peftserve_queue_length", ())] == 0
        assert m[("peftserve_predict_seconds_count", ())] == 3
        assert m[("peftserve_predict_batch_rows_count", ())] == 3 and m[("peftserve_predict_batch_rows_sum", ())] == 6
        assert m[("peftserve_adapter_cache_misses_total", ())] == 1  # loaded once
        assert m[("peftserve_adapter_cache_hits_total", ())] == 2
        assert m[("peftserve_adapters_loaded", ())] == 1
        assert m[("peftserve_predict_rows_total", ())] == 6


def test_running_job_has_an_eta_and_a_training_speed(settings):
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as c:
        body = {"adapter": "slow", "base_model": "tiny-bert", "train": {"records": toy_sentiment(400)}}
        hp = {"epochs": 100, "batch_size": 2, "early_stopping_patience": 0, "target_modules": ["query", "value"]}
        job_id = c.post("/jobs", json={**body, "hyperparameters": hp}).json()["id"]
        worker = Worker(settings)
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            job = c.get(f"/jobs/{job_id}").json()
            while job["estimated_finish"] is None and time.monotonic() < deadline:
                time.sleep(0.2)
                job = c.get(f"/jobs/{job_id}").json()
            assert job["status"] == "running"
            eta = datetime.fromisoformat(job["estimated_finish"])
            assert eta > datetime.now(timezone.utc)
            speed = [v for (name, _), v in scrape(c).items() if name == "peftserve_training_samples_per_second"]
            assert len(speed) == 1 and speed[0] > 0
            assert c.post(f"/jobs/{job_id}/cancel").status_code == 200
        finally:
            worker.stopping.set()
            thread.join(60)
        done = c.get(f"/jobs/{job_id}").json()
        assert done["status"] == "cancelled" and done["estimated_finish"] is None
