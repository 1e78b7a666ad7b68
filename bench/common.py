"""Helpers the bench scripts share: data, a server subprocess, load generation, percentiles, RSS."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PEFTSERVE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def rt_rows(split: str, cache: Path) -> list[dict]:
    """Rotten Tomatoes snippets: ../shared/data where it exists, else the demo's download."""
    path = SHARED / f"rt_movie_snippets.{split}.jsonl"
    if not path.exists():
        from app.demo import fetch_data

        train, test = fetch_data(cache)
        path = train if split == "train" else test
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on loopback: `argv` must bind to the port given in $PORT."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
        argv = [a.replace("$PORT", str(self.port)) for a in argv]
        self._log = log.open("w")
        self.proc = subprocess.Popen(argv, env=full_env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def wait(self, path: str = "/health", timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self._log.name}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.url} did not come up")

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


# The admin key every bench server is started with, and the header its clients send.
BENCH_KEY = "bench-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {BENCH_KEY}"}


def start_peftserve(env: dict[str, str], log: Path) -> Server:
    env = {"PEFTSERVE_ADMIN_API_KEYS": BENCH_KEY, **env}
    argv = [sys.executable, "-m", "app.cli", "serve", "--port", "$PORT", "--workers", "0", "--log-level", "warning"]
    server = Server(argv, env, log)
    server.wait()
    return server


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: dict) -> int:
    """One HTTP/1.1 keep-alive POST. A bare client: httpx would spend more CPU than the server it measures."""
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        f"Authorization: {AUTH['Authorization']}\r\n\r\n"
    )
    writer.write(head.encode() + data)
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _load(
    url: str, clients: int, seconds: float, body: Callable[[int, int], dict], total: int | None
) -> tuple[int, int, list[float]]:
    """`clients` concurrent connections posting /predict for `seconds` (or `total` requests in all)."""
    host, port = url.removeprefix("http://").split(":")
    ok = errors = sent = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def loop(c: int) -> None:
        nonlocal ok, errors, sent
        reader, writer = await asyncio.open_connection(host, int(port))
        i = 0
        try:
            while time.monotonic() < deadline and (total is None or sent < total):
                sent += 1
                t0 = time.perf_counter()
                status = await _post(reader, writer, "/predict", body(c, sent - 1 if total is not None else i))
                latencies.append(time.perf_counter() - t0)
                ok, errors = (ok + 1, errors) if status == 200 else (ok, errors + 1)
                i += 1
        finally:
            writer.close()

    await asyncio.gather(*(loop(c) for c in range(clients)))
    return ok, errors, latencies


def load(url: str, clients: int, seconds: float, body: Callable[[int, int], dict], total: int | None = None) -> dict:
    """Closed-loop load; `body(client, i)` gives each request (i counts all requests when `total` is set)."""
    t0 = time.perf_counter()
    ok, errors, lat = asyncio.run(_load(url, clients, seconds, body, total))
    wall = time.perf_counter() - t0
    return {"ok": ok, "errors": errors, "rps": ok / wall, "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if q == 50 or len(values) < 2:
        return statistics.median(values)
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])
