"""kill -9 of the training worker mid-job (bench/crash.py with a small count): every job finishes, each adapter
exists once, and runs resume from their checkpoints instead of starting over."""

import pytest

from bench.crash import run

pytestmark = pytest.mark.e2e


def test_jobs_survive_kill_9_of_their_worker(tmp_path):
    summary = run(jobs=2, seed=1, workdir=tmp_path, epochs=12, timeout=600)
    assert summary["problems"] == []
    assert summary["succeeded"] == 2
    assert summary["kills"] >= 2  # up to 3 a job (one may finish before its next planned kill)
    assert summary["resumes"] >= 1
