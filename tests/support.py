"""What the tests share: the API keys every test server has, settings over the tiny models, a job submitted
in process, the real data in ../shared/data, and a real server process (`tiny_server`) with the HTTP helpers
that go with it. Fixtures live in conftest.py; tests import everything else from here."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.client.local import LocalServer

# API keys every test server is configured with (auth is on by default; see app/api/auth.py).
ADMIN_KEY = "test-admin-key-0123456789"
USER_KEY = "test-user-key-0123456789"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
USER_HEADERS = {"Authorization": f"Bearer {USER_KEY}"}
TERMINAL = ("succeeded", "failed", "cancelled")

SHARED_DATA = Path(os.environ.get("PEFTSERVE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def auth_env() -> dict[str, str]:
    """Environment giving a server subprocess the test keys."""
    return {"PEFTSERVE_ADMIN_API_KEYS": ADMIN_KEY, "PEFTSERVE_API_KEYS": USER_KEY}


def models_root(tiny_models: dict[str, Path]) -> Path:
    """The folder holding the tiny models: the allow-listed root for local base models."""
    roots = {p.parent for p in tiny_models.values()}
    return roots.pop() if len(roots) == 1 else Path("models")


def make_settings(root: Path, tiny_models: dict[str, Path], **overrides):
    from app.config import ModelSource, Settings

    values = dict(
        data_dir=root / "data",
        adapters_dir=root / "adapters",
        workers=0,
        models_root=models_root(tiny_models),
        models={name: ModelSource(kind="local", location=str(p)) for name, p in tiny_models.items()},
        poll_interval=0.1,
        heartbeat_interval=0.5,
        inference_dtype="float32",  # exact comparisons with plain peft; bf16 serving has its own test
        training_dtype="float32",  # the same on every machine; bf16 training has its own test
        admin_api_keys=[ADMIN_KEY],
        api_keys=[USER_KEY],
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


def submit(
    service,
    adapter: str,
    records: list[dict],
    base_model: str = "tiny-bert",
    validation: list[dict] | None = None,
    **hyper,
):
    """A job through the service, in process: `records` to train on (and `validation` rows, else the split)."""
    from app.schemas import JobCreate

    # Tiny models learn the toy sets fast on their attention projections alone; the product default (every
    # Linear, lr 5e-4) is calibrated for real bases and has its own test.
    targets = {"tiny-bert": ["query", "value"], "tiny-llama": ["q_proj", "v_proj"]}.get(base_model)
    hp = {"epochs": 15, "batch_size": 8, "learning_rate": 1e-2, "early_stopping_patience": 0, **hyper}
    hp.setdefault("target_modules", targets)
    val = {"records": validation} if validation is not None else None
    body = JobCreate(
        adapter=adapter, base_model=base_model, train={"records": records}, validation=val, hyperparameters=hp
    )
    return service.submit_job(body)


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} is absent (it lives in ../shared/data beside the checkout)")
    return path


# ---- a real `peftserve serve` process --------------------------------------------------------------------------
def tiny_server_env(tiny_models: dict[str, Path], workers: int = 1) -> dict[str, str]:
    """The environment of a test server: the test keys, the tiny models, fp32, a fast poll, no downloads."""
    return {
        "HF_HUB_OFFLINE": "1",
        **auth_env(),
        "PEFTSERVE_WORKERS": str(workers),
        "PEFTSERVE_POLL_INTERVAL": "0.2",
        # fp32 on every machine (tiny models): bf16 is covered by unit and integration tests
        "PEFTSERVE_TRAINING_DTYPE": "float32",
        "PEFTSERVE_INFERENCE_DTYPE": "float32",
        "PEFTSERVE_MODELS": json.dumps({n: {"kind": "local", "location": str(p)} for n, p in tiny_models.items()}),
        "PEFTSERVE_MODELS_ROOT": str(models_root(tiny_models)),
    }


def tiny_server(workdir: Path, tiny_models: dict[str, Path], workers: int = 1) -> LocalServer:
    """A server (not started yet) over the tiny models with `workers` worker processes, its state and its
    log (server.log) under `workdir`. `start()` it; `stop()` and `start()` again is a restart."""
    return LocalServer(tiny_server_env(tiny_models, workers), cwd=workdir, args=["--log-level", "warning"])


def post_job(client: httpx.Client, body: dict) -> httpx.Response:
    """POST /jobs on tiny-bert unless the body names a base; asserts it was queued (202)."""
    r = client.post("/jobs", json={"base_model": "tiny-bert", **body})
    assert r.status_code == 202, r.text
    return r


def wait_job(client: httpx.Client, job_id: str, until=TERMINAL, timeout: float = 180) -> dict:
    """Poll the job until its status is in `until`; `TimeoutError` after `timeout` s (or once it has ended in
    another status: it never will be)."""
    return wait_for_job(client, job_id, lambda job: job["status"] in until, f"status in {until}", timeout)


def wait_step(client: httpx.Client, job_id: str, step: int, timeout: float = 60) -> dict:
    """Poll the job until its training has reached `step` (progress.step >= step)."""
    return wait_for_job(client, job_id, lambda job: job["progress"]["step"] >= step, f"step >= {step}", timeout)


def wait_for_job(
    client: httpx.Client, job_id: str, done: Callable[[dict], bool], what: str, timeout: float, interval: float = 0.1
) -> dict:
    """Poll GET /jobs/{id} until `done(job)`; fails at the deadline, or at once if the job ended without it."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        if done(job):
            return job
        if job["status"] in TERMINAL:
            raise AssertionError(f"job {job_id} ended {job['status']} before {what}: {job.get('error')}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} (step {job['progress']['step']}) without {what}")
        time.sleep(interval)
