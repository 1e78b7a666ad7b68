"""Helpers the bench scripts share: data, a server subprocess (app.client.local.LocalServer), load generation,
percentiles."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from app.client.local import LocalServer

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


# The admin key every bench server is started with, and the header its clients send.
BENCH_KEY = "bench-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {BENCH_KEY}"}


def bench_server(
    env: dict[str, str], log: Path, args: Sequence[str] = (), argv: Sequence[str] | None = None
) -> LocalServer:
    """A server process run from the checkout, offline (not started: `start()` it; `stop()` when done).
    `peftserve serve --port PORT *args` unless `argv` is given (any command that binds to `$PORT`)."""
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return LocalServer(env, cwd=ROOT, args=args, argv=argv, log=log, startup_timeout=180)


def start_peftserve(env: dict[str, str], log: Path) -> LocalServer:
    """`peftserve serve` with the bench admin key and no workers, started and ready."""
    env = {"PEFTSERVE_ADMIN_API_KEYS": BENCH_KEY, **env}
    return bench_server(env, log, args=["--workers", "0", "--log-level", "warning"]).start()


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
