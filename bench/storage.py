"""What shared storage costs on the adapter path, side by side in one run: today's folders (`ADAPTERS_DIR`),
the registry in the database with the weights on a local path, and with the weights on an S3-compatible
server on loopback (moto in server mode, app/stores/local_s3.py; a real MinIO or S3 adds its network's
round trips).

    python -m bench.storage [--repeat 50] [--weights-kb 600]

For each backend: commit a version (upload, then the registry row), resolve a cached version (what every
predict does), and a second host's first fetch (download, sha256 check, into its cache); p50 and p95 in ms.
The weights are random bytes of about a MiniLM LoRA adapter's size (r=8 on every Linear, ~600 KB).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from app.jobs.store import JobStore
from app.stores.adapters import AdapterStore, LocalAdapterStore
from app.stores.blobs import Blobs
from app.stores.local_s3 import S3Server
from app.stores.registry import RegistryAdapterStore
from bench.common import pct, table


def commit(store: AdapterStore, name: str, weights: bytes) -> None:
    staging = store.staging_dir()
    (staging / "adapter_config.json").write_text("{}")
    (staging / "adapter_model.safetensors").write_bytes(weights)
    try:
        store.commit(staging, name, {"base_model": "minilm", "labels": ["a", "b"]})
    finally:
        store.discard(staging)


def timed(fn: Callable[[int], object], repeat: int) -> list[float]:
    out = []
    for i in range(repeat):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def measure(make: Callable[[str], AdapterStore], repeat: int, weights: bytes) -> dict[str, list[float]]:
    here = make("host-a")
    figures = {"commit": timed(lambda i: commit(here, f"a{i}", weights), repeat)}
    figures["resolve (cached)"] = timed(lambda i: here.resolve(f"a{i}"), repeat)
    there = make("host-b")
    figures["first fetch, other host"] = timed(lambda i: there.resolve(f"a{i}"), repeat)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--weights-kb", type=int, default=600)
    args = parser.parse_args()
    weights = os.urandom(args.weights_kb * 1024)
    root = Path(tempfile.mkdtemp(prefix="peftserve-bench-storage-"))
    s3 = S3Server(root)
    os.environ.update(s3.env)
    db = JobStore(f"sqlite:///{root / 'jobs.db'}")

    def registry(url: str) -> Callable[[str], AdapterStore]:
        return lambda host: RegistryAdapterStore(db, Blobs(url), root / host / url[-2:] / "cache", root / host / "tmp")

    backends = {
        "folders (default)": lambda host: LocalAdapterStore(root / "adapters"),
        "registry + local path": registry(str(root / "storage")),
        "registry + S3 (moto)": registry(s3.url("bench")),
    }
    rows = []
    try:
        for label, make in backends.items():
            for step, ms in measure(make, args.repeat, weights).items():
                rows.append((label, step, f"{pct(ms, 50):.1f}", f"{pct(ms, 95):.1f}"))
    finally:
        s3.stop()
    print(f"{args.repeat} versions of {args.weights_kb} KB each; SQLite registry; ms")
    print(table(rows, ("backend", "call", "p50", "p95")))


if __name__ == "__main__":
    main()
