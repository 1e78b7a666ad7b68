"""Load: N concurrent /predict clients for a fixed time against a real `peftserve serve` on loopback.

    make bench-load        (or: python -m bench.load [--clients 200] [--seconds 60] [--base minilm|tiny-bert])

Trains one adapter (minilm: 96 Rotten Tomatoes snippets, 1 epoch; tiny-bert: the test suite's toy set), starts
`peftserve serve` with an admin key (no workers), warms it up, then runs `--clients` keep-alive connections,
each posting one text at a time (texts of every length) until the deadline: a bounded loop, every client stops
at the deadline. The server's RSS is sampled every `--sample-every` seconds. Prints requests, errors by kind,
req/s, p50/p99 latency, RSS at the start, every 10 s and the end, and the RSS slope of the second half.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from app.client.local import LocalServer
from bench.common import _post, pct, rt_rows, start_peftserve

REQUEST_TIMEOUT_S = 30.0


def train_adapter(work: Path, base: str, env: dict[str, str]) -> list[str]:
    """One adapter `load` on `base`; returns texts to send."""
    from app.config import Settings
    from app.jobs.worker import Worker
    from app.schemas import JobCreate
    from app.service import PeftServe

    if base == "minilm":
        rows = rt_rows("train", work / "rt")[:96]
        texts = [r["text"] for r in rt_rows("test", work / "rt")][:2000]
        hp: dict = {"epochs": 1}
    else:
        from app.base_models.tiny import toy_sentiment

        rows = toy_sentiment(80)
        words = [w for r in toy_sentiment(200, seed=1) for w in r["text"].split()]
        rng = random.Random(0)
        texts = [" ".join(rng.choices(words, k=rng.randint(1, 120))) for _ in range(2000)]
        hp = {"epochs": 2, "target_modules": ["query", "value"]}
    settings = Settings(
        _env_file=None,
        data_dir=env["PEFTSERVE_DATA_DIR"],
        adapters_dir=env["PEFTSERVE_ADAPTERS_DIR"],
        models=json.loads(env.get("PEFTSERVE_MODELS", "{}")),
        models_root=env.get("PEFTSERVE_MODELS_ROOT", "models"),
        workers=0,
    )
    svc = PeftServe(settings)
    svc.submit_job(JobCreate(adapter="load", base_model=base, train={"records": rows}, hyperparameters=hp))
    Worker(settings).run(burst=True)
    svc.close()
    assert svc.adapters.names() == ["load"], svc.adapters.names()
    return texts


def rss_tree(server: LocalServer) -> int:
    """RSS of the server process and its children (none with --workers 0, but count them if there are)."""
    total = server.rss()
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
    for pid in children.read_text().split() if children.exists() else []:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
    return total


async def run_load(server: LocalServer, clients: int, seconds: float, texts: list[str], sample_every: float) -> dict:
    host, port = server.url.removeprefix("http://").split(":")
    outcomes: Counter = Counter()  # "200", "HTTP 503", "ConnectionResetError", "timeout", ...
    latencies: list[float] = []
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    deadline = t0 + seconds

    async def client(c: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError as e:
                outcomes[f"connect {type(e).__name__}"] += 1
                await asyncio.sleep(0.1)
                continue
            try:
                while time.monotonic() < deadline:
                    body = {"adapter": "load", "inputs": texts[(c * 31 + i) % len(texts)]}
                    i += 1
                    start = time.perf_counter()
                    status = await asyncio.wait_for(_post(reader, writer, "/predict", body), REQUEST_TIMEOUT_S)
                    latencies.append(time.perf_counter() - start)
                    outcomes["200" if status == 200 else f"HTTP {status}"] += 1
            except asyncio.TimeoutError:
                outcomes["timeout"] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                outcomes[type(e).__name__] += 1
            finally:
                writer.close()

    async def sampler() -> None:
        while True:
            samples.append((time.monotonic() - t0, rss_tree(server)))
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(min(sample_every, max(0.0, deadline - time.monotonic())))

    await asyncio.gather(sampler(), *(client(c) for c in range(clients)))
    wall = time.monotonic() - t0
    samples.append((wall, rss_tree(server)))
    return {"outcomes": outcomes, "latencies": latencies, "samples": samples, "wall": wall}


def slope_mib_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time, MiB per minute."""
    n = len(samples)
    if n < 2:
        return float("nan")
    mt = sum(t for t, _ in samples) / n
    mr = sum(r for _, r in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    cov = sum((t - mt) * (r - mr) for t, r in samples)
    return cov / var / 2**20 * 60 if var else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--base", choices=["minilm", "tiny-bert"], default="minilm", help="tiny-bert: no packaged model")
    ap.add_argument("--sample-every", type=float, default=2.0, help="RSS sampling period, seconds")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of the same load before measuring")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="peftserve-load-"))
    env = {"PEFTSERVE_DATA_DIR": str(work / "data"), "PEFTSERVE_ADAPTERS_DIR": str(work / "adapters")}
    if args.base == "tiny-bert":
        from app.base_models.tiny import build_bert

        env["PEFTSERVE_MODELS"] = json.dumps({"tiny-bert": {"kind": "local", "location": str(build_bert(work / "tb"))}})
        env["PEFTSERVE_MODELS_ROOT"] = str(work)
    t0 = time.perf_counter()
    texts = train_adapter(work, args.base, env)
    print(f"work folder {work}; adapter trained on {args.base} in {time.perf_counter() - t0:.0f} s", flush=True)
    server = start_peftserve(env, work / "server.log")
    try:
        rss_boot = rss_tree(server)
        asyncio.run(run_load(server, args.clients, args.warmup, texts, args.sample_every))
        rss_warm = rss_tree(server)
        run = asyncio.run(run_load(server, args.clients, args.seconds, texts, args.sample_every))
        alive = server.proc.poll() is None
    finally:
        server.stop()
    outcomes, lat, samples = run["outcomes"], run["latencies"], run["samples"]
    ok = outcomes["200"]
    errors = {k: v for k, v in outcomes.items() if k != "200"}
    mib = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
    every10 = [s for s in samples if s[0] < 1] + [
        min(samples, key=lambda s, t=t: abs(s[0] - t)) for t in range(10, int(args.seconds) + 1, 10)
    ]
    second_half = [s for s in samples if s[0] >= run["wall"] / 2]
    print(f"{args.clients} clients x {args.seconds:.0f} s on {args.base} ({run['wall']:.1f} s wall)")
    print(f"requests: {sum(outcomes.values())} (200: {ok}); errors: {sum(errors.values())} {errors or ''}")
    print(
        f"throughput: {ok / run['wall']:.1f} req/s;"
        f" latency p50 {pct(lat, 50) * 1e3:.1f} ms, p99 {pct(lat, 99) * 1e3:.1f} ms"
    )
    print(f"RSS: after start-up {mib(rss_boot)} MiB, after {args.warmup:.0f} s warm-up {mib(rss_warm)} MiB")
    print(
        "RSS during the run (s: MiB): "
        + ", ".join(f"{t:.0f}: {mib(r)}" for t, r in every10)
        + f"; end {mib(samples[-1][1])}"
    )
    print(
        f"RSS slope, second half ({len(second_half)} samples): {slope_mib_per_min(second_half):+.2f} MiB/min;"
        f" whole run {slope_mib_per_min(samples):+.2f} MiB/min; server alive at the end: {alive}"
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(1 if errors or not alive else 0)


if __name__ == "__main__":
    main()
