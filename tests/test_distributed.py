"""One job trained by a group of worker processes (torchrun, gloo on CPU: the path a multi-GPU worker takes
with nccl) lands the same adapter as one process training it on whole batches."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.base_models.tiny import toy_sentiment
from app.jobs.worker import Worker
from app.service import PeftServe
from tests.support import auth_env, make_settings, submit, tiny_server_env

pytestmark = pytest.mark.e2e

# No dropout anywhere (the tiny models have none), so a group's step is the whole batch's step.
HP = {"epochs": 2, "batch_size": 8, "lora_dropout": 0.0, "learning_rate": 5e-3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_worker(settings, tiny_models, nproc: int) -> subprocess.Popen:
    """`torchrun --nproc-per-node N --no-python peftserve worker --burst` over the settings' folders, started."""
    env = {
        **os.environ,
        **tiny_server_env(tiny_models, workers=0),
        **auth_env(),
        "PEFTSERVE_DATA_DIR": str(settings.data_dir),
        "PEFTSERVE_ADAPTERS_DIR": str(settings.adapters_dir),
        "PEFTSERVE_POLL_INTERVAL": "0.1",
        "OMP_NUM_THREADS": "1",
    }
    launcher = Path(sys.executable).parent / "torchrun"
    peftserve = Path(sys.executable).parent / "peftserve"
    cmd = [str(launcher), "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1"]
    cmd += ["--master-port", str(free_port()), "--no-python", str(peftserve), "worker", "--burst"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for the group to exit; asserts it exited 0 and returns its log (stderr)."""
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return err


def weights(svc: PeftServe, adapter: str) -> dict[str, torch.Tensor]:
    return load_file(svc.adapters.resolve(adapter).weights)


def test_two_processes_train_one_job_as_one_process_does_on_whole_batches(tmp_path, tiny_models):
    settings = make_settings(tmp_path, tiny_models)
    svc = PeftServe(settings)
    rows = toy_sentiment(60)  # 54 to train after the validation split: the last batch of 6 splits 3 + 3
    grouped = submit(svc, "grouped", rows, **HP)
    log = finish(torchrun_worker(settings, tiny_models, nproc=2))
    assert "rank 1 of 2 (gloo)" in log and f"job {grouped.id} trained alongside rank 0" in log
    assert svc.store.get_job(grouped.id).status == "succeeded", svc.store.get_job(grouped.id).error_message

    alone = submit(svc, "alone", rows, **HP)
    Worker(settings).run(burst=True)
    assert svc.store.get_job(alone.id).status == "succeeded"

    a, b = weights(svc, "grouped"), weights(svc, "alone")
    assert a.keys() == b.keys() and any("lora_A" in k for k in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)
    m_group, m_alone = (svc.adapters.resolve(n).meta["metrics"] for n in ("grouped", "alone"))
    assert m_group["steps"] == m_alone["steps"] == 14  # 7 batches an epoch, 2 epochs
    assert m_group["train_loss"] == pytest.approx(m_alone["train_loss"], abs=1e-5)
    assert m_group["accuracy"] == m_alone["accuracy"]
    # rank 0 alone reported: one curve, one set of events
    points = svc.job_metrics(grouped.id)
    assert [p.step for p in points.train] == [p.step for p in svc.job_metrics(alone.id).train]
    assert [e.message for e in svc.store.events(grouped.id)].count("First training step done") == 1


def test_a_cancel_stops_every_rank_at_the_same_step(tmp_path, tiny_models):
    settings = make_settings(tmp_path, tiny_models)
    svc = PeftServe(settings)
    job = submit(svc, "long", toy_sentiment(200), **{**HP, "epochs": 100, "batch_size": 4})
    group = torchrun_worker(settings, tiny_models, nproc=2)
    deadline = time.monotonic() + 120
    while svc.store.get_job(job.id).step < 20:
        assert time.monotonic() < deadline and group.poll() is None, "the group never got going"
        time.sleep(0.2)
    svc.store.request_cancel(job.id)
    log = finish(group, timeout=60)  # both ranks stop and leave; a rank left behind would hang the group
    done = svc.store.get_job(job.id)
    assert done.status == "cancelled" and done.step < done.total_steps
    assert f"job {job.id} stopped on every rank: cancelled" in log
