"""kill -9 of the training worker mid-job (`python -m bench.crash` with a small count, its own process): every
job finishes, each adapter exists once, and runs resume from their checkpoints instead of starting over."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("fused_jobs", [1, 2], ids=["one-at-a-time", "trained-together"])
def test_jobs_survive_kill_9_of_their_worker(tmp_path, fused_jobs):
    cmd = [sys.executable, "-m", "bench.crash", "--jobs", "2", "--seed", "1", "--epochs", "12", "--timeout", "600"]
    cmd += ["--workdir", str(tmp_path), "--fused-jobs", str(fused_jobs)]
    # its own process group: if this test is interrupted, the bench, its server and the workers all go with it
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(stdout)
    # the bench prints a table of the jobs, then its summary (JSON) last
    assert "\n{\n" in stdout, stdout[-3000:] + stderr[-3000:]
    summary = json.loads(stdout[stdout.rindex("\n{\n") + 1 :])
    assert summary["problems"] == []
    assert proc.returncode == 0, stderr[-3000:]
    assert summary["succeeded"] == 2
    assert summary["kills"] >= 2  # up to 3 a job (one may finish before its next planned kill)
    assert summary["resumes"] >= 1
