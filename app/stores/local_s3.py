"""A real S3-compatible server on loopback: `moto_server` (moto in server mode, a dev dependency from PyPI) with
one bucket. The harness of the tests and of bench/storage.py, standing in for MinIO or S3; never used by the
server itself."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.client.local import free_port


class S3Server:
    """A real S3-compatible server on loopback (`moto_server`, moto in server mode) with one bucket; `env` is
    what a process needs to reach it (the standard AWS_* variables, AWS_ENDPOINT_URL pointing here)."""

    def __init__(self, workdir: Path):
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "peftserve-test",
            "AWS_SECRET_ACCESS_KEY": "peftserve-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        server = Path(sys.executable).with_name("moto_server")
        self.log = (workdir / "moto.log").open("w")
        self.process = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.endpoint, timeout=1)
                break
            except httpx.TransportError:
                assert self.process.poll() is None and time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        self.bucket = "peftserve"
        httpx.put(f"{self.endpoint}/{self.bucket}", timeout=10).raise_for_status()

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()
