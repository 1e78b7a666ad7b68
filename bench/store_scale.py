"""The job store as its history grows: seed 100,000 finished jobs, 5,000,000 metric points and 1,000,000 events
(and a few running and queued jobs), then time what the API and the workers do on every call, on SQLite and on
PostgreSQL (a throwaway cluster, app/jobs/local_postgres.py), through the HTTP API in process where there is a
route for it.

    python -m bench.store_scale [--jobs 100000 --points-per-job 50 --events-per-job 10] [--backend sqlite|postgresql]

Prints per backend the seeding time and, for each call, the p50 and p95 over `--repeat` calls: a claim, GET
/jobs?status=running, a page of GET /jobs (after an id deep in the history), GET /jobs/{id}/metrics, and the
event stream's catch-up (GET /jobs/{id}/events?after=0). Goal: each p50 under 50 ms.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

GOAL_MS = 50.0
CHUNK = 20_000


def seed(store: Any, n_jobs: int, points_per_job: int, events_per_job: int) -> list[str]:
    """Finished jobs with their metric points and events, bulk-inserted; then 20 running and 1,000 queued."""
    from app.jobs.tables import Job, JobEvent, JobStatus, MetricPoint, utcnow

    start = utcnow() - timedelta(days=365)
    ids = [f"job_{i:024x}" for i in range(n_jobs)]
    hp = {"epochs": 3, "batch_size": 16, "learning_rate": 5e-4}
    with store.engine.begin() as conn:
        for lo in range(0, n_jobs, CHUNK):
            rows = []
            for i in range(lo, min(n_jobs, lo + CHUNK)):
                at = start + timedelta(seconds=300 * i)
                rows.append(
                    dict(
                        id=ids[i],
                        status=JobStatus.succeeded.value,
                        adapter=f"a{i % 500}",
                        base_model="minilm",
                        hyperparameters=hp,
                        train_dataset="ds_x",
                        validation_split=0.1,
                        created_at=at,
                        started_at=at,
                        finished_at=at + timedelta(seconds=60),
                        step=100,
                        total_steps=100,
                        epoch=3.0,
                        cancel_requested=False,
                        attempts=1,
                        result_adapter=f"a{i % 500}@v1",
                        result_metrics={"accuracy": 0.9},
                    )
                )
            conn.execute(insert(Job), rows)
    _bulk(store, MetricPoint, n_jobs * points_per_job, lambda k: _point(ids, k, points_per_job, start))
    _bulk(store, JobEvent, n_jobs * events_per_job, lambda k: _event(ids, k, events_per_job, start))
    for i in range(1020):
        store.create_job(
            adapter="live",
            base_model="minilm",
            hyperparameters=hp,
            train_dataset="ds_x",
            validation_dataset=None,
            validation_split=0.1,
        )
        if i < 20:
            store.claim_next(f"seed-worker-{i}")
    return ids


def _bulk(store: Any, table: Any, n: int, row: Any) -> None:
    with store.engine.begin() as conn:
        for lo in range(0, n, CHUNK):
            conn.execute(insert(table), [row(k) for k in range(lo, min(n, lo + CHUNK))])


def _point(ids: list[str], k: int, per_job: int, start: Any) -> dict:
    job, step = divmod(k, per_job)
    kind = "eval" if step % 10 == 9 else "train"
    values = {"loss": 0.5, "learning_rate": 5e-4} if kind == "train" else {"loss": 0.4, "accuracy": 0.9}
    return dict(job_id=ids[job], kind=kind, step=step + 1, epoch=step / per_job * 3, values=values, created_at=start)


def _event(ids: list[str], k: int, per_job: int, start: Any) -> dict:
    job, n = divmod(k, per_job)
    return dict(job_id=ids[job], created_at=start, level="info", type="message", message=f"event {n}", data=None)


def timed(call: Any, repeat: int) -> tuple[float, float]:
    """p50 and p95 of `call()` in ms."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def measure(url: str, root: Path, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.jobs.store import JobStore
    from app.main import create_app

    store = JobStore(url)
    t0 = time.perf_counter()
    ids = seed(store, args.jobs, args.points_per_job, args.events_per_job)
    print(
        f"  seeded {args.jobs:,} jobs, {args.jobs * args.points_per_job:,} metric points and "
        f"{args.jobs * args.events_per_job:,} events in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    key = "bench-admin-key-0123456789"
    settings = Settings(
        _env_file=None,
        data_dir=root / "data",
        adapters_dir=root / "adapters",
        database_url=url,
        workers=0,
        admin_api_keys=[key],
    )
    rng = random.Random(0)
    results: dict[str, tuple[float, float]] = {}
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as c:

        def get(path: str) -> None:
            r = c.get(path)
            assert r.status_code == 200, r.text

        claims = iter(range(10**9))
        results["claim (the oldest queued job)"] = timed(lambda: store.claim_next(f"w{next(claims)}"), args.repeat)
        results["GET /jobs?status=running"] = timed(lambda: get("/jobs?status=running&limit=20"), args.repeat)
        results["GET /jobs (a page, after an id deep in the history)"] = timed(
            lambda: get(f"/jobs?limit=20&after={rng.choice(ids)}"), args.repeat
        )
        results["GET /jobs/{id}/metrics"] = timed(lambda: get(f"/jobs/{rng.choice(ids)}/metrics"), args.repeat)
        results["GET /jobs/{id}/events (catch-up)"] = timed(
            lambda: get(f"/jobs/{rng.choice(ids)}/events?after=0&limit=100"), args.repeat
        )
    store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--points-per-job", type=int, default=50)
    parser.add_argument("--events-per-job", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    from app.jobs.local_postgres import start

    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    failed = False
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            server = None
            if backend == "sqlite":
                url = f"sqlite:///{root / 'jobs.db'}"
            else:
                server = start()
                if server is None:
                    print("postgresql: not installed; skipped")
                    continue
                url = server.new_database()
            print(f"{backend}:", flush=True)
            try:
                for name, (p50, p95) in measure(url, root, args).items():
                    ok = p50 < GOAL_MS
                    failed |= not ok
                    print(f"  {name:55s} p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  {'ok' if ok else 'OVER the goal'}")
            finally:
                if server is not None:
                    server.stop()
    print(f"goal: each p50 under {GOAL_MS:.0f} ms: {'FAILED' if failed else 'met'}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
